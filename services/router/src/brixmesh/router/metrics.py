"""Router metrics on the service registry."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from brixmesh.common.metrics import LoopHistogram

from brixmesh.router.routing.load import LoadTracker

if TYPE_CHECKING:
    from brixmesh.router.sync import RoutingSync

FAST_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.25)
TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class RouterMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "brixmesh_router_requests",
            "Requests by model, strategy, pod and HTTP status",
            ["model", "strategy", "pod", "status"],
            registry=registry,
        )
        self.decision_seconds = LoopHistogram(
            "brixmesh_router_decision_seconds",
            "Time to pick a pod (filters, scorers, picker)",
            buckets=FAST_BUCKETS,
            registry=registry,
        )
        self.ttft_seconds = Histogram(
            "brixmesh_router_upstream_ttft_seconds",
            "Upstream time to first byte",
            ["model"],
            buckets=TTFT_BUCKETS,
            registry=registry,
        )
        self.retries = Counter(
            "brixmesh_router_retries",
            "Requests retried on another pod",
            ["model", "reason"],
            registry=registry,
        )
        self.stream_errors = Counter(
            "brixmesh_router_stream_errors",
            "Streams broken after the first byte",
            ["model"],
            registry=registry,
        )
        self.client_disconnects = Counter(
            "brixmesh_router_client_disconnects",
            "Requests cancelled because the client went away",
            registry=registry,
        )
        self.pd_fallbacks = Counter(
            "brixmesh_router_pd_fallbacks",
            "P/D requests served without a prefill pod's KV (reason: prefill_failed, prefill_rejected)",
            ["model", "reason"],
            registry=registry,
        )
        self.held = Gauge(
            "brixmesh_router_held_requests",
            "Requests waiting for a pod of their model to become ready",
            registry=registry,
        )
        self._request_children: dict[tuple[str, str, str, int], Any] = {}
        self._ttft_children: dict[str, Any] = {}

    def count(self, model: str, strategy: str, pod: str, status: int) -> None:
        """Count one request; labelled children are cached (``labels()`` is the costly part per request)."""
        key = (model, strategy, pod, status)
        child = self._request_children.get(key)
        if child is None:
            child = self._request_children[key] = self.requests.labels(model, strategy, pod, str(status))
        child.inc()

    def pd_fallback(self, model: str, reason: str) -> None:
        self.pd_fallbacks.labels(model, reason).inc()

    def ttft(self, model: str, seconds: float) -> None:
        child = self._ttft_children.get(model)
        if child is None:
            child = self._ttft_children[model] = self.ttft_seconds.labels(model)
        child.observe(seconds)


class InFlightCollector(Collector):
    """``brixmesh_router_in_flight{pod}``: requests in flight per pod from every router replica, read from the
    shared load tracker at scrape time (nothing to update per request)."""

    def __init__(self, load: LoadTracker) -> None:
        self.load = load

    def collect(self):  # type: ignore[no-untyped-def]
        family = GaugeMetricFamily(
            "brixmesh_router_in_flight", "Requests in flight per pod, all router replicas", labels=["pod"]
        )
        for pod, count in self.load.counts().items():
            family.add_metric([pod], count)
        yield family


class SyncCollector(Collector):
    """``brixmesh_router_sync_events_total{direction}``: routing events this replica ``shared`` with the
    others and ``mirrored`` from them, read at scrape time. Replicas are in sync when each one's mirrored
    count equals the sum of the others' shared counts."""

    def __init__(self, sync: RoutingSync) -> None:
        self.sync = sync

    def collect(self):  # type: ignore[no-untyped-def]
        family = CounterMetricFamily(
            "brixmesh_router_sync_events",
            "Routing events shared with and mirrored from other router replicas",
            labels=["direction"],
        )
        family.add_metric(["shared"], self.sync.shared)
        family.add_metric(["mirrored"], self.sync.mirrored)
        yield family
        yield GaugeMetricFamily(
            "brixmesh_router_replicas", "Other router replicas held (heard within their lease)",
            value=len(self.sync.replicas),
        )
        yield CounterMetricFamily(
            "brixmesh_router_replicas_expired",
            "Other router replicas dropped after their lease ended, with their mirrored in-flight counts",
            value=self.sync.replicas_expired,
        )
