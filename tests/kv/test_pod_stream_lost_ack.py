"""kv-index's pod stream against a real nats-server that dies holding a batch: the batch's JetStream ack never
comes. That batch must count as lost (the pod's whole state re-published, so a router's index equals the
engine's again) and the pod's snapshots must go on."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from pathlib import Path

from brixmesh.common.bus import Bus
from brixmesh.common.kv_streams import events_stream, snapshots_stream
from brixmesh.common.messages import PodInfo
from brixmesh.common.servers import NatsServer
from brixmesh.engine_sim.kv_event_types import BlockStored, encode_batch
from brixmesh.kv_index.pod_stream import BridgeStats, PodStream
from brixmesh.router.kv.follower import IndexFollower
from brixmesh.router.kv.index import PrefixIndex
from tests.waiting import eventually


class QueuedSource:
    """An engine's event socket fed by the test."""

    def __init__(self) -> None:
        self.frames: asyncio.Queue[list[bytes]] = asyncio.Queue()

    async def receive(self, timeout_s: float) -> list[bytes] | None:
        try:
            return await asyncio.wait_for(self.frames.get(), timeout_s)
        except asyncio.TimeoutError:
            return None

    def receive_ready(self) -> list[bytes] | None:
        return None if self.frames.empty() else self.frames.get_nowait()

    async def replay(self, start: int, timeout_s: float) -> None:
        return None

    def close(self) -> None:
        return None


def _frames(seq: int, block_hash: int) -> list[bytes]:
    event = BlockStored([block_hash], None, [1, 2, 3, 4], 4, None, "GPU", None)
    return [b"kv", seq.to_bytes(8, "big"), encode_batch([event], time.time(), 0)]


async def test_a_batch_whose_ack_never_comes_is_resynced_and_snapshots_go_on(tmp_path: Path) -> None:
    server = NatsServer(tmp_path / "nats").start()
    port = int(server.url.rsplit(":", 1)[1])
    bridge = await Bus.connect(server.url, name="kv-index")
    router = await Bus.connect(server.url, name="router")
    for config in (events_stream(), snapshots_stream()):
        await bridge.ensure_stream(config)
    source = QueuedSource()
    info = PodInfo(pod="p", deployment="d", model="m", engine="vllm", endpoint="http://127.0.0.1:1")
    pod = PodStream(info, source, bridge.jetstream, BridgeStats(),  # type: ignore[arg-type]
                    max_payload=lambda: bridge.client.max_payload, snapshot_interval_s=1.0)  # fmt: skip
    index = PrefixIndex()
    follower = IndexFollower(router, index)
    running = asyncio.get_running_loop().create_task(pod.run())
    try:
        await follower.start()
        source.frames.put_nowait(_frames(0, 100))
        await eventually(lambda: index.engine_hashes("p") == {100} and pod.stats.snapshots >= 1, 15)

        snapshots = pod.stats.snapshots
        os.kill(server.process.pid, signal.SIGSTOP)  # type: ignore[union-attr]
        source.frames.put_nowait(_frames(1, 200))
        await eventually(lambda: pod.stats.events == 2, 5)
        # The batch has left the client's buffer for the frozen server's socket: no reconnect re-sends it.
        await eventually(lambda: len(pod._in_flight) == 1 and bridge.client.pending_data_size == 0, 5)
        server.process.kill()  # type: ignore[union-attr]
        server.process.wait()  # type: ignore[union-attr]
        server = NatsServer(tmp_path / "nats", port=port).start()

        await eventually(lambda: index.engine_hashes("p") == {100, 200}, 20,
                         describe=lambda: f"index {index.engine_hashes('p')}, {pod.stats}")  # fmt: skip
        assert pod.stats.publish_errors >= 1 and pod.stats.resyncs >= 1
        await eventually(lambda: pod.stats.snapshots > snapshots, 10, describe=lambda: f"{pod.stats}")
    finally:
        running.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await running
        await follower.stop()
        await router.close()
        await bridge.close()
        server.stop()
