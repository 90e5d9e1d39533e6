"""NATS inputs of the pod table: ``pods.*`` lifecycle, ``metrics.pods.*`` scrapes, and the orchestrator's
``pods.list`` answer at start so that a (re)started router need not wait for new events."""

from __future__ import annotations

import logging
import time

import nats.errors

from brixmesh.common.bus import Bus
from brixmesh.common.messages import PodEvent, PodList, PodListRequest, PodMetrics
from brixmesh.common.subjects import METRICS_PODS, PODS, PODS_LIST

from brixmesh.router.discovery.pod_table import PodTable

log = logging.getLogger(__name__)


async def subscribe_pods(bus: Bus, pods: PodTable) -> None:
    await bus.subscribe(PODS.pattern(), PodEvent, lambda _subject, event: pods.apply(event))
    await bus.subscribe(
        METRICS_PODS.pattern(), PodMetrics, lambda _subject, metrics: pods.apply_metrics(metrics)
    )


async def load_pod_list(bus: Bus, pods: PodTable, timeout_s: float = 1.0) -> int:
    """Ask the orchestrator for its pods; returns how many were listed (0 when no orchestrator answers)."""
    try:
        listing = await bus.request(PODS_LIST.template, PodListRequest(), PodList, timeout_s=timeout_s)
    except (nats.errors.TimeoutError, nats.errors.NoRespondersError):
        log.info("no orchestrator answered %s; pods will come from events", PODS_LIST.template)
        return 0
    now = time.time()
    for status in listing.pods:
        kind = "ready" if status.ready else "draining" if status.phase == "draining" else "added"
        pods.apply(PodEvent(kind=kind, pod=status.pod, ts=now, reason="pods.list"))
    return len(listing.pods)
