"""Wiring of a KV tier node: the block protocol on ``TIER_PORT`` beside the usual HTTP side (health,
``/metrics``) and heartbeat. State: only the blocks (L1 in memory, L2 in Redis when configured): a
restarted node starts empty (or with Redis's blocks behind it), which clients see as misses."""

from __future__ import annotations

import asyncio

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from brixmesh.common.service import Service

from brixmesh.kv_index.tier.eviction import Lru, S3Fifo
from brixmesh.kv_index.tier.l2 import RedisL2
from brixmesh.kv_index.tier.server import TierCore, serve
from brixmesh.kv_index.tier.settings import KvTierSettings
from brixmesh.kv_index.tier.store import SlabStore


def build_core(settings: KvTierSettings) -> TierCore:
    l2 = None
    if settings.tier_redis_url:
        l2 = RedisL2(settings.tier_redis_url, settings.tier_l2_policy, settings.tier_l2_ttl_s)
    store = SlabStore(
        settings.tier_memory_mb << 20,
        S3Fifo if settings.tier_policy == "s3fifo" else Lru,
        on_evict=l2.evicted if l2 is not None else None,
        preallocate=settings.tier_preallocate,
    )
    return TierCore(store, settings.tier_max_value_kb << 10, settings.tier_max_frame_mb << 20, l2)


class TierCollector(Collector):
    def __init__(self, core: TierCore) -> None:
        self.core = core

    def collect(self):  # type: ignore[no-untyped-def]
        core, store = self.core, self.core.store
        gauges = {
            "brixmesh_kv_tier_blocks": ("Blocks held in L1", len(store)),
            "brixmesh_kv_tier_used_bytes": ("Bytes of L1 chunks holding blocks", store.used_bytes),
            "brixmesh_kv_tier_allocated_bytes": ("Bytes of L1 slabs allocated", store.allocated_bytes),
            "brixmesh_kv_tier_budget_bytes": ("L1 byte budget", store.budget_bytes),
            "brixmesh_kv_tier_connections": ("Open client connections", core.counters.connections),
        }
        for name, (text, value) in gauges.items():
            yield GaugeMetricFamily(name, text, value=value)
        counters = {
            "brixmesh_kv_tier_hits": ("Blocks read from L1", store.counters.hits),
            "brixmesh_kv_tier_misses": ("Blocks asked for and not in L1", store.counters.misses),
            "brixmesh_kv_tier_evictions": ("Blocks evicted from L1", store.counters.evictions),
            "brixmesh_kv_tier_rejected": ("Blocks refused for want of room", store.counters.rejected),
            "brixmesh_kv_tier_requests": ("Requests received", core.counters.requests),
            "brixmesh_kv_tier_protocol_errors": ("Requests answered with an error",
                                                 core.counters.protocol_errors),
            "brixmesh_kv_tier_l2_hits": ("L1 misses found in L2", core.counters.l2_hits),
        }
        if core.l2 is not None:
            counters["brixmesh_kv_tier_l2_written"] = ("Blocks written to L2", core.l2.written)
            counters["brixmesh_kv_tier_l2_dropped"] = ("L2 writes dropped (queue full, Redis down)",
                                                       core.l2.dropped)
        for name, (text, value) in counters.items():
            yield CounterMetricFamily(name, text, value=value)


def build_service(settings: KvTierSettings) -> Service:
    service = Service("kv-tier", settings)
    core = build_core(settings)
    servers: list[asyncio.Server] = []
    service.registry.register(TierCollector(core))

    async def start(service: Service) -> None:
        servers.append(await serve(core, settings.tier_host, settings.tier_port))
        if core.l2 is not None:
            service.spawn(core.l2.write_forever(), "l2-writer")

    async def stop(_service: Service) -> None:
        for server in servers:
            server.close()
        if core.l2 is not None:
            await core.l2.close()

    service.on_start(start)
    service.on_stop(stop)
    service.add_readiness("tier", lambda: bool(servers))
    return service
