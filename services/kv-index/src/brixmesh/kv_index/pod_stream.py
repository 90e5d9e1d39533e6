"""One engine pod: ZMQ events in, ordered and complete (replay, restarts), normalized batches out to JetStream.

Flow per message: sequence check (:mod:`.sequencer`) -> replay what is missing -> decode (:mod:`.decode`;
bad payloads are counted and skipped) -> the pod's block state (:mod:`.pod_blocks`, for snapshots) -> one
``KvEventBatch`` per burst on ``kv.events.<model>.<pod>``, split (:mod:`.split`) when its encoding exceeds
the server's ``max_payload`` (a long prefill is one large event; a failed publish would force a resync).
A stream (re)start gets a new ``epoch`` and begins
with ``KvAllCleared``: after an engine restart, or when this bridge starts following a pod, the pod's old
entries must go; a new follower then replays the engine's buffer from seq 0. A restarted bridge first tries to
resume instead (:mod:`.resume`): when the pod's stream in JetStream ends with a step the engine still buffers,
it goes on in that epoch from the next step, and routers keep their entries. Every ``snapshot_interval_s`` the pod's blocks are published to ``kv.snapshots.<model>.<pod>``,
superseded snapshots are purged, and events older than the previous snapshot are purged from ``KV_EVENTS``.

A batch is lost when its publish fails or its JetStream ack does not come within ``_ACK_TIMEOUT_S`` (a server
that dies holding it never answers, and nats-py times nothing out): the pod's whole state then goes out again
in a new epoch (a resync) as soon as the loop notices, and the snapshot waits for that resync instead of
being skipped for ever.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import msgspec
from nats.js.api import PubAck
from nats.js.client import JetStreamContext

from brixmesh.common.messages import KvAllCleared, KvEvent, KvEventBatch, KvSnapshot, PodInfo
from brixmesh.common.subjects import KV_EVENTS, KV_EVENTS_STREAM, KV_SNAPSHOTS, KV_SNAPSHOTS_STREAM

from brixmesh.kv_index.decode import DecodedBatch, PayloadError, decode_payload
from brixmesh.kv_index.pod_blocks import PodBlocks
from brixmesh.kv_index.resume import continues, published
from brixmesh.kv_index.sequencer import SeqTracker
from brixmesh.kv_index.split import EventTooLarge, split_events
from brixmesh.kv_index.zmq_source import EngineEventSource

log = logging.getLogger(__name__)

_BURST_MESSAGES = 256
_BURST_EVENTS = 4096
_SNAPSHOT_PART_BYTES = 512 * 1024
_HEADERS_ROOM = 512
"""Kept free under ``max_payload`` for the message's headers (``Nats-Msg-Id``)."""
_STALL_S = 5.0
_ACK_TIMEOUT_S = 3.0
"""Acks take milliseconds; one this late is lost. Keeps a resync well inside the 5 s convergence target."""
_ACK_CHECK_S = 0.5
"""How often the loop looks for lost batches while acks are outstanding."""
_encoder = msgspec.msgpack.Encoder()


@dataclass(slots=True)
class BridgeStats:
    """Counters shared by every pod stream of one bridge (exported as metrics)."""

    messages: int = 0
    events: int = 0
    batches_published: int = 0
    bad_payloads: int = 0
    gaps: int = 0
    replayed: int = 0
    unrecovered: int = 0
    """Batches a gap lost that replay could not return."""
    stale: int = 0
    restarts: int = 0
    snapshots: int = 0
    publish_errors: int = 0
    resyncs: int = 0
    """Times a pod's whole state was re-published after a lost batch."""
    resumed: int = 0
    """Pod streams continued in their published epoch when this bridge started (no clear for routers)."""


