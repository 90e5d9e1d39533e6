"""The HTTP edge: raw ASGI for the OpenAI routes (the hot path), OpenAI-shaped errors, request parsing."""
