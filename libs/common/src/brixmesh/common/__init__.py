"""Shared library of every brixmesh service: settings, the NATS bus, subjects and schemas, the service shell."""

__version__ = "0.1.0"
