"""Sharing routing state between router replicas over NATS.

Each replica publishes its decisions and completions (``router.routing.<router>``, batched) and mirrors those
of the others into its own :class:`LoadTracker` and :class:`PrefixIndex`, so every replica counts every
replica's in-flight requests and knows every prefix sent anywhere.

Each other replica is held as a lease renewed by its batches and its ``mesh.heartbeat.router`` heartbeats
(which say how long to hold it); a replica silent past its lease (killed, cut off) has its mirrored in-flight
counts dropped at once instead of waiting out the tracker's per-request TTL.
"""

from __future__ import annotations

import time

from brixmesh.common.bus import Batcher, Bus
from brixmesh.common.leases import LeaseTable
from brixmesh.common.messages import Heartbeat, RoutingEvent, RoutingEventBatch
from brixmesh.common.subjects import MESH_HEARTBEAT, ROUTER_ROUTING

from brixmesh.router.routing.registry import RoutingEnv


SERVICE = "router"
"""The service name router replicas heartbeat under."""
SHARE_INTERVAL_S = 0.02
"""How long a routing event may wait to be shared. Each flush is a publish, a socket write and its echo back
to this replica's own subscription (~50 us of the router's CPU in ``bench/router_overhead.py``); every 2 ms
that was one flush per request at 500 req/s, every 20 ms it is one per ten. Other replicas' in-flight counts
lag by at most this, far less than an LLM request lasts."""


class RoutingSync:
    def __init__(self, env: RoutingEnv, router_id: str, *, replica_lease_s: float) -> None:
        self.env = env
        self.router_id = router_id
        self.replica_lease_s = replica_lease_s
        """How long another replica is held when its heartbeats do not say (older versions)."""
        self.replicas: LeaseTable[str] = LeaseTable()
        self.replicas_expired = 0
        self._token = ROUTER_ROUTING.format(router=router_id).rsplit(".", 1)[1]
        self._bus: Bus | None = None
        self._batcher: Batcher[RoutingEvent] = Batcher(self._flush, max_items=512, max_delay_s=SHARE_INTERVAL_S)
        self.shared = 0
        """Own routing events handed to the bus (decisions and completions)."""
        self.mirrored = 0
        """Routing events of other replicas applied here: with two replicas in sync, each one's ``mirrored``
        equals the other's ``shared``."""

    async def start(self, bus: Bus) -> None:
        self._bus = bus
        await bus.subscribe(ROUTER_ROUTING.pattern(), RoutingEventBatch, self._on_batch)
        await bus.subscribe(MESH_HEARTBEAT.format(service=SERVICE), Heartbeat, self._on_heartbeat)

    def expire_replicas(self, now: float) -> list[str]:
        """Forget the mirrored counts of replicas whose lease ended by ``now`` (monotonic); returns them.
        While our own connection is down nobody can renew, so nobody expires."""
        if self._bus is None or not self._bus.connected:
            self.replicas.renew_all(now)
            return []
        gone = self.replicas.expire(now)
        for router in gone:
            self.env.load.forget_router(router)
        self.replicas_expired += len(gone)
        return gone

    def routed(self, request_id: str, model: str, pod: str, prefix_hashes: list[int] | None) -> None:
        self.env.load.start(self.router_id, request_id, pod, time.monotonic())
        if self._bus is not None:
            self._batcher.add(RoutingEvent("routed", request_id, model, pod, prefix_hashes or []))
            self.shared += 1

    def done(self, request_id: str, model: str, pod: str) -> None:
        self.env.load.finish(self.router_id, request_id)
        if self._bus is not None:
            self._batcher.add(RoutingEvent("done", request_id, model, pod))
            self.shared += 1

    async def drain(self) -> None:
        await self._batcher.drain()

    async def _flush(self, events: list[RoutingEvent]) -> None:
        if self._bus is not None and self._bus.connected:
            await self._bus.publish(
                ROUTER_ROUTING.format(router=self.router_id),
                RoutingEventBatch(self.router_id, time.time(), events),
            )

    def _on_heartbeat(self, _subject: str, heartbeat: Heartbeat) -> None:
        if heartbeat.instance_id != self.router_id:
            lease_s = heartbeat.lease_s or self.replica_lease_s
            self.replicas.hold(heartbeat.instance_id, time.monotonic(), lease_s)

    def _on_batch(self, subject: str, batch: RoutingEventBatch) -> None:
        if subject.endswith("." + self._token) and batch.router == self.router_id:
            return
        now = time.monotonic()
        self.replicas.renew(batch.router, now, self.replica_lease_s)
        load, index = self.env.load, self.env.prefix_index
        for event in batch.events:
            if event.kind == "routed":
                load.start(batch.router, event.request_id, event.pod, now)
                if event.prefix_hashes:
                    index.insert(event.prefix_hashes, event.pod, now)
            else:
                load.finish(batch.router, event.request_id)
        self.mirrored += len(batch.events)
