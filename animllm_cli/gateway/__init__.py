"""The OpenAI-compatible gateway: routing, the scheduler, the engine manager, the relay."""
