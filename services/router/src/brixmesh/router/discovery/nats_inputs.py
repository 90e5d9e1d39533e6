"""NATS inputs of the pod table: ``metrics.pods.*`` scrapes, and pods held as leases from ``pods.*``
lifecycle events and the orchestrator's ``pods.list`` answers (:mod:`brixmesh.common.pod_watch`), so that a
(re)started router need not wait for new events and a pod nobody announces any more is dropped; and the
adapter-manager's placements (``adapters.placements``, asked for at start with ``adapters.list``)."""

from __future__ import annotations

import nats.errors
from prometheus_client import CollectorRegistry

from brixmesh.common.bus import Bus
from brixmesh.common.messages import AdapterPlacements, AdapterPlacementsRequest, PodMetrics
from brixmesh.common.pod_watch import PodWatch, watch_pods
from brixmesh.common.subjects import ADAPTERS_LIST, ADAPTERS_PLACEMENTS, METRICS_PODS

from brixmesh.router.discovery.pod_table import PodTable


async def follow_pods(bus: Bus, pods: PodTable, registry: CollectorRegistry | None = None) -> PodWatch:
    """Feed ``pods`` from NATS (static pods are not watched: they never expire); the caller runs the
    returned watch's ``expire_forever()``."""
    await bus.subscribe(
        METRICS_PODS.pattern(), PodMetrics, lambda _subject, metrics: pods.apply_metrics(metrics)
    )
    return await watch_pods(bus, pods.apply, registry=registry)


async def follow_adapters(bus: Bus, pods: PodTable, sender: str) -> None:
    """Feed ``pods`` the adapter placements: every published table, and the current one now if an
    adapter-manager answers (else the next periodic publication brings it)."""
    await bus.subscribe(
        ADAPTERS_PLACEMENTS.template, AdapterPlacements, lambda _subject, table: pods.apply_placements(table)
    )
    try:
        table = await bus.request(
            ADAPTERS_LIST.template, AdapterPlacementsRequest(sender=sender), AdapterPlacements
        )
    except (nats.errors.TimeoutError, nats.errors.NoRespondersError):
        return
    pods.apply_placements(table)
