"""Router metrics on the service registry."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

FAST_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.25)
TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class RouterMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "brixmesh_router_requests", "Requests by model, strategy, pod and HTTP status",
            ["model", "strategy", "pod", "status"], registry=registry,
        )
        self.decision_seconds = Histogram(
            "brixmesh_router_decision_seconds", "Time to pick a pod (filters, scorers, picker)",
            buckets=FAST_BUCKETS, registry=registry,
        )
        self.ttft_seconds = Histogram(
            "brixmesh_router_upstream_ttft_seconds", "Upstream time to first byte", ["model"],
            buckets=TTFT_BUCKETS, registry=registry,
        )
        self.retries = Counter("brixmesh_router_retries", "Requests retried on another pod", ["model", "reason"],
                               registry=registry)
        self.stream_errors = Counter("brixmesh_router_stream_errors", "Streams broken after the first byte",
                                     ["model"], registry=registry)
        self.client_disconnects = Counter("brixmesh_router_client_disconnects",
                                          "Requests cancelled because the client went away", registry=registry)
        self.held = Gauge("brixmesh_router_held_requests",
                          "Requests waiting for a pod of their model to become ready", registry=registry)
