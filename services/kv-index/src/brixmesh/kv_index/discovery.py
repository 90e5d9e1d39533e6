"""Which engines to follow: pods held from ``pods.*`` events and ``pods.list`` answers
(:mod:`brixmesh.common.pod_watch`) that publish KV events.

A pod is followed from its first event that names a ``kv_events_endpoint`` until its ``removed`` event or the
end of its lease (draining pods still serve, so they still cache); changed endpoints (a pod rescheduled
elsewhere) restart its stream.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import zmq.asyncio
from nats.js.client import JetStreamContext
from prometheus_client import CollectorRegistry

from brixmesh.common.bus import Bus
from brixmesh.common.messages import PodEvent, PodInfo
from brixmesh.common.pod_watch import PodWatch, watch_pods

from brixmesh.kv_index.pod_stream import BridgeStats, PodStream, run_forever
from brixmesh.kv_index.zmq_source import EngineEventSource, SourceConfig

log = logging.getLogger(__name__)


def source_config(info: PodInfo) -> SourceConfig:
    return SourceConfig(info.kv_events_endpoint, info.kv_replay_endpoint, info.kv_events_topic, info.endpoint)


class PodFollower:
    def __init__(
        self,
        js: JetStreamContext,
        *,
        max_payload: Callable[[], int],
        replay_timeout_s: float,
        snapshot_interval_s: float,
    ) -> None:
        self.js = js
        self.max_payload = max_payload
        self.stats = BridgeStats()
        self.replay_timeout_s = replay_timeout_s
        self.snapshot_interval_s = snapshot_interval_s
        self._context = zmq.asyncio.Context()
        self._streams: dict[str, tuple[PodStream, asyncio.Task[None]]] = {}

    @property
    def pods(self) -> list[str]:
        return list(self._streams)

    def stream(self, pod: str) -> PodStream | None:
        found = self._streams.get(pod)
        return found[0] if found is not None else None

    async def attach(self, bus: Bus, registry: CollectorRegistry | None = None) -> PodWatch:
        """Follow the pods ``bus`` announces; the caller runs the returned watch's ``expire_forever()``."""
        return await watch_pods(bus, self._on_event, registry=registry)

    async def _on_event(self, event: PodEvent) -> None:
        if event.kind == "removed":
            await self.unfollow(event.pod.pod, removed=True)
        else:
            await self.follow(event.pod)

    async def follow(self, info: PodInfo) -> None:
        if not info.kv_events_endpoint:
            return
        current = self._streams.get(info.pod)
        if current is not None:
            if source_config(current[0].info) == source_config(info) and current[0].info.model == info.model:
                return
            await self.unfollow(info.pod, removed=True)
        try:
            source = EngineEventSource(source_config(info), self._context)
        except Exception as exc:  # a bad endpoint must not stop the other pods
            log.warning("cannot open kv event sockets", extra={"pod": info.pod, "error": str(exc)})
            return
        stream = PodStream(
            info, source, self.js, self.stats, max_payload=self.max_payload,
            replay_timeout_s=self.replay_timeout_s, snapshot_interval_s=self.snapshot_interval_s,
        )  # fmt: skip
        task = asyncio.get_running_loop().create_task(run_forever(stream), name=f"kv-pod-{info.pod}")
        self._streams[info.pod] = (stream, task)
        log.info("following kv events", extra={"pod": info.pod, "endpoint": info.kv_events_endpoint})

    async def unfollow(self, pod: str, *, removed: bool) -> None:
        found = self._streams.pop(pod, None)
        if found is None:
            return
        stream, task = found
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await stream.close(removed)

    async def close(self) -> None:
        for pod in list(self._streams):
            await self.unfollow(pod, removed=False)
        self._context.destroy(linger=0)
