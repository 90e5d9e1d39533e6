"""A KV tier node (the server's protocol and store) on its own event loop thread, for tests whose own code
blocks (subprocess engines, sync HTTP)."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator

from brixmesh.common.ports import free_port
from brixmesh.kv_index.tier.eviction import S3Fifo
from brixmesh.kv_index.tier.server import TierCore, serve
from brixmesh.kv_index.tier.store import SlabStore


@contextlib.contextmanager
def tier_node(budget_bytes: int = 64 << 20, max_value_bytes: int = 4 << 20) -> Iterator[tuple[TierCore, str]]:
    core = TierCore(SlabStore(budget_bytes, S3Fifo, slab_bytes=1 << 20), max_value_bytes, 256 << 20)
    port = free_port()
    loop = asyncio.new_event_loop()
    started = threading.Event()
    holder: list[asyncio.Server] = []

    async def start() -> None:
        holder.append(await serve(core, "127.0.0.1", port))
        started.set()

    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(start(), loop).result(5.0)
    try:
        yield core, f"127.0.0.1:{port}"
    finally:
        async def stop() -> None:
            holder[0].close()

        asyncio.run_coroutine_threadsafe(stop(), loop).result(5.0)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5.0)
        loop.close()
