"""NATS inputs of the pod table: ``metrics.pods.*`` scrapes, and ``pods.*`` lifecycle events with the
orchestrator's ``pods.list`` answer at start (:func:`brixmesh.common.pod_watch.watch_pods`), so that a
(re)started router need not wait for new events."""

from __future__ import annotations

from brixmesh.common.bus import Bus
from brixmesh.common.messages import PodMetrics
from brixmesh.common.pod_watch import watch_pods
from brixmesh.common.subjects import METRICS_PODS

from brixmesh.router.discovery.pod_table import PodTable


async def follow_pods(bus: Bus, pods: PodTable) -> int:
    """Feed ``pods`` from NATS; returns how many listed pods were applied (0 when no orchestrator answers)."""
    await bus.subscribe(
        METRICS_PODS.pattern(), PodMetrics, lambda _subject, metrics: pods.apply_metrics(metrics)
    )
    return await watch_pods(bus, pods.apply)
