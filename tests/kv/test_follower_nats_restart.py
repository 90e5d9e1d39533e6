"""A router's KV follower across a nats-server restart (JetStream on disk): batches published after the server
is back reach the index as soon as the connection is, not when the ordered consumer's heartbeat check would
notice the consumer vanished (two missed 5 s heartbeats)."""

from __future__ import annotations

import time
from pathlib import Path

from brixmesh.common.bus import Bus, encode
from brixmesh.common.messages import KvAllCleared, KvBlockStored, KvEventBatch
from brixmesh.common.servers import NatsServer
from brixmesh.common.subjects import KV_EVENTS
from brixmesh.router.kv.follower import IndexFollower
from brixmesh.router.kv.index import PrefixIndex
from tests.waiting import eventually

RECONNECT_WAIT_S = 4.0
"""Under nats-py's own recovery (2 x 5 s heartbeats), with room for a loaded machine."""


def _batch(seq: int, block_hash: int, clear: bool = False) -> KvEventBatch:
    stored = KvBlockStored([block_hash], None, [1, 2, 3, 4], 4)
    return KvEventBatch("p", "m", seq, time.time(), [KvAllCleared(), stored] if clear else [stored], 1)


async def test_follower_resumes_right_after_the_nats_server_restarts(tmp_path: Path) -> None:
    server = NatsServer(tmp_path / "nats").start()
    port = int(server.url.rsplit(":", 1)[1])
    router = await Bus.connect(server.url, name="router")
    publisher = await Bus.connect(server.url, name="kv-index")
    index = PrefixIndex()
    follower = IndexFollower(router, index)
    subject = KV_EVENTS.format(model="m", pod="p")
    try:
        await follower.start()
        await publisher.jetstream.publish(subject, encode(_batch(0, 100, clear=True)))
        await eventually(lambda: index.engine_hashes("p") == {100}, 10)
        server.stop()
        server = NatsServer(tmp_path / "nats", port=port).start()
        await eventually(lambda: router.reconnects == 1 and publisher.reconnects == 1, 10)
        # The batch goes into the stream while the router's old consumer is gone; nothing else is published
        # afterwards, so only a rebuilt consumer delivers it.
        await eventually(lambda: _published(publisher, subject, _batch(1, 200)), 10)
        await eventually(lambda: index.engine_hashes("p") == {100, 200}, RECONNECT_WAIT_S)
        assert follower.stats.consumer_resets >= 1
    finally:
        await follower.stop()
        await router.close()
        await publisher.close()
        server.stop()


async def _published(bus: Bus, subject: str, batch: KvEventBatch) -> bool:
    try:
        await bus.jetstream.publish(subject, encode(batch), timeout=1.0)
    except Exception:  # JetStream still recovering its streams from disk
        return False
    return True
