"""Outputs on NATS: every pod lifecycle change on ``pods.{kind}.{deployment}.{pod}``, a periodic re-announce
of every pod consumers know (added, ready or draining), and answers to ``pods.list`` requests.

Consumers hold each pod as a lease of ``lease_s`` (carried by every event and listing, so they need no
setting of their own) renewed by these re-announces: a pod the orchestrator stops announcing (it died, or a
``removed`` event was lost) expires everywhere (:mod:`brixmesh.common.pod_watch`)."""

from __future__ import annotations

import asyncio
import time

import msgspec

from brixmesh.common.bus import Bus
from brixmesh.common.messages import PodEvent, PodList, PodListRequest
from brixmesh.common.subjects import PODS
from prometheus_client import CollectorRegistry, Counter

from brixmesh.orchestrator.backend import PodBackend


class Announcer:
    def __init__(
        self,
        bus: Bus,
        backend: PodBackend,
        registry: CollectorRegistry,
        *,
        interval_s: float,
        instance_id: str,
        lease_s: float,
    ) -> None:
        self._bus = bus
        self._backend = backend
        self._interval_s = interval_s
        self._lease_s = lease_s
        self._instance_id = instance_id
        self._events = Counter(
            "brixmesh_orchestrator_pod_events", "Pod lifecycle events published", ["kind"], registry=registry
        )

    async def publish(self, event: PodEvent) -> None:
        if event.kind != "removed" and event.lease_s != self._lease_s:
            event = msgspec.structs.replace(event, lease_s=self._lease_s)
        subject = PODS.format(kind=event.kind, deployment=event.pod.deployment, pod=event.pod.pod)
        await self._bus.publish(subject, event)
        self._events.labels(event.kind).inc()

    async def publish_changes(self) -> None:
        async for event in self._backend.changes():
            await self.publish(event)

    async def flush(self) -> None:
        """Publish changes not yet taken (the ``removed`` events of a shutdown) and push them out."""
        for event in self._backend.pending_changes():
            await self.publish(event)
        await self._bus.client.flush(timeout=2)

    async def reannounce_forever(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            await self.reannounce()

    async def reannounce(self) -> None:
        """Renew every pod consumers hold, in the kind they were last told (``Pod.announced`` is set when a
        change is queued, so a re-announce never repeats a state older than a change still in the queue)."""
        now = time.time()
        for pod in self._backend.list_pods():
            if pod.announced is not None:
                await self.publish(PodEvent(kind=pod.announced, pod=pod.info, ts=now, reason="re-announce"))

    def pod_list(self, _subject: str, request: PodListRequest) -> PodList:
        pods = [
            pod.status()
            for pod in self._backend.list_pods(request.deployment or None)
            if not request.model or pod.info.model == request.model
        ]
        return PodList(pods=pods, ts=time.time(), orchestrator=self._instance_id, lease_s=self._lease_s)
