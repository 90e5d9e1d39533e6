"""ZMQ KV-event publisher, byte-compatible with vLLM 0.32, with a replay ROUTER and fault knobs.

Wire format (one message per engine step that produced events; nothing for empty steps):

- PUB, 3 frames: ``[topic, seq, payload]``; ``seq`` is 8-byte big-endian, 0, 1, 2, ... per publisher
  (a new publisher, i.e. an engine restart, starts again at 0); ``payload`` is msgpack
  ``[ts, events, data_parallel_rank]`` (see ``kv_event_types``).
- Replay ROUTER (always binds): a DEALER sends ``[b"", start_seq (8-byte BE)]`` and receives
  ``[b"", topic, seq8, payload]`` for every buffered batch with ``seq >= start_seq`` (the last
  ``buffer_steps`` batches), then the end marker ``[b"", b"", ff*8, b""]`` (seq -1).

``publish()`` never blocks: it numbers the batch and queues it; a background thread per publisher
encodes, sends and serves replay requests. Many publishers can live in one process (one per simulated
replica). Fault knobs, settable at any time: ``drop_probability`` (a dropped batch keeps its seq and
stays replayable, so consumers see a gap) and ``reorder`` (adjacent batches are swapped on the wire).

Usage::

    pub = create_publisher(parse_kv_events_config(flag_json), data_parallel_rank=0)
    pub.publish(kv_cache.take_events())   # once per engine step
    pub.close()
"""

from __future__ import annotations

import queue
import random
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

import zmq
from brixmesh.engine_sim.kv_event_types import EventEncoding, KvEvent, encode_batch
from brixmesh.engine_sim.kv_events_config import KvEventsConfig, offset_endpoint, should_bind

END_SEQ = (-1).to_bytes(8, "big", signed=True)
# A batch held back for reordering is sent anyway after this long without a successor.
_REORDER_HOLD_S = 0.05
# Replay requests are noticed within this long; without a replay socket the thread sleeps on the queue.
_IDLE_POLL_S = 0.02
_IDLE_BLOCK_S = 0.5
_START_TIMEOUT_S = 5.0


@dataclass(slots=True)
class PublisherStats:
    published: int = 0  # batches numbered by publish()
    sent: int = 0  # batches written to the PUB socket
    dropped: int = 0  # batches withheld by drop_probability (still replayable)
    overflowed: int = 0  # batches lost because the queue was full (seq gap, not replayable)
    send_errors: int = 0  # batches the PUB socket refused (still replayable)
    replay_requests: int = 0
    bad_replay_requests: int = 0


class NullKvEventPublisher:
    """``publisher: "null"`` or events disabled: accepts batches and sends nothing."""

    def publish(self, events: Sequence[KvEvent], ts: float | None = None) -> int | None:
        """Discards the batch; there is no seq."""
        return None

    def close(self) -> None:
        """Nothing to release."""


_STOP = object()


