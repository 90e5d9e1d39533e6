"""Where the router learns which pods exist: ``pods.*`` and ``metrics.pods.*`` over NATS, or a static file."""
