"""Clients of a running gateway (and of any OpenAI-compatible server)."""
