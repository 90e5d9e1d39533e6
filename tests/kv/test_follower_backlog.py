"""A backlog of KV event batches (a rebuild, a burst at 50k events/s) never holds the router's event loop:
the follower applies it in time slices and returns to the loop between them, so proxying interleaves."""

from __future__ import annotations

import asyncio
import time

from brixmesh.common.bus import Bus
from brixmesh.common.kv_streams import events_stream
from brixmesh.common.messages import KvBlockStored, KvEventBatch
from brixmesh.common.servers import NatsServer
from brixmesh.common.subjects import KV_EVENTS
from brixmesh.router.kv.follower import IndexFollower
from brixmesh.router.kv.index import PrefixIndex
from tests.waiting import eventually

BATCHES = 400


async def test_a_backlog_is_applied_a_slice_per_loop_turn(fresh_nats_server: NatsServer) -> None:
    publisher = await Bus.connect(fresh_nats_server.url, name="kv-index")
    router = await Bus.connect(fresh_nats_server.url, name="router")
    follower = IndexFollower(router, PrefixIndex(), apply_slice_s=0.0)  # a slice: one batch
    subject = KV_EVENTS.format(model="m", pod="p")
    try:
        await publisher.ensure_stream(events_stream())
        for seq in range(BATCHES):
            stored = KvBlockStored([seq], None, [seq, 1, 2, 3], 4)
            await publisher.publish(subject, KvEventBatch("p", "m", seq, time.time(), [stored], 1))
        await publisher.sync()
        await eventually(lambda: _stored(publisher), 10)
        # Between two turns of another task on the loop, at most a slice (here a batch) or two may have been
        # applied (applied in nats-py's callback, all that one socket read brought went in one go).
        applied_per_turn = []

        async def other_task() -> None:
            last = 0
            while follower.stats.batches_applied < BATCHES:
                await asyncio.sleep(0)
                applied_per_turn.append(follower.stats.batches_applied - last)
                last = follower.stats.batches_applied

        watcher = asyncio.create_task(other_task())
        await follower.start()
        await asyncio.wait_for(watcher, 30)
        assert follower.index.engine_hashes("p") == set(range(BATCHES))
        assert max(applied_per_turn) <= 2
    finally:
        await follower.stop()
        await router.close()
        await publisher.close()


async def _stored(bus: Bus) -> bool:
    info = await bus.jetstream.stream_info(events_stream().name)
    return info.state.messages == BATCHES
