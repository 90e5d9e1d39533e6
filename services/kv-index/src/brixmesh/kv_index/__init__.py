"""Bridges engines' KV-cache events onto NATS (with replay) and serves the KV offload tier."""
