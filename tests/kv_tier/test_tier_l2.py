"""The tier's L2 against a real redis-server: blocks evicted from L1 (or every block, write-through) are
found again in Redis; Redis down is a miss, never an error."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

from brixmesh.common.kv_tier import KvTierClient, TierNamespace
from brixmesh.common.ports import free_port
from brixmesh.common.servers import RedisServer
from brixmesh.kv_index.tier.eviction import S3Fifo
from brixmesh.kv_index.tier.l2 import L2Policy, RedisL2
from brixmesh.kv_index.tier.server import TierCore, serve
from brixmesh.kv_index.tier.store import SlabStore
from tests.waiting import eventually

BLOCK = 64 << 10


def block(key: int) -> bytes:
    return key.to_bytes(4, "little") * (BLOCK // 4)


@contextlib.asynccontextmanager
async def node_with_l2(url: str, policy: L2Policy) -> AsyncIterator[tuple[TierCore, KvTierClient]]:
    """A node with a 1 MiB L1 (sixteen 64 KiB blocks) and Redis behind it."""
    l2 = RedisL2(url, policy, ttl_s=60)
    store = SlabStore(1 << 20, S3Fifo, slab_bytes=1 << 20, on_evict=l2.evicted)
    core = TierCore(store, 1 << 20, 64 << 20, l2)
    port = free_port()
    server = await serve(core, "127.0.0.1", port)
    writer = asyncio.get_running_loop().create_task(l2.write_forever())
    client = KvTierClient([f"127.0.0.1:{port}"])
    try:
        yield core, client
    finally:
        await client.close()
        writer.cancel()
        server.close()
        await l2.close()


@pytest.mark.parametrize("policy", ["evict", "through"])
async def test_blocks_beyond_l1_come_back_from_redis(redis_server: RedisServer, policy: L2Policy) -> None:
    namespace = TierNamespace(f"l2-{policy}", "bfloat16", 16)
    async with node_with_l2(redis_server.url, policy) as (core, client):
        keys = list(range(48))  # 3 MiB into a 1 MiB L1
        for start in range(0, 48, 8):
            await client.put(namespace, keys[start : start + 8], [block(k) for k in keys[start : start + 8]])
        assert len(core.store) == 16 and core.store.counters.evictions == 32
        l2 = core.l2
        assert l2 is not None
        await eventually(lambda: l2.written >= (32 if policy == "evict" else 48), timeout_s=10.0)
        found = await client.get(namespace, keys[:8])  # evicted from L1 long ago
        assert [bytes(v) for v in found if v is not None] == [block(k) for k in keys[:8]]
        assert core.counters.l2_hits == 8
        assert await client.exists(namespace, keys[:8]) == [True] * 8  # copied back into L1


async def test_redis_down_is_a_miss() -> None:
    namespace = TierNamespace("l2-down", "bfloat16", 16)
    dead = f"redis://127.0.0.1:{free_port()}/0"
    async with node_with_l2(dead, "evict") as (core, client):
        for start in range(0, 24, 8):
            keys = list(range(start, start + 8))
            await client.put(namespace, keys, [block(k) for k in keys])
        found = await client.get(namespace, list(range(8)))
        assert found == [None] * 8
        assert core.l2 is not None and core.l2.errors >= 1