class ZmqKvEventPublisher:
    """One engine's PUB (+ optional replay ROUTER) socket pair, served by its own thread.

    Construction opens the sockets (``ValueError`` when that fails, e.g. an address in use).
    ``bound_endpoint``/``replay_bound_endpoint`` give the resolved addresses when binding (useful with
    ``tcp://127.0.0.1:*``); ``stats`` counts what happened to the batches.
    """

    def __init__(
        self,
        config: KvEventsConfig,
        data_parallel_rank: int = 0,
        *,
        encoding: EventEncoding = "map",
        context: zmq.Context | None = None,
        fault_seed: int | None = None,
    ) -> None:
        if encoding not in ("map", "array"):
            raise ValueError(f"unknown KV event encoding {encoding!r}; expected 'map' or 'array'")
        self.config = config
        self.data_parallel_rank = data_parallel_rank
        self.encoding: EventEncoding = encoding
        self.endpoint = offset_endpoint(config.endpoint, data_parallel_rank)
        self.replay_endpoint = (
            offset_endpoint(config.replay_endpoint, data_parallel_rank) if config.replay_endpoint else None
        )
        self.binds = should_bind(self.endpoint)
        # Resolved addresses (a "*" port becomes the real one); set by the thread once sockets exist.
        self.bound_endpoint: str | None = None
        self.replay_bound_endpoint: str | None = None
        self.stats = PublisherStats()

        self._topic = config.topic.encode("utf-8")
        self._ctx = context if context is not None else zmq.Context.instance()
        self._queue: queue.Queue[object] = queue.Queue(maxsize=config.max_queue_size)
        self._buffer: deque[tuple[int, bytes]] = deque(maxlen=config.buffer_steps)
        self._rng = random.Random(fault_seed)
        self._drop_probability = 0.0
        self.reorder = False
        self._seq_lock = threading.Lock()
        self._next_seq = 0
        self._closed = False
        self._ready = threading.Event()
        self._start_error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=f"kv-events-{self.endpoint}", daemon=True)
        self._thread.start()
        if not self._ready.wait(_START_TIMEOUT_S):
            raise RuntimeError(f"KV event publisher for {self.endpoint} did not start")
        if self._start_error is not None:
            self._thread.join()
            raise ValueError(f"cannot open KV event sockets ({self.endpoint}): {self._start_error}") from None

    # ----- fault knobs ---------------------------------------------------------------------------

    @property
    def drop_probability(self) -> float:
        return self._drop_probability

    @drop_probability.setter
    def drop_probability(self, value: float) -> None:
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"drop_probability must be within [0, 1], got {value}")
        self._drop_probability = float(value)

    # ----- engine side ---------------------------------------------------------------------------

    @property
    def next_seq(self) -> int:
        return self._next_seq

    def publish(self, events: Sequence[KvEvent], ts: float | None = None) -> int | None:
        """Queue one engine step's events; returns its seq, or None for an empty step (nothing sent)."""
        if self._closed:
            raise RuntimeError("KV event publisher is closed")
        if not events:
            return None
        stamp = time.time() if ts is None else ts
        with self._seq_lock:
            seq = self._next_seq
            self._next_seq += 1
            self.stats.published += 1
            # Fault knobs apply as set when the step published, whatever the thread's lag.
            drop = bool(self._drop_probability) and self._rng.random() < self._drop_probability
            try:
                self._queue.put_nowait((seq, stamp, list(events), drop, self.reorder))
            except queue.Full:
                self.stats.overflowed += 1
        return seq

    def drain(self, timeout: float = 5.0) -> bool:
        """Wait until the thread has handled every queued batch (sent, dropped or held for reorder)."""
        deadline = time.monotonic() + timeout
        done = self._queue.all_tasks_done
        with done:
            while self._queue.unfinished_tasks:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                done.wait(remaining)
        return True

    def close(self, timeout: float = 2.0) -> None:
        """Send what is queued, then close the sockets. Idempotent."""
        if self._closed:
            return
        self._closed = True
        deadline = time.monotonic() + timeout
        try:
            # Waits for room when the queue is full, but not forever if the thread is gone.
            self._queue.put(_STOP, timeout=timeout)
        except queue.Full:
            return
        self._thread.join(max(0.0, deadline - time.monotonic()))

    # ----- publisher thread ----------------------------------------------------------------------

    def _open_sockets(self) -> tuple[zmq.Socket, zmq.Socket | None]:
        pub = self._ctx.socket(zmq.PUB)
        replay: zmq.Socket | None = None
        try:
            pub.set_hwm(self.config.hwm)
            if self.binds:
                pub.bind(self.endpoint)
                self.bound_endpoint = pub.getsockopt_string(zmq.LAST_ENDPOINT)
            else:
                pub.connect(self.endpoint)
            if self.replay_endpoint is not None:
                replay = self._ctx.socket(zmq.ROUTER)
                replay.bind(self.replay_endpoint)
                self.replay_bound_endpoint = replay.getsockopt_string(zmq.LAST_ENDPOINT)
        except BaseException:
            pub.close(linger=0)
            if replay is not None:
                replay.close(linger=0)
            raise
        return pub, replay

    def _run(self) -> None:
        try:
            pub, replay = self._open_sockets()
        except Exception as exc:  # noqa: BLE001 (the constructor re-raises any setup failure)
            self._start_error = exc
            self._ready.set()
            return
        self._ready.set()
        held: tuple[int, bytes] | None = None
        held_since = 0.0
        try:
            while True:
                if replay is not None:
                    self._serve_replay(replay)
                try:
                    idle = _IDLE_POLL_S if replay is not None or held is not None else _IDLE_BLOCK_S
                    item = self._queue.get(timeout=idle)
                except queue.Empty:
                    if held is not None and time.monotonic() - held_since >= _REORDER_HOLD_S:
                        self._send(pub, *held)
                        held = None
                    continue
                if item is _STOP:
                    break
                seq, ts, events, drop, reorder = item  # type: ignore[misc]
                try:
                    held = self._handle(
                        pub,
                        held,
                        seq,
                        encode_batch(events, ts, self.data_parallel_rank, self.encoding),
                        drop,
                        reorder,
                    )
                except zmq.ZMQError:
                    # The batch stays replayable; consumers see a gap, as with a lost message.
                    self.stats.send_errors += 1
                finally:
                    self._queue.task_done()
                if held is not None and held[0] == seq:
                    held_since = time.monotonic()
            if held is not None:
                self._send(pub, *held)
            if replay is not None:
                self._serve_replay(replay)
        finally:
            pub.close(linger=200)
            if replay is not None:
                replay.close(linger=0)

    def _handle(
        self,
        pub: zmq.Socket,
        held: tuple[int, bytes] | None,
        seq: int,
        payload: bytes,
        drop: bool,
        reorder: bool,
    ) -> tuple[int, bytes] | None:
        """Buffers one batch and puts it on the wire; returns the batch now held back for reordering."""
        self._buffer.append((seq, payload))
        if drop:
            self.stats.dropped += 1
            return held
        if held is None:
            if reorder:
                return (seq, payload)
            self._send(pub, seq, payload)
            return None
        if reorder:  # the swap: successor first
            self._send(pub, seq, payload)
            self._send(pub, *held)
        else:
            self._send(pub, *held)
            self._send(pub, seq, payload)
        return None

    def _send(self, pub: zmq.Socket, seq: int, payload: bytes) -> None:
        pub.send_multipart((self._topic, seq.to_bytes(8, "big"), payload), copy=False)
        self.stats.sent += 1

    def _serve_replay(self, replay: zmq.Socket) -> None:
        while True:
            try:
                frames = replay.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            # Same leniency as vLLM: any 3-frame request is served, its last frame read as a BE int.
            if len(frames) != 3:
                self.stats.bad_replay_requests += 1
                continue
            self.stats.replay_requests += 1
            identity = frames[0]
            start = int.from_bytes(frames[2], "big")
            for seq, payload in list(self._buffer):
                if seq >= start:
                    replay.send_multipart(
                        (identity, b"", self._topic, seq.to_bytes(8, "big"), payload), copy=False
                    )
            replay.send_multipart((identity, b"", b"", END_SEQ, b""))


KvEventPublisher = ZmqKvEventPublisher | NullKvEventPublisher


def create_publisher(
    config: KvEventsConfig,
    data_parallel_rank: int = 0,
    *,
    encoding: EventEncoding = "map",
    context: zmq.Context | None = None,
) -> KvEventPublisher:
    """The publisher vLLM would start for this config (a null one unless events are on with zmq)."""
    if not config.publishes:
        return NullKvEventPublisher()
    return ZmqKvEventPublisher(config, data_parallel_rank, encoding=encoding, context=context)
