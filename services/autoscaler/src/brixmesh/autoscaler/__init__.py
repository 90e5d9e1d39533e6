"""Scrapes engine metrics, publishes them normalized, decides replica counts."""
