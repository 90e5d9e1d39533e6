"""PodStream without sockets or NATS: sequencing, coalescing and recovery after a lost publish."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import msgspec

from brixmesh.common.messages import KvAllCleared, KvBlockStored, KvEventBatch, PodInfo
from brixmesh.engine_sim.kv_event_types import BlockStored, encode_batch
from brixmesh.kv_index.pod_stream import BridgeStats, PodStream


class FakeJetStream:
    def __init__(self) -> None:
        self.batches: list[KvEventBatch] = []
        self.fail_next = 0
        self._decoder = msgspec.msgpack.Decoder(KvEventBatch)

    async def publish_async(self, subject: str, payload: bytes, **_: Any) -> asyncio.Future[Any]:
        if self.fail_next:
            self.fail_next -= 1
            raise ConnectionError("nats away")
        self.batches.append(self._decoder.decode(payload))
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        future.set_result(type("Ack", (), {"seq": len(self.batches)})())
        return future


class NoSource:
    async def replay(self, start: int, timeout_s: float) -> None:
        return None

    def close(self) -> None:
        return None


def frames(seq: int, first_hash: int, blocks: int = 1) -> list[bytes]:
    events = [BlockStored([first_hash + i], None, [first_hash + i] * 4, 4, None, "GPU", None) for i in range(blocks)]
    return [b"kv", seq.to_bytes(8, "big"), encode_batch(events, time.time(), 0)]


def stream(js: FakeJetStream, max_payload: int = 1 << 20) -> PodStream:
    info = PodInfo(pod="p", deployment="d", model="m", engine="vllm", endpoint="http://127.0.0.1:1")
    return PodStream(
        info, NoSource(), js, BridgeStats(), max_payload=lambda: max_payload  # type: ignore[arg-type]
    )


def stored_hashes(batch: KvEventBatch) -> list[int]:
    return [h for e in batch.events if isinstance(e, KvBlockStored) for h in e.block_hashes]


async def test_burst_is_coalesced_and_starts_with_a_clear() -> None:
    js = FakeJetStream()
    pod = stream(js)
    await pod.catch_up()
    for seq in range(3):
        await pod.handle(frames(seq, 10 * seq))
    await pod.flush()
    clear, burst = js.batches
    assert isinstance(clear.events[0], KvAllCleared)
    assert stored_hashes(burst) == [0, 10, 20] and burst.engine_seq == 2 and burst.epoch == clear.epoch


async def test_lost_publish_republishes_the_whole_state_in_a_new_epoch() -> None:
    js = FakeJetStream()
    pod = stream(js)
    await pod.catch_up()
    await pod.handle(frames(0, 100, blocks=3))
    await pod.flush()
    js.fail_next = 1
    await pod.handle(frames(1, 200))
    await pod.flush()  # lost
    await pod.handle(frames(2, 300))
    await pod.flush()
    resync, latest = js.batches[-2:]
    assert resync.epoch > js.batches[0].epoch and latest.epoch == resync.epoch
    assert isinstance(resync.events[0], KvAllCleared)
    assert sorted(stored_hashes(resync)) == [100, 101, 102, 200]
    assert stored_hashes(latest) == [300]
    assert pod.stats.publish_errors == 1 and pod.stats.resyncs == 1


async def test_batches_over_the_max_payload_are_split_resync_included() -> None:
    js = FakeJetStream()
    pod = stream(js, max_payload=1536)
    await pod.catch_up()
    await pod.handle(frames(0, 1000, blocks=40))  # ~40 x 30 bytes of events: one batch would not fit
    await pod.flush()
    split = js.batches[1:]
    assert len(split) > 1 and {batch.engine_seq for batch in split} == {0}
    assert [h for batch in split for h in stored_hashes(batch)] == list(range(1000, 1040))
    js.fail_next = 1
    await pod.handle(frames(1, 2000))
    await pod.flush()  # lost: the whole state goes out again, split as well
    await pod.handle(frames(2, 3000))
    await pod.flush()
    resync = [batch for batch in js.batches if batch.epoch > split[0].epoch][:-1]
    assert len(resync) > 1 and isinstance(resync[0].events[0], KvAllCleared)
    assert sorted(h for batch in resync for h in stored_hashes(batch)) == [*range(1000, 1040), 2000]
    assert all(len(msgspec.msgpack.encode(batch)) <= 1536 - 512 for batch in js.batches)
