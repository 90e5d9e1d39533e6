"""The OpenAI-compatible gateway: discovers pods, keeps a global prefix index, routes each request."""
