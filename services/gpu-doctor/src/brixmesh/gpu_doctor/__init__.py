"""Detects and simulates accelerator faults; unhealthy pods get drained."""
