"""Rebuilding a pod's published blocks from retained snapshots and batches, and telling whether the engine's
buffered step is the one the stream ended with (pure parts of :mod:`brixmesh.kv_index.resume`)."""

from brixmesh.common.messages import KvAllCleared, KvBlockRemoved, KvBlockStored, KvEventBatch, KvSnapshot
from brixmesh.kv_index.resume import continues, newest_complete, rebuild


def stored(*hashes: int) -> KvBlockStored:
    return KvBlockStored(list(hashes), None, [0] * 4 * len(hashes), 4, None, "GPU")


def batch(seq: int, *events: object, epoch: int = 1, ts: float = 0.0) -> KvEventBatch:
    return KvEventBatch("p", "m", seq, ts, list(events), epoch)  # type: ignore[arg-type]


def snapshot(seq: int, snapshot_id: int, part: int, parts: int, *blocks: KvBlockStored) -> KvSnapshot:
    return KvSnapshot("p", "m", 1, seq, snapshot_id, part, parts, 0.0, list(blocks))


def test_from_the_start_of_the_epoch_without_a_snapshot() -> None:
    batches = [batch(0, KvAllCleared(), stored(1, 2)), batch(1, KvBlockRemoved([1]), stored(3))]
    blocks = rebuild([], batches)
    assert blocks is not None and blocks.engine_hashes() == {2, 3}


def test_from_the_newest_complete_snapshot_then_the_batches_after_it() -> None:
    parts = [
        snapshot(1, 10, 0, 1, stored(1)),
        snapshot(3, 20, 0, 2, stored(1), stored(2)), snapshot(3, 20, 1, 2, stored(3)),
        snapshot(9, 30, 0, 2, stored(99)),  # its second part never came: not usable
    ]  # fmt: skip
    assert [p.snapshot_id for p in newest_complete(parts)] == [20, 20]
    batches = [batch(3, stored(2)), batch(4, KvBlockRemoved([1]), stored(4))]  # seq 3 is in the snapshot
    blocks = rebuild(parts, batches)
    assert blocks is not None and blocks.engine_hashes() == {2, 3, 4}


def test_history_that_reaches_no_snapshot_or_epoch_start_cannot_be_rebuilt() -> None:
    assert rebuild([], [batch(5, stored(1)), batch(6, stored(2))]) is None
    # a later epoch's start makes the older, incomplete history irrelevant
    later = rebuild([], [batch(5, stored(1)), batch(0, KvAllCleared(), stored(7), epoch=2)])
    assert later is not None and later.engine_hashes() == {7}


def test_the_engine_continues_the_stream_only_with_the_same_last_step() -> None:
    last = batch(7, stored(1), stored(2), ts=10.0)
    assert continues(last, 10.5, [stored(2)])
    assert continues(last, 10.0, [])  # a step without events: its time must still fit
    assert not continues(last, 10.5, [stored(5)])  # a restarted engine's step 7 is another step
    assert not continues(last, 9.0, [stored(2)])  # older than the batch's first step
    cut = batch(7, stored(2), ts=10.0)  # the tail of a step whose events were cut into several messages
    assert continues(cut, 10.0, [stored(1), stored(2)])
