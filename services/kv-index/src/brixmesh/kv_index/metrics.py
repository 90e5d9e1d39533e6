"""Prometheus series of the KV bridge, read from its counters at scrape time."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Gauge
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from brixmesh.kv_index.discovery import PodFollower

_COUNTERS = {
    "messages": "ZMQ messages received from engines",
    "events": "KV events decoded",
    "batches_published": "Normalized batches published to JetStream",
    "bad_payloads": "Malformed or truncated engine messages skipped",
    "gaps": "Sequence gaps detected",
    "replayed": "Batches recovered by replay",
    "unrecovered": "Batches lost in gaps that replay could not return",
    "stale": "Late duplicate messages dropped",
    "restarts": "Engine restarts detected (sequence reset)",
    "snapshots": "Per-pod snapshots published",
    "publish_errors": "JetStream publishes or purges that failed",
    "resyncs": "Pod states re-published in full after a lost batch",
    "resumed": "Pod streams continued in their published epoch after a kv-index restart",
}


class _BridgeCounters(Collector):
    """Counters kept as plain ints on the hot path, read at scrape time (``..._total``)."""

    def __init__(self, follower: PodFollower) -> None:
        self._stats = follower.stats

    def collect(self) -> Iterator[CounterMetricFamily]:
        for field, documentation in _COUNTERS.items():
            yield CounterMetricFamily(
                f"brixmesh_kv_bridge_{field}", documentation, value=float(getattr(self._stats, field))
            )


def export(registry: CollectorRegistry, follower: PodFollower) -> None:
    registry.register(_BridgeCounters(follower))
    Gauge("brixmesh_kv_bridge_pods", "Engines followed", registry=registry).set_function(
        lambda: float(len(follower.pods))
    )
