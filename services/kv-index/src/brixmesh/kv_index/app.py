"""Wiring of the kv-index service: pods.* -> one ZMQ stream per engine -> JetStream ``KV_EVENTS``.

Inputs: ``pods.*`` / ``pods.list`` (which engines), each engine's ZMQ PUB and replay sockets. State: per pod,
sequence tracking and its blocks (for snapshots). Outputs: ``kv.events.<model>.<pod>`` and
``kv.snapshots.<model>.<pod>`` in JetStream; ``/metrics``.
"""

from __future__ import annotations

from brixmesh.common.kv_streams import events_stream, snapshots_stream
from brixmesh.common.service import Service

from brixmesh.kv_index import metrics
from brixmesh.kv_index.discovery import PodFollower
from brixmesh.common.runtime import tune_gc
from brixmesh.kv_index.settings import KvIndexSettings


def build_service(settings: KvIndexSettings) -> Service:
    service = Service("kv-index", settings)
    holder: list[PodFollower] = []

    async def start(service: Service) -> None:
        tune_gc()
        await service.bus.ensure_stream(events_stream(settings.kv_events_max_age_s))
        await service.bus.ensure_stream(snapshots_stream(2 * settings.kv_events_max_age_s))
        follower = PodFollower(
            service.bus.jetstream,
            max_payload=lambda: service.bus.client.max_payload,
            replay_timeout_s=settings.kv_replay_timeout_s,
            snapshot_interval_s=settings.kv_snapshot_interval_s,
        )
        metrics.export(service.registry, follower)
        watch = await follower.attach(service.bus, service.registry)
        service.spawn(watch.expire_forever(), "pod-leases")
        holder.append(follower)

    async def stop(_service: Service) -> None:
        for follower in holder:
            await follower.close()

    service.on_start(start)
    service.on_stop(stop)
    service.add_readiness("pods", lambda: bool(holder))
    service.add_known_pods_route(lambda: [pod for follower in holder for pod in follower.pods])
    return service
