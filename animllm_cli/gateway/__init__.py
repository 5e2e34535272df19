"""The OpenAI-compatible gateway: routing, the scheduler, the engine pool, the relay."""
