"""Pod discovery for any service: the ``pods.*`` lifecycle events, the orchestrator's ``pods.list`` answer
(on start and after every NATS reconnect), and leases that drop pods the orchestrator stopped announcing.

Every pod a consumer hears of is held as a lease of the event's ``lease_s``, renewed by each of its events
(the orchestrator re-announces every pod it runs every announce interval). A pod not renewed in time, or
absent from a fresh listing, reaches the consumer as a ``removed`` event whose reason says why, and is counted
in ``brixmesh_pods_dropped_total{cause}``: nothing depends on one ``pods.removed`` arriving.

The listing is delivered as ordinary :class:`PodEvent` s (``reason="pods.list"``), so a consumer has one
handler for everything; repeated events (re-announces, ``reason="re-announce"``) must be no-ops to it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

import nats.errors
from prometheus_client import CollectorRegistry, Counter, Gauge

from brixmesh.common.bus import Bus
from brixmesh.common.leases import LeaseTable
from brixmesh.common.messages import PodEvent, PodEventKind, PodList, PodListRequest, PodStatus
from brixmesh.common.subjects import PODS, PODS_LIST

log = logging.getLogger(__name__)

PodEventHandler = Callable[[PodEvent], Awaitable[None] | None]

LISTED = "pods.list"
"""The ``reason`` of events made from the orchestrator's listing."""

_MAX_EXPIRY_WAIT_S = 0.5
"""The expiry loop looks at least this often (new leases, a lost connection)."""
_RESYNC_RETRIES_S = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0)
"""Waits before each listing request after a reconnect: the orchestrator reconnects too, maybe later."""


def listed_kind(status: PodStatus) -> PodEventKind:
    """The event that brings a consumer to the listed state: a pod whose process is not running (restarting,
    crash loop, exited) counts as removed, as its lifecycle events said."""
    if status.ready:
        return "ready"
    if status.phase == "draining":
        return "draining"
    if status.phase in ("restarting", "crashloop", "exited"):
        return "removed"
    return "added"


def listed_events(listing: PodList) -> list[PodEvent]:
    return [
        PodEvent(
            kind=listed_kind(status), pod=status.pod, ts=listing.ts, reason=LISTED, lease_s=listing.lease_s
        )
        for status in listing.pods
    ]


class PodWatch:
    """The pods one consumer holds. :meth:`start` subscribes and resyncs; the owner runs
    :meth:`expire_forever` as one of its background tasks."""

    def __init__(
        self,
        bus: Bus,
        on_event: PodEventHandler,
        *,
        registry: CollectorRegistry | None = None,
        list_timeout_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._bus = bus
        self._on_event = on_event
        self._list_timeout_s = list_timeout_s
        self._clock = clock
        self.leases: LeaseTable[str] = LeaseTable()
        self.held: dict[str, PodEvent] = {}
        """Pods delivered and not removed since: their latest event."""
        self.listed = 0
        """Listed events delivered by the resync of :meth:`start` (0 when no orchestrator answered)."""
        self._heard: set[str] | None = None
        """Pods heard from live events while a listing is pending (the event is newer than the listing)."""
        self._resync_lock = asyncio.Lock()
        self._dropped = Counter(
            "brixmesh_pods_dropped",
            "Pods dropped without a pods.removed event: lease expired (not re-announced in time) or not in "
            "a fresh pods.list",
            ["cause"],
            registry=registry,
        )
        self._resyncs = Counter(
            "brixmesh_pod_resyncs", "pods.list answers applied (start, NATS reconnects)", registry=registry
        )
        held = Gauge("brixmesh_pod_leases", "Pods held as leases", registry=registry)
        held.set_function(lambda: len(self.held))

    async def start(self) -> int:
        """Subscribe to ``pods.*``, resync now and after every reconnect; returns how many listed events were
        delivered (0 when no orchestrator answers)."""
        await self._bus.subscribe(PODS.pattern(), PodEvent, self._on_message)
        self._bus.on_reconnect(self._resync_after_reconnect)
        self.listed = await self.resync() or 0
        return self.listed

    async def _resync_after_reconnect(self) -> None:
        for wait_s in _RESYNC_RETRIES_S:
            await asyncio.sleep(wait_s)
            if await self.resync() is not None:
                return

    async def _on_message(self, _subject: str, event: PodEvent) -> None:
        if self._heard is not None:
            self._heard.add(event.pod.pod)
        await self._deliver(event)

    async def _deliver(self, event: PodEvent) -> None:
        name = event.pod.pod
        if event.kind == "removed":
            self.leases.release(name)
            self.held.pop(name, None)
        else:
            self.leases.hold(name, self._clock(), event.lease_s)
            self.held[name] = event
        result = self._on_event(event)
        if result is not None:
            await result

    async def resync(self) -> int | None:
        """Bring the held pods to the orchestrator's listing: listed pods are delivered (renewing their
        leases), held pods it no longer lists are dropped. Pods heard from an event while the listing was on
        its way keep what the event said. Returns the listed events delivered; None when nobody answered
        (then nothing is dropped: the leases decide)."""
        async with self._resync_lock:
            self._heard = heard = set()
            try:
                return await self._apply_listing(heard)
            finally:
                self._heard = None

    async def _apply_listing(self, heard: set[str]) -> int | None:
        try:
            listing = await self._bus.request(
                PODS_LIST.template, PodListRequest(), PodList, timeout_s=self._list_timeout_s
            )
        except (nats.errors.TimeoutError, nats.errors.NoRespondersError):
            log.info("no orchestrator answered %s; pods are learned from events", PODS_LIST.template)
            return None
        delivered = 0
        listed: set[str] = set()
        for event in listed_events(listing):
            listed.add(event.pod.pod)
            if event.pod.pod in heard:
                continue
            await self._deliver(event)
            delivered += 1
        for name, held in list(self.held.items()):
            if name not in listed and name not in heard:
                await self._drop(held, "not_listed", f"not in the orchestrator's {LISTED} answer")
        self._resyncs.inc()
        return delivered

    async def expire(self, now: float) -> int:
        """Drop the pods whose lease ended by ``now``; returns how many."""
        expired = 0
        for name in self.leases.expire(now):
            held = self.held.get(name)
            if held is None:
                continue
            expired += 1
            reason = f"lease expired: not re-announced within {held.lease_s:g} s"
            await self._drop(held, "lease_expired", reason)
        return expired

    async def expire_forever(self) -> None:
        while True:
            now = self._clock()
            if self._bus.connected:
                await self.expire(now)
            else:
                self.leases.renew_all(now)  # nobody can renew while the bus is down; resync decides after
            wait = min(_MAX_EXPIRY_WAIT_S, self.leases.next_deadline() - self._clock())
            await asyncio.sleep(max(0.01, wait))

    async def _drop(self, held: PodEvent, cause: str, reason: str) -> None:
        self._dropped.labels(cause).inc()
        log.warning("pod dropped", extra={"pod": held.pod.pod, "reason": reason})
        await self._deliver(PodEvent(kind="removed", pod=held.pod, ts=time.time(), reason=reason))


async def watch_pods(
    bus: Bus,
    on_event: PodEventHandler,
    *,
    registry: CollectorRegistry | None = None,
    list_timeout_s: float = 1.0,
) -> PodWatch:
    """A started :class:`PodWatch` (listing delivered); the caller runs its ``expire_forever()``."""
    watch = PodWatch(bus, on_event, registry=registry, list_timeout_s=list_timeout_s)
    await watch.start()
    return watch
