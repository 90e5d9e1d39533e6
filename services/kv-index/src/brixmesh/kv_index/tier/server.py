"""The tier's TCP server: frames of :mod:`brixmesh.common.kv_tier` in, replies out, one connection at a time
in order (a client may pipeline).

Receiving is a ``BufferedProtocol``: the header and metadata land in small buffers, and a PUT's values land
straight in the slab chunks :class:`~.store.SlabStore` reserved for them (the socket read is the one copy
into the store). A GET's reply is sent straight from the slabs; its chunks stay pinned (not reused, even
if evicted meanwhile) until the transport's buffer has drained, which the connection awaits before it
answers the next request (write buffer high-water mark 0: every buffered byte pauses, draining resumes).

Bad input never stops the server: a broken header or a frame over the size limit gets an ``ERROR`` reply
and that connection is closed (its byte stream cannot be trusted); a bad request inside a well-formed frame
(undecodable metadata, sizes that do not add up, an oversized value, an unknown op) gets an ``ERROR``
reply, its payload is read and dropped, and the connection goes on.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Hashable
from dataclasses import dataclass

import msgspec

from brixmesh.common.kv_tier import (
    HEADER, HEADER_BYTES, MAGIC, MAX_KEY_BYTES, MAX_META_BYTES, MISSING, OP_ERROR, OP_EXISTS, OP_GET,
    OP_LONGEST_PREFIX, OP_PUT, OP_STATS, REPLY, REQUEST_OPS, VERSION, ErrorReply, ExistsReply, GetReply,
    KeysMeta, PrefixReply, PutMeta, PutReply, StatsReply, TierNamespace, encode_header,
)  # fmt: skip

from brixmesh.kv_index.tier.l2 import RedisL2
from brixmesh.kv_index.tier.store import Chunk, SlabStore

log = logging.getLogger(__name__)

MAX_NAME_CHARS = 256
MAX_QUEUED_REQUESTS = 64
"""A connection whose unanswered requests reach this stops being read until they drain."""
_DRAIN_BYTES = 1 << 20

_encoder = msgspec.msgpack.Encoder()
_put_meta = msgspec.msgpack.Decoder(PutMeta)
_keys_meta = msgspec.msgpack.Decoder(KeysMeta)


class BadRequest(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(slots=True)
class ServerCounters:
    connections: int = 0
    requests: int = 0
    protocol_errors: int = 0
    l2_hits: int = 0


class TierCore:
    """What every connection shares: the L1 store, the optional L2, limits and counters."""

    def __init__(
        self, store: SlabStore, max_value_bytes: int, max_frame_bytes: int, l2: RedisL2 | None = None
    ) -> None:
        self.store = store
        self.max_value_bytes = max_value_bytes
        self.max_frame_bytes = max_frame_bytes
        self.l2 = l2
        self.counters = ServerCounters()

    def stats(self) -> StatsReply:
        store = self.store
        return StatsReply(
            blocks=len(store), bytes_used=store.used_bytes, bytes_budget=store.budget_bytes,
            policy=store.policy_name, hits=store.counters.hits, misses=store.counters.misses,
            evictions=store.counters.evictions, l2_hits=self.counters.l2_hits,
        )  # fmt: skip


def _check(meta: KeysMeta | PutMeta) -> None:
    namespace = meta.namespace
    names = (namespace.model, namespace.dtype, namespace.adapter, namespace.cache_salt)
    if max(map(len, names)) > MAX_NAME_CHARS:
        raise BadRequest("bad_request", f"namespace names are limited to {MAX_NAME_CHARS} characters")
    if namespace.block_size <= 0 or namespace.tp_rank < 0:
        raise BadRequest("bad_request", "block_size must be positive and tp_rank not negative")
    for key in meta.keys:
        if isinstance(key, bytes) and not 0 < len(key) <= MAX_KEY_BYTES:
            raise BadRequest("bad_request", f"a bytes key must have 1 to {MAX_KEY_BYTES} bytes")
        if isinstance(key, int) and not 0 <= key < 1 << 64:
            raise BadRequest("bad_request", "an int key must be a u64")


class _Request:
    __slots__ = ("op", "request_id", "meta", "error", "chunks", "keys")

    def __init__(self, op: int, request_id: int) -> None:
        self.op = op
        self.request_id = request_id
        self.meta: KeysMeta | PutMeta | None = None
        self.error: BadRequest | None = None
        self.chunks: list[Chunk | None] = []
        self.keys: list[Hashable] = []


class TierConnection(asyncio.BufferedProtocol):
    def __init__(self, core: TierCore) -> None:
        self.core = core
        self.transport: asyncio.Transport | None = None
        self._header = bytearray(HEADER_BYTES)
        self._scratch = bytearray(_DRAIN_BYTES)
        self._view = memoryview(self._header)
        self._filled = 0
        self._stage = "header"
        self._request: _Request | None = None
        self._meta = bytearray()
        self._payload_left = 0
        self._sinks: deque[memoryview] = deque()
        self._queue: asyncio.Queue[_Request] = asyncio.Queue()
        self._worker: asyncio.Task[None] | None = None
        self._drained = asyncio.Event()
        self._drained.set()

    # --- connection ---------------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.transport.set_write_buffer_limits(high=0)
        self.core.counters.connections += 1
        self._worker = asyncio.get_running_loop().create_task(self._answer_forever())

    def connection_lost(self, exc: Exception | None) -> None:
        self.core.counters.connections -= 1
        if self._request is not None:
            self._release(self._request)
        self._drained.set()  # a worker waiting to unpin a reply's chunks goes on (and is then cancelled)
        if self._worker is not None:
            self._worker.cancel()

    def pause_writing(self) -> None:
        self._drained.clear()

    def resume_writing(self) -> None:
        self._drained.set()

    # --- receiving ------------------------------------------------------------------------------------------

    def get_buffer(self, sizehint: int) -> memoryview:
        if self._stage == "payload" and self._sinks:
            return self._sinks[0]
        return self._view[self._filled :]

    def buffer_updated(self, nbytes: int) -> None:
        if self._stage == "payload":
            self._payload_received(nbytes)
            return
        self._filled += nbytes
        if self._filled < len(self._view):
            return
        if self._stage == "header":
            self._header_received()
        else:
            self._meta_received()

    def _header_received(self) -> None:
        magic, version, op, request_id, meta_len, payload_len = HEADER.unpack(self._header)
        if magic != MAGIC or version != VERSION:
            head = bytes(self._header[:3])
            self._refuse(request_id, "bad_frame", f"bad frame header {head!r} (want {MAGIC!r} v{VERSION})")
            return
        if meta_len > MAX_META_BYTES or meta_len + payload_len > self.core.max_frame_bytes:
            self._refuse(request_id, "frame_too_large", f"frame of {meta_len + payload_len} bytes exceeds "
                         f"{self.core.max_frame_bytes} (metadata at most {MAX_META_BYTES})")
            return
        self._request = _Request(op, request_id)
        self._payload_left = payload_len
        self._meta = bytearray(meta_len)
        self._view = memoryview(self._meta)
        self._filled = 0
        self._stage = "meta"
        if not meta_len:
            self._meta_received()

    def _meta_received(self) -> None:
        request = self._request
        assert request is not None
        try:
            self._decode(request)
        except BadRequest as error:
            request.error = error
        except (msgspec.DecodeError, msgspec.ValidationError) as error:
            request.error = BadRequest("bad_request", f"undecodable metadata: {error}")
        if request.error is None and request.op == OP_PUT:
            self._reserve(request)
        self._stage = "payload"
        if not self._sinks:
            self._drain_sink()
        if self._payload_left == 0:
            self._request_received()

    def _decode(self, request: _Request) -> None:
        if request.op not in REQUEST_OPS:
            raise BadRequest("unknown_op", f"unknown op {request.op}")
        if request.op == OP_STATS:
            return
        if request.op == OP_PUT:
            meta = _put_meta.decode(self._meta)
            _check(meta)
            if len(meta.sizes) != len(meta.keys) or sum(meta.sizes) != self._payload_left:
                raise BadRequest("bad_request", "put sizes must match the keys and add up to the payload")
            if min(meta.sizes, default=0) < 0:
                raise BadRequest("bad_request", "put sizes must not be negative")
            largest = max(meta.sizes, default=0)
            if largest > self.core.max_value_bytes:
                limit = self.core.max_value_bytes
                raise BadRequest("value_too_large", f"value of {largest} bytes exceeds {limit}")
        else:
            if self._payload_left:
                raise BadRequest("bad_request", "only put carries a payload")
            meta = _keys_meta.decode(self._meta)
            _check(meta)
        request.meta = meta
        request.keys = [(meta.namespace, key) for key in meta.keys]

    def _reserve(self, request: _Request) -> None:
        store = self.core.store
        meta = request.meta
        assert isinstance(meta, PutMeta)
        previous: Chunk | None = None
        for key, size in zip(request.keys, meta.sizes):
            chunk = None if key in store else store.reserve(size)
            request.chunks.append(chunk)
            if chunk is not None and size:
                if previous is not None and store.follows(previous, chunk):
                    # the next chunk of the same slab: one receive fills both (fewer, larger socket reads)
                    self._sinks[-1] = store.span(self._sinks[-1], chunk)
                else:
                    self._sinks.append(store.view(chunk))
                previous = chunk if size == chunk.size_class else None
            elif size:
                self._drain_sink(size)
                previous = None

    def _drain_sink(self, size: int | None = None) -> None:
        """Bytes of the payload nobody keeps (a value held already, or a refused request's payload)."""
        left = self._payload_left if size is None else size
        scratch = memoryview(self._scratch)
        while left > 0:
            step = min(left, len(scratch))
            self._sinks.append(scratch[:step])
            left -= step

    def _payload_received(self, nbytes: int) -> None:
        self._payload_left -= nbytes
        sink = self._sinks.popleft()
        if nbytes < len(sink):
            self._sinks.appendleft(sink[nbytes:])
        if self._payload_left == 0:
            self._request_received()

    def _request_received(self) -> None:
        request, self._request = self._request, None
        assert request is not None
        self._sinks.clear()
        self._stage = "header"
        self._view = memoryview(self._header)
        self._filled = 0
        self._meta = bytearray()
        self.core.counters.requests += 1
        if request.op == OP_PUT and request.error is None:
            self._commit(request)
        self._queue.put_nowait(request)
        if self._queue.qsize() >= MAX_QUEUED_REQUESTS and self.transport is not None:
            self.transport.pause_reading()

    def _commit(self, request: _Request) -> None:
        store = self.core.store
        stored = present = rejected = 0
        for key, chunk in zip(request.keys, request.chunks):
            if chunk is None:
                if key in store:
                    present += 1
                else:
                    rejected += 1
            elif store.commit(key, chunk):
                stored += 1
                if self.core.l2 is not None:
                    self.core.l2.stored(key, store.view(chunk))
            else:
                present += 1
        request.chunks = []
        request.meta = PutReply(stored, present, rejected)  # type: ignore[assignment]

    def _release(self, request: _Request) -> None:
        for chunk in request.chunks:
            if chunk is not None:
                self.core.store.release(chunk)
        request.chunks = []

    def _refuse(self, request_id: int, code: str, message: str) -> None:
        """A frame that cannot be trusted: answer and close the connection."""
        self.core.counters.protocol_errors += 1
        if self.transport is not None:
            self._write(OP_ERROR, request_id, ErrorReply(code, message), [])
            self.transport.close()

    # --- answering ------------------------------------------------------------------------------------------

    async def _answer_forever(self) -> None:
        while True:
            request = await self._queue.get()
            try:
                await self._answer(request)
            except Exception:
                log.exception("tier request failed")
                error = ErrorReply("internal", "internal error, see the tier log")
                self._write(OP_ERROR, request.request_id, error, [])
            if self.transport is not None and self._queue.qsize() < MAX_QUEUED_REQUESTS // 2:
                self.transport.resume_reading()

    async def _answer(self, request: _Request) -> None:
        if request.error is not None:
            self.core.counters.protocol_errors += 1
            self._write(OP_ERROR, request.request_id, ErrorReply(request.error.code, str(request.error)), [])
            return
        store = self.core.store
        reply: msgspec.Struct
        if request.op == OP_PUT:
            reply = request.meta  # type: ignore[assignment]
        elif request.op == OP_GET:
            await self._send_values(request)
            return
        elif request.op == OP_EXISTS:
            reply = ExistsReply([key in store for key in request.keys])
        elif request.op == OP_LONGEST_PREFIX:
            blocks = 0
            for key in request.keys:
                if key not in store:
                    break
                blocks += 1
            reply = PrefixReply(blocks)
        else:
            reply = self.core.stats()
        self._write(request.op | REPLY, request.request_id, reply, [])

    async def _send_values(self, request: _Request) -> None:
        store = self.core.store
        keys = request.keys
        found: list[Chunk | bytes | None] = [store.get(key) for key in keys]
        if self.core.l2 is not None and None in found:
            missing = [position for position, value in enumerate(found) if value is None]
            from_l2 = await self.core.l2.get_many([keys[position] for position in missing])
            # while awaiting, other connections' PUTs may have evicted and reused what ``found`` points at
            found = [store.peek(key) if value is not None else None for key, value in zip(keys, found)]
            for position, value in zip(missing, from_l2):
                if value is not None:
                    self.core.counters.l2_hits += 1
                    found[position] = value
        chunks = [value for value in found if isinstance(value, Chunk)]
        for chunk in chunks:
            store.pin(chunk)
        try:
            sizes = [MISSING if value is None else len(value) if isinstance(value, bytes) else value.size
                     for value in found]  # fmt: skip
            values = self._payload(found)
            self._write(OP_GET | REPLY, request.request_id, GetReply(sizes), values)
            await self._drained.wait()
        finally:
            for chunk in chunks:
                store.unpin(chunk)
        for key, value in zip(keys, found):
            if isinstance(value, bytes):  # an L2 hit: into L1 for next time
                chunk = store.reserve(len(value))
                if chunk is not None:
                    store.view(chunk)[:] = value
                    store.commit(key, chunk)

    def _payload(self, found: list[Chunk | bytes | None]) -> list[memoryview | bytes]:
        """The values held, as views of their slabs; neighbouring chunks of one slab as one view (one
        ``writev`` entry, fewer and larger socket writes)."""
        store = self.core.store
        values: list[memoryview | bytes] = []
        previous: Chunk | None = None
        for value in found:
            if isinstance(value, Chunk):
                if previous is not None and store.follows(previous, value):
                    values[-1] = store.span(values[-1], value)  # type: ignore[arg-type]
                else:
                    values.append(store.view(value))
                previous = value if value.size == value.size_class else None
            else:
                if value is not None:
                    values.append(value)
                previous = None
        return values

    def _write(
        self, op: int, request_id: int, reply: msgspec.Struct, values: list[memoryview | bytes]
    ) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        meta = _encoder.encode(reply)
        payload_len = sum(len(value) for value in values)
        self.transport.writelines([encode_header(op, request_id, len(meta), payload_len), meta, *values])


async def serve(core: TierCore, host: str, port: int) -> asyncio.Server:
    loop = asyncio.get_running_loop()
    return await loop.create_server(lambda: TierConnection(core), host, port, reuse_address=True)


__all__ = ["TierCore", "TierConnection", "TierNamespace", "serve"]
