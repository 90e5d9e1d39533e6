"""Pod discovery for any service: the ``pods.*`` lifecycle events, plus the orchestrator's ``pods.list``
answer at start so that a (re)started service need not wait for the next event or re-announce.

The listing is delivered as ordinary :class:`PodEvent` s (``reason="pods.list"``), so a consumer has one
handler for both. Re-announces (``reason="re-announce"``) are ordinary events too: consumers must treat a
repeated event as a no-op.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import nats.errors

from brixmesh.common.bus import Bus
from brixmesh.common.messages import PodEvent, PodEventKind, PodList, PodListRequest, PodStatus
from brixmesh.common.subjects import PODS, PODS_LIST

log = logging.getLogger(__name__)

PodEventHandler = Callable[[PodEvent], Awaitable[None] | None]

LISTED = "pods.list"
"""The ``reason`` of events made from the orchestrator's listing."""


def listed_kind(status: PodStatus) -> PodEventKind:
    """The event that brings a consumer to the listed state (an exited pod counts as removed)."""
    if status.ready:
        return "ready"
    if status.phase == "draining":
        return "draining"
    if status.phase == "exited":
        return "removed"
    return "added"


def listed_events(listing: PodList) -> list[PodEvent]:
    return [
        PodEvent(kind=listed_kind(status), pod=status.pod, ts=listing.ts, reason=LISTED)
        for status in listing.pods
    ]


async def watch_pods(bus: Bus, on_event: PodEventHandler, *, list_timeout_s: float = 1.0) -> int:
    """Subscribe ``on_event`` to ``pods.*``, then ask ``pods.list`` and deliver the listing as events.

    Pods heard from a ``pods.*`` event before their listed entry is delivered are skipped in the listing
    (the event is newer). Returns how many listed events were delivered (0 when no orchestrator answers).
    """
    heard: set[str] = set()
    listing_pending = True

    async def on_message(_subject: str, event: PodEvent) -> None:
        if listing_pending:
            heard.add(event.pod.pod)
        result = on_event(event)
        if result is not None:
            await result

    await bus.subscribe(PODS.pattern(), PodEvent, on_message)
    try:
        listing = await bus.request(PODS_LIST.template, PodListRequest(), PodList, timeout_s=list_timeout_s)
    except (nats.errors.TimeoutError, nats.errors.NoRespondersError):
        log.info("no orchestrator answered %s; pods will be learned from pods.* events", PODS_LIST.template)
        listing = PodList(pods=[], ts=0.0)
    delivered = 0
    for event in listed_events(listing):
        if event.pod.pod in heard:
            continue
        result = on_event(event)
        if result is not None:
            await result
        delivered += 1
    listing_pending = False
    heard.clear()
    return delivered
