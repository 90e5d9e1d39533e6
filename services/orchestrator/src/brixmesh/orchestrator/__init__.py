"""Runs engine pods (local processes, Kubernetes, Ray) and applies scale decisions."""
