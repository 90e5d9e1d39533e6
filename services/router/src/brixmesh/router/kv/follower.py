"""Keeps a :class:`PrefixIndex` equal to what the engines hold, from JetStream.

Start-up: load the newest complete snapshot of every pod from ``KV_SNAPSHOTS``, then follow ``KV_EVENTS``
from its first retained message with one ordered consumer, skipping each pod's batches the snapshot already
covers (by ``(epoch, engine_seq)``). :attr:`ready` turns true once the consumer has reached the last message
that existed when it started; the same consumer then keeps the index live.

After a NATS reconnect (a restarted server has lost the ephemeral consumer) the consumer is re-created from
the message after the last one received, at once, from the bus's reconnect hook; nats-py alone would only
notice after two missed idle heartbeats. The short heartbeat covers a consumer lost without a reconnect.
Messages at or below the last received stream sequence are skipped, so an old and a new consumer overlapping
never apply a batch twice or out of order.

Batches are applied on the router's event loop in slices of at most ``apply_slice_s`` (1 ms): the consumer's
callback only queues them, and an applier task takes them from the queue, returning to the loop after each
slice. nats-py hands a backlog to the callback message after message without returning to the loop, so
applying there held every request until a backlog (a burst at 50k events/s, a rebuild) ended; one batch per
loop turn instead fell behind whenever requests kept the loop's turns long. A thread would not take the work
off the proxy (it needs the GIL throughout) and would make requests wait for the GIL's switch interval.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgspec
from nats.aio.msg import Msg
from nats.js.api import ConsumerConfig, DeliverPolicy
from nats.js.client import JetStreamContext
from nats.js.errors import NotFoundError

from brixmesh.common.bus import Bus
from brixmesh.common.kv_streams import events_stream, snapshots_stream
from brixmesh.common.messages import PAYLOAD_ERRORS, KvAllCleared, KvEventBatch, KvSnapshot
from brixmesh.common.subjects import KV_EVENTS, KV_EVENTS_STREAM, KV_SNAPSHOTS, KV_SNAPSHOTS_STREAM

from brixmesh.router.kv.index import PrefixIndex

log = logging.getLogger(__name__)

_SNAPSHOT_READ_TIMEOUT_S = 5.0
_EXPIRY_CHECK_S = 1.0
_IDLE_HEARTBEAT_S = 1.0
_RESUBSCRIBE_RETRY_S = 0.25
APPLY_SLICE_S = 0.001


@dataclass(slots=True)
class FollowerStats:
    batches_applied: int = 0
    batches_skipped: int = 0
    decode_errors: int = 0
    snapshots_loaded: int = 0
    snapshot_blocks: int = 0
    rebuild_s: float = 0.0
    consumer_resets: int = 0
    """Times the events consumer was re-created after a NATS reconnect."""


class SnapshotAssembler:
    """Collects snapshot parts; keeps, per pod, the newest snapshot whose parts all arrived. Pure."""

    def __init__(self) -> None:
        self._parts: dict[tuple[str, int], dict[int, KvSnapshot]] = {}
        self.complete: dict[str, list[KvSnapshot]] = {}

    def add(self, part: KvSnapshot) -> None:
        key = (part.pod, part.snapshot_id)
        parts = self._parts.setdefault(key, {})
        parts[part.part] = part
        if len(parts) == part.parts:
            done = [parts[i] for i in range(part.parts) if i in parts]
            if len(done) == part.parts:
                current = self.complete.get(part.pod)
                if current is None or (part.epoch, part.engine_seq, part.snapshot_id) >= (
                    current[0].epoch,
                    current[0].engine_seq,
                    current[0].snapshot_id,
                ):
                    self.complete[part.pod] = done
            del self._parts[key]


class IndexFollower:
    def __init__(
        self,
        bus: Bus,
        index: PrefixIndex,
        *,
        on_lag: Callable[[float], None] | None = None,
        clock: Callable[[], float] = time.time,
        apply_slice_s: float = APPLY_SLICE_S,
    ) -> None:
        self.bus = bus
        self.index = index
        self.stats = FollowerStats()
        self.ready = False
        self._on_lag = on_lag
        self._clock = clock
        self._cuts: dict[str, tuple[int, int]] = {}
        self._decoder = msgspec.msgpack.Decoder(KvEventBatch)
        self._caught_up_at = 0
        self._ready_event = asyncio.Event()
        self._subscription: Any = None
        self._watcher: asyncio.Task[None] | None = None
        self._started = 0.0
        self._last_stream_seq = 0
        self._resubscribing = asyncio.Lock()
        self._stopped = False
        self._apply_slice_s = apply_slice_s
        self._received: deque[tuple[int, bytes]] = deque()
        """(stream sequence, payload) received, not yet applied"""
        self._arrived = asyncio.Event()
        self._applier: asyncio.Task[None] | None = None
        bus.on_reconnect(self._resubscribe)

    async def start(self) -> None:
        """Provision the streams, load snapshots, start following events; returns before the replay ends
        (await :meth:`wait_ready` or poll :attr:`ready`)."""
        self._started = time.perf_counter()
        js = self.bus.jetstream
        for config in (events_stream(), snapshots_stream()):
            try:
                await js.stream_info(config.name)
            except NotFoundError:  # kv-index not started yet: create with the defaults, it adjusts them later
                await self.bus.ensure_stream(config)
        await self._load_snapshots(js)
        self._applier = asyncio.get_running_loop().create_task(self._apply_received(), name="kv-apply")
        info = await js.stream_info(KV_EVENTS_STREAM)
        self._caught_up_at = info.state.last_seq if info.state.messages else 0
        if self._caught_up_at == 0:
            self._mark_ready()
        self._subscription = await self._subscribe(js)
        if not self.ready:
            self._watcher = asyncio.get_running_loop().create_task(self._watch_expiry(js), name="kv-ready-watch")

    async def _subscribe(self, js: JetStreamContext) -> Any:
        start = self._last_stream_seq + 1
        return await js.subscribe(
            KV_EVENTS.pattern(),
            ordered_consumer=True,
            idle_heartbeat=_IDLE_HEARTBEAT_S,
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE if start > 1 else DeliverPolicy.ALL,
            config=ConsumerConfig(opt_start_seq=start) if start > 1 else None,
            cb=self._on_message,
            pending_msgs_limit=1_000_000,
        )

    async def _resubscribe(self) -> None:
        """Reconnect hook: a new consumer from the message after the last received one (retried while the
        restarted server's JetStream is still loading its streams)."""
        async with self._resubscribing:
            while self._subscription is not None and not self._stopped:
                try:
                    info = await self.bus.jetstream.stream_info(KV_EVENTS_STREAM)
                    if info.state.last_seq < self._last_stream_seq:
                        self._last_stream_seq = 0  # the stream was created anew (store lost): from its start
                    subscription = await self._subscribe(self.bus.jetstream)
                except Exception:  # JetStream not answering yet
                    await asyncio.sleep(_RESUBSCRIBE_RETRY_S)
                    continue
                old, self._subscription = self._subscription, subscription
                self.stats.consumer_resets += 1
                try:
                    await old.unsubscribe()
                except Exception:  # already gone with the old connection
                    log.debug("old kv events subscription did not unsubscribe", exc_info=True)
                return

    async def _watch_expiry(self, js: JetStreamContext) -> None:
        """Ready also when the messages we were waiting for are gone (aged out or purged) before we got them."""
        while not self.ready:
            await asyncio.sleep(_EXPIRY_CHECK_S)
            info = await js.stream_info(KV_EVENTS_STREAM)
            if not info.state.messages or info.state.first_seq > self._caught_up_at:
                self._mark_ready()

    async def wait_ready(self, timeout_s: float) -> bool:
        try:
            await asyncio.wait_for(self._ready_event.wait(), timeout_s)
        except asyncio.TimeoutError:
            return False
        return True

    async def stop(self) -> None:
        self._stopped = True
        if self._applier is not None:
            self._applier.cancel()
            await asyncio.gather(self._applier, return_exceptions=True)
            self._applier = None
        if self._watcher is not None:
            self._watcher.cancel()
            await asyncio.gather(self._watcher, return_exceptions=True)
            self._watcher = None
        if self._subscription is not None:
            await self._subscription.unsubscribe()
            self._subscription = None

    def _mark_ready(self) -> None:
        if not self.ready:
            self.ready = True
            self.stats.rebuild_s = time.perf_counter() - self._started
            self._ready_event.set()
            log.info(
                "kv index rebuilt",
                extra={"rebuild_s": round(self.stats.rebuild_s, 3), "blocks": self.index.blocks},
            )

    async def _load_snapshots(self, js: JetStreamContext) -> None:
        info = await js.stream_info(KV_SNAPSHOTS_STREAM)
        if not info.state.messages:
            return
        last = info.state.last_seq
        assembler = SnapshotAssembler()
        decoder = msgspec.msgpack.Decoder(KvSnapshot)
        sub = await js.subscribe(KV_SNAPSHOTS.pattern(), ordered_consumer=True, deliver_policy=DeliverPolicy.ALL)
        try:
            while True:
                msg = await sub.next_msg(timeout=_SNAPSHOT_READ_TIMEOUT_S)
                try:
                    assembler.add(decoder.decode(msg.data))
                except PAYLOAD_ERRORS:
                    self.stats.decode_errors += 1
                if msg.metadata.sequence.stream >= last:
                    break
        finally:
            await sub.unsubscribe()
        for pod, parts in assembler.complete.items():
            head = parts[0]
            self.index.clear_pod(pod)
            events: list = [KvAllCleared()]
            for part in parts:
                events.extend(part.blocks)
                self.stats.snapshot_blocks += len(part.blocks)
            self.index.apply(KvEventBatch(pod, head.model, head.engine_seq, head.ts, events, head.epoch))
            self._cuts[pod] = (head.epoch, head.engine_seq)
            self.stats.snapshots_loaded += 1

    async def _on_message(self, msg: Msg) -> None:
        stream_seq = msg.metadata.sequence.stream
        if stream_seq <= self._last_stream_seq:
            return  # already received, delivered again by a consumer re-created after a reconnect
        self._last_stream_seq = stream_seq
        self._received.append((stream_seq, msg.data))
        self._arrived.set()

    async def _apply_received(self) -> None:
        received = self._received
        while True:
            if not received:
                self._arrived.clear()
                await self._arrived.wait()
            deadline = time.perf_counter() + self._apply_slice_s
            while received:
                stream_seq, data = received.popleft()
                self.apply_message(data)
                if not self.ready and stream_seq >= self._caught_up_at:
                    self._mark_ready()
                if time.perf_counter() >= deadline:
                    break
            await asyncio.sleep(0)  # let the requests waiting on the loop run

    def apply_message(self, data: bytes) -> None:
        try:
            batch = self._decoder.decode(data)
        except PAYLOAD_ERRORS:
            self.stats.decode_errors += 1
            return
        cut = self._cuts.get(batch.pod)
        if cut is not None:
            if (batch.epoch, batch.engine_seq) <= cut:
                self.stats.batches_skipped += 1
                return
            del self._cuts[batch.pod]
        self.index.apply(batch)
        self.stats.batches_applied += 1
        if self._on_lag is not None:
            self._on_lag(self._clock() - batch.ts)
