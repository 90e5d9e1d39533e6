"""What a pod's stream last published, read back from JetStream by a restarted kv-index, so that it can go on
in the same epoch (routers keep their entries) instead of starting a new one that clears the pod everywhere.

The pod's blocks are rebuilt as a router rebuilds them: its newest complete snapshot, then its retained
batches after it. Whether the engine can continue from there is the engine's to say (its replay buffer must
still hold the last published step): see :meth:`brixmesh.kv_index.pod_stream.PodStream.resume`.
"""

from __future__ import annotations

from dataclasses import dataclass

import msgspec
from nats.js.api import DeliverPolicy
from nats.js.client import JetStreamContext
from nats.js.errors import NotFoundError

from brixmesh.common.messages import PAYLOAD_ERRORS, KvAllCleared, KvEvent, KvEventBatch, KvSnapshot
from brixmesh.common.subjects import KV_EVENTS_STREAM, KV_SNAPSHOTS_STREAM

from brixmesh.kv_index.pod_blocks import PodBlocks

_READ_TIMEOUT_S = 5.0
_batch_decoder = msgspec.msgpack.Decoder(KvEventBatch)
_snapshot_decoder = msgspec.msgpack.Decoder(KvSnapshot)


@dataclass(slots=True)
class Published:
    """The last batch of a pod's stream, and the pod's blocks once every batch up to it is applied."""

    last: KvEventBatch
    stream_seq: int
    """Its sequence in ``KV_EVENTS``."""
    blocks: PodBlocks


def continues(last: KvEventBatch, step_ts: float, step_events: list[KvEvent]) -> bool:
    """Whether the engine's step ``last.engine_seq`` (as its replay buffer returns it now) is the one that
    batch ended with: a restarted engine numbers its steps from 0 again, with other events. A batch ends
    with its last step's events (the batch may have been cut into several messages, so only the common tail
    is compared) and its ``ts`` is the engine time of its first step, not later than the last one's."""
    shared = min(len(last.events), len(step_events))
    return step_ts >= last.ts and (shared == 0 or last.events[-shared:] == step_events[-shared:])


def rebuild(snapshot_parts: list[KvSnapshot], batches: list[KvEventBatch]) -> PodBlocks | None:
    """The blocks after ``batches`` (one pod's retained batches, in stream order), starting from the newest
    complete snapshot among ``snapshot_parts``; None when the history does not reach back to a snapshot or
    to the start of an epoch (a fresh epoch is then the only way to be right)."""
    snapshot = newest_complete(snapshot_parts)
    blocks = PodBlocks()
    cut: tuple[int, int] | None = None
    if snapshot:
        blocks.apply([KvAllCleared()])
        for part in snapshot:
            blocks.apply(part.blocks)
        cut = (snapshot[0].epoch, snapshot[0].engine_seq)
    started = bool(snapshot)
    for batch in batches:
        if cut is not None and (batch.epoch, batch.engine_seq) <= cut:
            continue
        if not started:
            if not (batch.events and isinstance(batch.events[0], KvAllCleared)):
                continue  # before the oldest start of an epoch we hold: that epoch's start is what counts
            started = True
        blocks.apply(batch.events)
    return blocks if started else None


def newest_complete(parts: list[KvSnapshot]) -> list[KvSnapshot]:
    """The parts of the newest snapshot whose parts are all present, in order (empty if none is)."""
    by_id: dict[int, dict[int, KvSnapshot]] = {}
    for part in parts:
        by_id.setdefault(part.snapshot_id, {})[part.part] = part
    complete = [
        [found[i] for i in range(len(found))]
        for found in by_id.values()
        if len(found) == next(iter(found.values())).parts and all(i in found for i in range(len(found)))
    ]
    if not complete:
        return []
    return max(complete, key=lambda snap: (snap[0].epoch, snap[0].engine_seq, snap[0].snapshot_id))


async def published(js: JetStreamContext, events_subject: str, snapshots_subject: str) -> Published | None:
    """The pod's published state, or None when it has none or its history cannot rebuild it."""
    events = await _retained(js, KV_EVENTS_STREAM, events_subject)
    if not events:
        return None
    snapshots = await _retained(js, KV_SNAPSHOTS_STREAM, snapshots_subject)
    try:
        batches = [_batch_decoder.decode(data) for _seq, data in events]
        parts = [_snapshot_decoder.decode(data) for _seq, data in snapshots]
    except PAYLOAD_ERRORS:
        return None
    blocks = rebuild(parts, batches)
    return Published(batches[-1], events[-1][0], blocks) if blocks is not None else None


async def _retained(js: JetStreamContext, stream: str, subject: str) -> list[tuple[int, bytes]]:
    """(stream sequence, payload) of every message ``subject`` holds now, oldest first."""
    try:
        last_seq = (await js.get_last_msg(stream, subject)).seq or 0
    except NotFoundError:
        return []
    found: list[tuple[int, bytes]] = []
    sub = await js.subscribe(subject, stream=stream, ordered_consumer=True, deliver_policy=DeliverPolicy.ALL)
    try:
        while not found or found[-1][0] < last_seq:
            msg = await sub.next_msg(timeout=_READ_TIMEOUT_S)
            if msg.metadata.sequence.stream > last_seq:
                break
            found.append((msg.metadata.sequence.stream, msg.data))
    finally:
        await sub.unsubscribe()
    return found