class PodStream:
    def __init__(
        self,
        info: PodInfo,
        source: EngineEventSource,
        js: JetStreamContext,
        stats: BridgeStats,
        *,
        max_payload: Callable[[], int],
        replay_timeout_s: float = 2.0,
        snapshot_interval_s: float = 30.0,
    ) -> None:
        self.info = info
        self.source = source
        self.js = js
        self.stats = stats
        self.max_payload = max_payload
        """The server's largest message (bytes), as the connection last learnt it: servers may differ."""
        self.replay_timeout_s = replay_timeout_s
        self.snapshot_interval_s = snapshot_interval_s
        self.events_subject = KV_EVENTS.format(model=info.model, pod=info.pod)
        self.snapshots_subject = KV_SNAPSHOTS.format(model=info.model, pod=info.pod)
        self.blocks = PodBlocks()
        self.tracker = SeqTracker()
        self.epoch = 0
        self._clear_pending = True
        self._pending: list[KvEvent] = []
        self._pending_ts = 0.0
        self._pending_seq = -1
        self._last_published_seq = -1
        self._last_stream_seq = 0
        self._snapshot_cut_stream_seq = 0
        """KV_EVENTS sequence of the last batch the newest snapshot covers."""
        self._dirty = False
        self._next_snapshot = time.monotonic() + snapshot_interval_s
        self._in_flight: set[asyncio.Future[PubAck]] = set()
        self._resync = False
        self._may_resume = True
        self.new_epoch()

    def new_epoch(self) -> None:
        """Start the pod's stream afresh: the next batch clears its entries everywhere."""
        self.epoch = max(time.time_ns(), self.epoch + 1)
        self._clear_pending = True
        self.blocks.apply([KvAllCleared()])
        self._dirty = True

    # --- the loop ---------------------------------------------------------------------------------------

    async def run(self) -> None:
        if not await self.resume():
            await self.catch_up()
        while True:
            timeout = max(0.0, self._next_snapshot - time.monotonic())
            if self._in_flight or self._resync:
                timeout = min(timeout, _ACK_CHECK_S)
            frames = await self.source.receive(timeout)
            if frames is not None:
                await self.handle(frames)
                burst = 1
                while burst < _BURST_MESSAGES and len(self._pending) < _BURST_EVENTS:
                    more = self.source.receive_ready()
                    if more is None:
                        break
                    await self.handle(more)
                    burst += 1
                await self.flush()
            elif self._resync:
                await self.flush()
            if time.monotonic() >= self._next_snapshot:
                await self.snapshot()

    async def resume(self) -> bool:
        """Only at the stream's first start: go on from the last batch JetStream holds for the pod, in its
        epoch, if the engine's replay buffer still holds that batch's last step (the same engine: not
        restarted since). Returns False when the stream must start afresh (:meth:`catch_up`)."""
        if not self._may_resume:
            return False
        self._may_resume = False
        try:
            found = await published(self.js, self.events_subject, self.snapshots_subject)
        except Exception:  # JetStream away or answering oddly: a fresh epoch is always right
            log.warning("kv stream resume lookup failed", extra={"pod": self.info.pod}, exc_info=True)
            return False
        if found is None:
            return False
        seq = found.last.engine_seq
        replayed = await self.source.replay(seq, self.replay_timeout_s) or []
        if not replayed or replayed[0][0] != seq:
            return False  # the engine no longer buffers it (or restarted and has not got that far)
        try:
            step = decode_payload(replayed[0][1])
        except PayloadError:
            return False
        if not continues(found.last, step.ts, step.events):
            return False
        self.epoch = found.last.epoch
        self._clear_pending = False
        self.blocks = found.blocks
        self._last_published_seq = seq
        self._last_stream_seq = found.stream_seq
        self.tracker.reset()
        self.tracker.applied(seq, step.ts)
        for replay_seq, payload in replayed[1:]:
            if replay_seq == self.tracker.next_seq:
                try:
                    self._take(replay_seq, decode_payload(payload))
                except PayloadError:
                    self._take(replay_seq, None)
                self.stats.replayed += 1
        self.stats.resumed += 1
        log.info("kv stream resumed", extra={"pod": self.info.pod, "epoch": self.epoch, "from_seq": seq + 1})
        await self.flush()
        return True

    async def catch_up(self) -> None:
        """Start of a stream: the fresh epoch's clear, then whatever the engine's replay buffer still holds
        (an idle engine may send nothing live for a long time, yet its cache is full)."""
        for seq, payload in await self.source.replay(0, self.replay_timeout_s) or ():
            if self.tracker.next_seq is None or seq == self.tracker.next_seq:
                try:
                    self._take(seq, decode_payload(payload))
                except PayloadError:
                    self._take(seq, None)
                self.stats.replayed += 1
        await self.flush()

    async def handle(self, frames: list[bytes]) -> None:
        """One ZMQ message: sequence check, replay of what is missing, decode into the pending batch."""
        self.stats.messages += 1
        if len(frames) != 3 or len(frames[1]) != 8:
            self.stats.bad_payloads += 1
            return
        seq = int.from_bytes(frames[1], "big")
        try:
            decoded: DecodedBatch | None = decode_payload(frames[2])
        except PayloadError:
            decoded = None
        verdict = self.tracker.classify(seq, decoded.ts if decoded is not None else float("-inf"))
        if verdict == "stale":
            self.stats.stale += 1
            return
        if verdict == "restart":
            self.stats.restarts += 1
            await self.flush()
            self.tracker.reset()
            self.new_epoch()
            verdict = self.tracker.classify(seq)
        if verdict == "gap":
            await self._recover(seq)
        self._take(seq, decoded)

    async def _recover(self, seq: int) -> None:
        start = self.tracker.missing_from()
        self.stats.gaps += 1
        replayed = await self.source.replay(start, self.replay_timeout_s)
        got = 0
        for replay_seq, payload in replayed or ():
            if start <= replay_seq < seq and replay_seq == self.tracker.missing_from():
                try:
                    self._take(replay_seq, decode_payload(payload))
                except PayloadError:
                    self._take(replay_seq, None)
                got += 1
        self.stats.replayed += got
        lost = seq - start - got
        if lost > 0 and not (start == 0 and self._clear_pending):
            # A fresh stream starts with a clear, so batches older than the engine's replay buffer only cost
            # history; a gap inside a running stream may have lost removals.
            self.stats.unrecovered += lost
            log.warning("kv events lost", extra={"pod": self.info.pod, "from": start + got, "to": seq - 1})

    def _take(self, seq: int, decoded: DecodedBatch | None) -> None:
        """Queue one decoded engine batch for publishing (None: it did not decode; counted, skipped)."""
        if decoded is None:
            self.tracker.applied(seq)
            self.stats.bad_payloads += 1
            return
        self.tracker.applied(seq, decoded.ts)
        if not self._pending:
            self._pending_ts = decoded.ts
        self._pending.extend(decoded.events)
        self._pending_seq = seq
        self.stats.events += len(decoded.events)

    async def flush(self) -> None:
        """Publish what is pending as one batch. After a publish was lost, the pod's whole state goes out first,
        in a new epoch, so routers converge again."""
        if self._resync:
            await self._republish_state()
        if not self._pending and not self._clear_pending:
            return
        events = self._pending
        if self._clear_pending:
            events = [KvAllCleared(), *events]
        seq = self._pending_seq if self._pending else self._last_published_seq
        ts = self._pending_ts or time.time()
        self._pending = []
        self._pending_ts = 0.0
        self._clear_pending = False
        self.blocks.apply(events)
        self._dirty = True
        self._last_published_seq = seq
        await self._publish_events(events, seq, ts, f"{self.info.pod}:{self.epoch}:{seq}:{len(events)}")

    async def _republish_state(self) -> None:
        self._resync = False
        self.epoch = max(time.time_ns(), self.epoch + 1)
        self.stats.resyncs += 1
        events: list[KvEvent] = [KvAllCleared(), *self.blocks.snapshot_events()]
        resync_id = f"{self.info.pod}:{self.epoch}:resync"
        await self._publish_events(events, self._last_published_seq, time.time(), resync_id)

    async def _publish_events(self, events: list[KvEvent], seq: int, ts: float, msg_id: str) -> None:
        """One batch, or consecutive batches (message ids numbered) when one would exceed the server's
        ``max_payload``. Every part carries the same ``engine_seq``: a snapshot never falls between them."""
        batch = KvEventBatch(self.info.pod, self.info.model, seq, ts, events, self.epoch)
        payload = _encoder.encode(batch)
        budget = self.max_payload() - _HEADERS_ROOM
        if len(payload) <= budget:
            await self._publish(payload, msg_id)
            return
        overhead = len(_encoder.encode(msgspec.structs.replace(batch, events=[])))
        try:
            groups = split_events(events, budget - overhead)
        except EventTooLarge as exc:
            self._lost()
            log.warning("kv batch cannot be published: %s", exc, extra={"pod": self.info.pod})
            return
        for number, group in enumerate(groups):
            part = msgspec.structs.replace(batch, events=group)
            await self._publish(_encoder.encode(part), f"{msg_id}:{number}")

    async def _publish(self, payload: bytes, msg_id: str) -> None:
        try:
            # Not waiting for the ack here keeps a burst flowing; acks are collected by _acked, in order.
            future = await self.js.publish_async(
                self.events_subject, payload, headers={"Nats-Msg-Id": msg_id}, wait_stall=_STALL_S
            )
        except Exception:
            self._lost()
            log.warning("kv batch publish failed", extra={"pod": self.info.pod}, exc_info=True)
            return
        self._in_flight.add(future)
        future.add_done_callback(self._acked)
        # Cancelling frees nats-py's pending-ack slot too; _acked then counts the batch as lost.
        asyncio.get_running_loop().call_later(_ACK_TIMEOUT_S, future.cancel)

    def _lost(self) -> None:
        self.stats.publish_errors += 1
        self._resync = True

    def _acked(self, future: asyncio.Future[PubAck]) -> None:
        self._in_flight.discard(future)
        if future.cancelled() or future.exception() is not None:
            self._lost()
            log.warning("kv batch not acknowledged; resyncing the pod", extra={"pod": self.info.pod})
            return
        self._last_stream_seq = max(self._last_stream_seq, future.result().seq)
        self.stats.batches_published += 1

    async def settle(self) -> None:
        """Wait until every batch published so far is acknowledged or lost (bounded: acks time out)."""
        if self._in_flight:
            await asyncio.wait(set(self._in_flight))

    # --- snapshots ----------------------------------------------------------------------------------------

    async def snapshot(self) -> None:
        """Publish the pod's blocks as of the last published batch, then purge what it supersedes."""
        self._next_snapshot = time.monotonic() + self.snapshot_interval_s
        await self.flush()
        if not self._dirty:
            return
        await self.settle()
        if self._resync:  # a batch was lost: the snapshot covers the resync, which goes out first
            await self.flush()
            await self.settle()
        if self._resync:
            log.warning("kv snapshot postponed: resync not acknowledged", extra={"pod": self.info.pod})
            return
        snapshot_id = time.time_ns()
        empty = KvSnapshot(self.info.pod, self.info.model, self.epoch, self._last_published_seq, snapshot_id,
                           0, 0, time.time(), [])  # fmt: skip
        room = min(_SNAPSHOT_PART_BYTES, self.max_payload() - _HEADERS_ROOM)
        budget = room - len(_encoder.encode(empty)) - 16  # 16: the part numbers, absent from ``empty``
        try:
            parts = split_events(list(self.blocks.snapshot_events()), budget)
        except EventTooLarge as exc:
            self.stats.publish_errors += 1
            log.warning("kv snapshot cannot be published: %s", exc, extra={"pod": self.info.pod})
            return
        first_seq = 0
        cut_stream_seq = self._last_stream_seq
        try:
            for number, part in enumerate(parts):
                message = msgspec.structs.replace(
                    empty, part=number, parts=len(parts), ts=time.time(), blocks=part
                )
                ack = await self.js.publish(
                    self.snapshots_subject,
                    _encoder.encode(message),
                    headers={"Nats-Msg-Id": f"{self.info.pod}:snapshot:{snapshot_id}:{number}"},
                )
                first_seq = first_seq or ack.seq
            await self.js.purge_stream(KV_SNAPSHOTS_STREAM, subject=self.snapshots_subject, seq=first_seq)
            if self._snapshot_cut_stream_seq:
                # Keep one snapshot interval of events: a router loading the previous snapshot right now
                # still finds every batch after it.
                await self.js.purge_stream(
                    KV_EVENTS_STREAM, subject=self.events_subject, seq=self._snapshot_cut_stream_seq + 1
                )
        except Exception:
            self.stats.publish_errors += 1
            log.warning("kv snapshot failed", extra={"pod": self.info.pod}, exc_info=True)
            return
        self._snapshot_cut_stream_seq = cut_stream_seq
        self._dirty = False
        self.stats.snapshots += 1

    async def close(self, removed: bool) -> None:
        """Stop following; a removed pod gets a final ``KvAllCleared`` and its retained history is purged."""
        self.source.close()
        if not removed:
            return
        self._pending = []
        self._clear_pending = True
        await self.flush()
        await self.settle()
        try:
            await self.js.purge_stream(KV_SNAPSHOTS_STREAM, subject=self.snapshots_subject)
            if self._last_stream_seq:
                await self.js.purge_stream(KV_EVENTS_STREAM, subject=self.events_subject, seq=self._last_stream_seq)
        except Exception:
            self.stats.publish_errors += 1
            log.warning("kv purge of removed pod failed", extra={"pod": self.info.pod}, exc_info=True)


async def run_forever(stream: PodStream) -> None:
    """``stream.run()``; a crash in one pod's stream is logged and the stream restarts (new epoch)."""
    while True:
        try:
            await stream.run()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("kv pod stream failed; restarting it", extra={"pod": stream.info.pod})
            stream.tracker.reset()
            stream.new_epoch()
            await asyncio.sleep(1.0)
