"""Client and wire protocol of the KV tier (``brixmesh-kv-tier``): KV blocks by chained block hash.

Only the standard library and msgspec: this module is imported inside vLLM's own environment by our KV
connector, so it must not pull in anything else of brixmesh.

Wire protocol (TCP, little-endian). Every frame, request or reply, is a fixed header, then ``meta_len`` bytes
of msgpack metadata, then ``payload_len`` bytes of raw values (concatenated, sizes in the metadata)::

    magic "KT" | version u8 | op u8 | request_id u32 | meta_len u32 | payload_len u64     (20 bytes)

Requests: ``PUT`` (:class:`PutMeta` + values), ``GET`` / ``EXISTS`` / ``LONGEST_PREFIX`` (:class:`KeysMeta`),
``STATS`` (no metadata). A reply carries the request's id and op ``op | REPLY`` (:class:`PutReply`,
:class:`GetReply` + found values, :class:`ExistsReply`, :class:`PrefixReply`) or ``ERROR``
(:class:`ErrorReply`). A connection's requests are answered in order; a client may pipeline them.

Keys are ``(namespace, block hash)``: the :class:`TierNamespace` holds everything that makes two equal token
chains different KV bytes (model, dtype, tensor-parallel rank, block size, adapter, ``cache_salt``), so
nothing is ever served across them.

Several tier nodes: :class:`KvTierClient` places each key on one node by consistent hashing (virtual nodes),
so capacity scales out. A node that cannot be reached, times out or breaks a frame is a *miss* (gets find
nothing, puts store nothing), never an error; the client retries it after ``retry_after_s``.

Transports: :class:`TierTransport` is the interface (one request in, one reply out); :class:`TcpTransport`
is the only implementation. An RDMA transport would implement the same interface; none exists or is tested.
"""

from __future__ import annotations

import asyncio
import bisect
import ctypes
import hashlib
import struct
import threading
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from concurrent.futures import Future
from typing import Protocol, TypeVar

import msgspec

MAGIC = b"KT"
VERSION = 1
HEADER = struct.Struct("<2sBBIIQ")
HEADER_BYTES = HEADER.size

OP_PUT = 1
OP_GET = 2
OP_EXISTS = 3
OP_LONGEST_PREFIX = 4
OP_STATS = 5
REPLY = 0x80
OP_ERROR = 0xFF
REQUEST_OPS = (OP_PUT, OP_GET, OP_EXISTS, OP_LONGEST_PREFIX, OP_STATS)

MAX_META_BYTES = 8 << 20
"""Largest metadata part of a frame (keys of one batch); more is a bad frame."""
MAX_KEY_BYTES = 64
MISSING = -1
"""``GetReply.sizes`` entry of a key the node does not hold."""

Key = int | bytes
"""A block hash: a u64 (the router's and vLLM's event hashes) or up to 64 bytes (vLLM's sha256 hashes)."""


class TierNamespace(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """Everything besides the token chain that decides a block's bytes."""

    model: str
    dtype: str
    block_size: int
    tp_rank: int = 0
    adapter: str = ""
    cache_salt: str = ""


class PutMeta(msgspec.Struct, array_like=True, gc=False):
    namespace: TierNamespace
    keys: list[Key]
    sizes: list[int]


class KeysMeta(msgspec.Struct, array_like=True, gc=False):
    namespace: TierNamespace
    keys: list[Key]


class PutReply(msgspec.Struct, array_like=True, gc=False):
    stored: int
    """Blocks newly stored."""
    present: int
    """Blocks the node already held (kept; the new copy is dropped)."""
    rejected: int = 0
    """Blocks with no room (every slab of their size class pinned); a miss later, not an error."""


class GetReply(msgspec.Struct, array_like=True, gc=False):
    sizes: list[int]
    """Per key: the value's size in the payload, or :data:`MISSING`."""


class ExistsReply(msgspec.Struct, array_like=True, gc=False):
    present: list[bool]


class PrefixReply(msgspec.Struct, array_like=True, gc=False):
    blocks: int
    """Leading keys held (the walk stops at the first missing one)."""


class StatsReply(msgspec.Struct, gc=False):
    blocks: int
    bytes_used: int
    bytes_budget: int
    policy: str
    hits: int
    misses: int
    evictions: int
    l2_hits: int = 0


class ErrorReply(msgspec.Struct, array_like=True, gc=False):
    code: str
    """``bad_frame``, ``frame_too_large``, ``unknown_op``, ``bad_request``, ``value_too_large``,
    ``internal``."""
    message: str


class TierError(Exception):
    """The node answered a request with an :class:`ErrorReply` (the connection stays usable)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code


class TierUnavailable(Exception):
    """The node could not be reached or broke the connection (the client turns this into a miss)."""


_encoder = msgspec.msgpack.Encoder()
_put_reply = msgspec.msgpack.Decoder(PutReply)
_get_reply = msgspec.msgpack.Decoder(GetReply)
_exists_reply = msgspec.msgpack.Decoder(ExistsReply)
_prefix_reply = msgspec.msgpack.Decoder(PrefixReply)
_stats_reply = msgspec.msgpack.Decoder(StatsReply)
_error_reply = msgspec.msgpack.Decoder(ErrorReply)


def encode_header(op: int, request_id: int, meta_len: int, payload_len: int) -> bytes:
    return HEADER.pack(MAGIC, VERSION, op, request_id, meta_len, payload_len)


def encode_meta(meta: msgspec.Struct | None) -> bytes:
    return b"" if meta is None else _encoder.encode(meta)


Buffer = bytes | bytearray | memoryview


def buffer_size(value: Buffer) -> int:
    return value.nbytes if isinstance(value, memoryview) else len(value)


class Frame:
    """A received frame. ``payload`` is empty when the payload went straight into the caller's buffers."""

    __slots__ = ("op", "request_id", "meta", "payload", "payload_len")

    def __init__(self, op: int, request_id: int, meta: bytearray, payload_len: int) -> None:
        self.op = op
        self.request_id = request_id
        self.meta = meta
        self.payload_len = payload_len
        self.payload = memoryview(b"")


class FrameReader(asyncio.BufferedProtocol):
    """Receives frames without joining chunks: the metadata into its own buffer, then the payload straight
    into the buffers ``sinks_for`` names (``get_into``) or into one fresh buffer; ``on_frame`` gets each.

    Used by the client for replies; the server has its own reader that lands PUT values in its slabs."""

    def __init__(
        self,
        on_frame: Callable[[Frame], None],
        on_lost: Callable[[Exception], None],
        max_frame_bytes: int,
        sinks_for: Callable[[Frame], list[memoryview] | None],
    ) -> None:
        self._on_frame = on_frame
        self._on_lost = on_lost
        self._sinks_for = sinks_for
        self._max_frame_bytes = max_frame_bytes
        self._header = bytearray(HEADER_BYTES)
        self._view = memoryview(self._header)
        self._filled = 0
        self._frame: Frame | None = None
        self._sinks: list[memoryview] = []
        self._stage = 0
        """0 header, 1 metadata, 2 payload"""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._view[self._filled :]

    def buffer_updated(self, nbytes: int) -> None:
        self._filled += nbytes
        while self._filled == len(self._view):
            if self._stage == 0:
                if not self._header_done():
                    return
            elif self._stage == 1:
                self._meta_done()
            elif self._sinks:
                self._view = self._sinks.pop()
                self._filled = 0
            else:
                self._frame_done()
                return

    def _header_done(self) -> bool:
        magic, version, op, request_id, meta_len, payload_len = HEADER.unpack(self._header)
        if magic != MAGIC or version != VERSION:
            self._fail(TierUnavailable(f"bad frame header from the tier: {bytes(self._header)!r}"))
            return False
        if meta_len + payload_len > self._max_frame_bytes:
            self._fail(TierUnavailable(f"tier reply of {meta_len + payload_len} bytes exceeds "
                                       f"{self._max_frame_bytes}"))
            return False
        self._frame = Frame(op, request_id, bytearray(meta_len), payload_len)
        self._view = memoryview(self._frame.meta)
        self._filled = 0
        self._stage = 1
        return True

    def _meta_done(self) -> None:
        frame = self._frame
        assert frame is not None
        sinks = self._sinks_for(frame) if frame.payload_len else []
        if sinks is None:
            frame.payload = memoryview(bytearray(frame.payload_len))
            sinks = [frame.payload]
        self._sinks = list(reversed(_coalesced([sink for sink in sinks if sink.nbytes])))
        self._view = memoryview(b"")
        self._filled = 0
        self._stage = 2

    def _frame_done(self) -> None:
        frame, self._frame = self._frame, None
        self._view = memoryview(self._header)
        self._filled = 0
        self._stage = 0
        assert frame is not None
        self._on_frame(frame)

    def _fail(self, error: Exception) -> None:
        if self.transport is not None:
            self.transport.close()
        self._on_lost(error)

    def connection_lost(self, exc: Exception | None) -> None:
        self._on_lost(TierUnavailable(f"tier connection lost: {exc or 'closed by the node'}"))


SinkPlan = Callable[[Frame], "list[memoryview] | None"]
"""Given a reply's header and metadata, the buffers its payload lands in, in order (together exactly
``payload_len`` bytes), or None for a fresh buffer (``Frame.payload``)."""


def _coalesced(sinks: list[memoryview]) -> list[memoryview]:
    """``sinks`` with neighbours in one buffer (the next starts where the previous ends) joined into one
    view, so one socket read fills several blocks."""
    if len(sinks) < 2:
        return sinks
    joined: list[memoryview] = []
    start = end = 0
    owner: object = None
    for sink in sinks:
        try:
            address = ctypes.addressof(ctypes.c_char.from_buffer(sink))
        except (TypeError, ValueError):  # read-only or not contiguous: kept as it is
            joined.append(sink)
            owner = None
            continue
        if owner is not None and sink.obj is owner and address == end:
            base = ctypes.addressof(ctypes.c_char.from_buffer(memoryview(owner).cast("B")))
            joined[-1] = memoryview(owner).cast("B")[start - base : address + sink.nbytes - base]
        else:
            joined.append(sink)
            owner, start = sink.obj, address
        end = address + sink.nbytes
    return joined


class TierTransport(Protocol):
    """One tier node, seen as request -> reply. ``values`` are sent as they are (no copy by the caller)."""

    async def call(
        self, op: int, meta: bytes, values: Sequence[Buffer], timeout_s: float, sinks: SinkPlan | None = None
    ) -> Frame:
        """The reply frame (op ``op | REPLY`` or ``OP_ERROR``); raises :class:`TierUnavailable`. ``sinks``,
        given the reply's header and metadata, names the buffers its payload lands in."""
        ...

    async def close(self) -> None: ...


class TcpTransport:
    """One pipelined TCP connection to a node, opened on first use and again after it breaks."""

    def __init__(self, host: str, port: int, max_frame_bytes: int) -> None:
        self.host = host
        self.port = port
        self.max_frame_bytes = max_frame_bytes
        self._reader: FrameReader | None = None
        self._pending: dict[int, tuple[asyncio.Future[Frame], SinkPlan | None]] = {}
        self._next_id = 0
        self._connecting: asyncio.Lock | None = None

    async def _connected(self, timeout_s: float) -> FrameReader:
        if self._reader is not None:
            return self._reader
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            if self._reader is None:
                loop = asyncio.get_running_loop()
                try:
                    _, reader = await asyncio.wait_for(
                        loop.create_connection(self._new_reader, self.host, self.port), timeout_s
                    )
                except (OSError, asyncio.TimeoutError) as error:
                    raise TierUnavailable(f"tier node {self.host}:{self.port} unreachable: {error}") from None
                self._reader = reader
            return self._reader

    def _new_reader(self) -> FrameReader:
        reader = FrameReader(
            self._deliver, lambda error: self._lost(reader, error), self.max_frame_bytes, self._sinks_for
        )
        return reader

    def _sinks_for(self, frame: Frame) -> list[memoryview] | None:
        found = self._pending.get(frame.request_id)
        if found is None or found[1] is None or frame.op == OP_ERROR:
            return None
        return found[1](frame)

    def _deliver(self, frame: Frame) -> None:
        found = self._pending.pop(frame.request_id, None)
        if found is not None and not found[0].done():
            found[0].set_result(frame)

    def _lost(self, reader: FrameReader, error: Exception) -> None:
        if self._reader is not reader:
            return  # an older connection, already replaced
        self._reader = None
        pending, self._pending = self._pending, {}
        for waiter, _ in pending.values():
            if not waiter.done():
                waiter.set_exception(error)

    async def call(
        self, op: int, meta: bytes, values: Sequence[Buffer], timeout_s: float, sinks: SinkPlan | None = None
    ) -> Frame:
        reader = await self._connected(timeout_s)
        transport = reader.transport
        if transport is None or transport.is_closing():
            self._lost(reader, TierUnavailable("tier connection closed"))
            raise TierUnavailable(f"tier node {self.host}:{self.port}: connection closed")
        self._next_id = (self._next_id + 1) & 0xFFFFFFFF
        request_id = self._next_id
        waiter: asyncio.Future[Frame] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = (waiter, sinks)
        payload_len = sum(map(buffer_size, values))
        transport.writelines([encode_header(op, request_id, len(meta), payload_len), meta, *values])
        try:
            return await asyncio.wait_for(waiter, timeout_s)
        except asyncio.TimeoutError:
            raise TierUnavailable(f"tier node {self.host}:{self.port} timed out after {timeout_s}s") from None
        finally:
            if not waiter.done() or waiter.cancelled():
                # Given up (timeout, cancelled): a late reply must not land in buffers the caller reuses,
                # and a slow node should not pile up requests: start a new connection.
                self._pending.pop(request_id, None)
                transport.close()

    async def close(self) -> None:
        if self._reader is not None and self._reader.transport is not None:
            self._reader.transport.close()
        self._reader = None


def parse_address(address: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port`` too) -> (host, port); a one-line ``ValueError`` otherwise."""
    host, sep, port = address.strip().rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"expected host:port for a KV tier node, got {address!r}")
    return host.strip("[]"), int(port)


class HashRing:
    """Consistent hashing of keys onto nodes; removing a node moves only that node's keys."""

    def __init__(self, nodes: Sequence[str], virtual_nodes: int = 64) -> None:
        if not nodes:
            raise ValueError("a KV tier client needs at least one node")
        points = sorted(
            (_point(f"{node}#{index}".encode()), node) for node in nodes for index in range(virtual_nodes)
        )
        self._points = [point for point, _ in points]
        self._nodes = [node for _, node in points]

    def node(self, namespace: TierNamespace, key: Key) -> str:
        found = bisect.bisect(self._points, _point(_key_bytes(namespace, key)))
        return self._nodes[found % len(self._nodes)]


def _point(data: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")


def _key_bytes(namespace: TierNamespace, key: Key) -> bytes:
    raw = key if isinstance(key, bytes) else key.to_bytes(8, "little", signed=False)
    return _encoder.encode(namespace) + raw


class KvTierClient:
    """Batched access to one or more tier nodes (asyncio). Every method treats an unavailable node as a miss.

    ``nodes``: ``host:port`` strings. ``timeout_s`` bounds each node's answer; a node that failed is skipped
    (a miss at once) for ``retry_after_s``. ``counters`` counts calls that met an unavailable node."""

    def __init__(
        self,
        nodes: Sequence[str],
        *,
        timeout_s: float = 2.0,
        retry_after_s: float = 2.0,
        max_frame_bytes: int = 1 << 30,
        transport_factory: Callable[[str, int, int], TierTransport] = TcpTransport,
    ) -> None:
        self.nodes = [f"{host}:{port}" for host, port in map(parse_address, nodes)]
        self.timeout_s = timeout_s
        self.retry_after_s = retry_after_s
        self._ring = HashRing(self.nodes)
        self._transports = {
            node: transport_factory(*parse_address(node), max_frame_bytes) for node in self.nodes
        }
        self._down_until: dict[str, float] = {}
        self.unavailable = 0
        """Node calls that found the node unavailable (each one a miss)."""

    def _split(self, namespace: TierNamespace, keys: Sequence[Key]) -> dict[str, list[int]]:
        """node -> positions of its keys (in order)."""
        if len(self.nodes) == 1:
            return {self.nodes[0]: list(range(len(keys)))}
        where: dict[str, list[int]] = {}
        for position, key in enumerate(keys):
            where.setdefault(self._ring.node(namespace, key), []).append(position)
        return where

    async def _call(
        self,
        node: str,
        op: int,
        meta: msgspec.Struct | None,
        values: Sequence[Buffer] = (),
        sinks: SinkPlan | None = None,
    ) -> Frame | None:
        """The node's reply, or None when the node is unavailable (now or recently)."""
        loop = asyncio.get_running_loop()
        if self._down_until.get(node, 0.0) > loop.time():
            self.unavailable += 1
            return None
        try:
            frame = await self._transports[node].call(op, encode_meta(meta), values, self.timeout_s, sinks)
        except TierUnavailable:
            self._down_until[node] = loop.time() + self.retry_after_s
            self.unavailable += 1
            return None
        if frame.op == OP_ERROR:
            error = _error_reply.decode(frame.meta)
            raise TierError(error.code, error.message)
        return frame

    async def put(self, namespace: TierNamespace, keys: Sequence[Key], values: Sequence[Buffer]) -> PutReply:
        """Store ``values[i]`` under ``keys[i]``; returns the counts summed over nodes (an unavailable node's
        blocks count in none). ``values`` must not change until this returns. Raises :class:`TierError` for a
        request the node refuses (e.g. ``value_too_large``)."""
        if len(keys) != len(values):
            raise ValueError(f"{len(keys)} keys but {len(values)} values")
        total = PutReply(0, 0, 0)
        if not keys:
            return total
        parts = self._split(namespace, keys)

        async def one(node: str, positions: list[int]) -> None:
            chosen = [values[i] for i in positions]
            sizes = [buffer_size(value) for value in chosen]
            meta = PutMeta(namespace, [keys[i] for i in positions], sizes)
            frame = await self._call(node, OP_PUT, meta, chosen)
            if frame is not None:
                reply = _put_reply.decode(frame.meta)
                total.stored += reply.stored
                total.present += reply.present
                total.rejected += reply.rejected

        await _gather([one(node, positions) for node, positions in parts.items()])
        return total

    async def get(self, namespace: TierNamespace, keys: Sequence[Key]) -> list[memoryview | None]:
        """Per key, its value (a view into the received frame, no copy) or None (missing or node down)."""
        found: list[memoryview | None] = [None] * len(keys)
        if not keys:
            return found

        async def one(node: str, positions: list[int]) -> None:
            frame = await self._call(node, OP_GET, KeysMeta(namespace, [keys[i] for i in positions]))
            if frame is None:
                return
            sizes = _get_reply.decode(frame.meta).sizes
            payload = frame.payload
            offset = 0
            for position, size in zip(positions, sizes):
                if size != MISSING:
                    found[position] = payload[offset : offset + size]
                    offset += size

        await _gather([one(node, positions) for node, positions in self._split(namespace, keys).items()])
        return found

    async def get_into(
        self, namespace: TierNamespace, keys: Sequence[Key], buffers: Sequence[memoryview]
    ) -> list[int]:
        """Receives each key's value straight into ``buffers[i]`` (no intermediate copy: e.g. a staging
        buffer or the KV cache's own block). Returns per key the bytes written, or :data:`MISSING` (not held,
        node down, or larger than its buffer). On a timeout the connection is dropped, so nothing lands in
        ``buffers`` after this returns."""
        if len(keys) != len(buffers):
            raise ValueError(f"{len(keys)} keys but {len(buffers)} buffers")
        written = [MISSING] * len(keys)
        if not keys:
            return written

        async def one(node: str, positions: list[int]) -> None:
            landed: list[int] = []

            def plan(frame: Frame) -> list[memoryview]:
                sinks = []
                for position, size in zip(positions, _get_reply.decode(frame.meta).sizes):
                    if size == MISSING:
                        landed.append(MISSING)
                    elif size <= buffers[position].nbytes:
                        sinks.append(buffers[position].cast("B")[:size])
                        landed.append(size)
                    else:
                        sinks.append(memoryview(bytearray(size)))
                        landed.append(MISSING)
                return sinks

            meta = KeysMeta(namespace, [keys[i] for i in positions])
            frame = await self._call(node, OP_GET, meta, (), plan)
            if frame is not None:
                for position, size in zip(positions, landed):
                    written[position] = size

        await _gather([one(node, positions) for node, positions in self._split(namespace, keys).items()])
        return written

    async def exists(self, namespace: TierNamespace, keys: Sequence[Key]) -> list[bool]:
        present = [False] * len(keys)
        if not keys:
            return present

        async def one(node: str, positions: list[int]) -> None:
            frame = await self._call(node, OP_EXISTS, KeysMeta(namespace, [keys[i] for i in positions]))
            if frame is not None:
                for position, held in zip(positions, _exists_reply.decode(frame.meta).present):
                    present[position] = held

        await _gather([one(node, positions) for node, positions in self._split(namespace, keys).items()])
        return present

    async def longest_prefix(self, namespace: TierNamespace, keys: Sequence[Key]) -> int:
        """How many leading ``keys`` (a prompt's chained block hashes, in order) the tier holds."""
        if not keys:
            return 0
        if len(self.nodes) == 1:
            frame = await self._call(self.nodes[0], OP_LONGEST_PREFIX, KeysMeta(namespace, list(keys)))
            return 0 if frame is None else _prefix_reply.decode(frame.meta).blocks
        present = await self.exists(namespace, keys)
        return present.index(False) if False in present else len(present)

    async def stats(self) -> dict[str, StatsReply | None]:
        """Per node, its statistics (None when unavailable)."""
        frames = await asyncio.gather(*(self._call(node, OP_STATS, None) for node in self.nodes))
        return {
            node: None if frame is None else _stats_reply.decode(frame.meta)
            for node, frame in zip(self.nodes, frames)
        }

    async def close(self) -> None:
        for transport in self._transports.values():
            await transport.close()


async def _gather(calls: list[Awaitable[None]]) -> None:
    if len(calls) == 1:
        await calls[0]
    else:
        await asyncio.gather(*calls)


T = TypeVar("T")


class BlockingKvTierClient:
    """:class:`KvTierClient` for synchronous callers (vLLM's connector hooks): runs it on a private event loop
    in a daemon thread. Each method blocks for at most ``timeout_s`` (plus the node's own timeout) and then
    answers as a miss; ``submit_put`` returns at once (the caller bounds how many puts it keeps in flight)."""

    def __init__(self, nodes: Sequence[str], **options: float) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="kv-tier-client", daemon=True)
        self._thread.start()
        self.client = KvTierClient(nodes, **options)  # type: ignore[arg-type]
        self.timeout_s = self.client.timeout_s

    def _run(self, call: Coroutine[object, object, T], miss: T) -> T:
        future = asyncio.run_coroutine_threadsafe(call, self._loop)
        try:
            return future.result(2 * self.timeout_s + 1.0)
        except TimeoutError:
            future.cancel()
            return miss

    def put(self, namespace: TierNamespace, keys: Sequence[Key], values: Sequence[Buffer]) -> PutReply:
        return self._run(self.client.put(namespace, keys, values), PutReply(0, 0, 0))

    def submit_put(
        self, namespace: TierNamespace, keys: Sequence[Key], values: Sequence[Buffer]
    ) -> Future[PutReply]:
        return asyncio.run_coroutine_threadsafe(self.client.put(namespace, keys, values), self._loop)

    def get(self, namespace: TierNamespace, keys: Sequence[Key]) -> list[memoryview | None]:
        return self._run(self.client.get(namespace, keys), [None] * len(keys))

    def get_into(
        self, namespace: TierNamespace, keys: Sequence[Key], buffers: Sequence[memoryview]
    ) -> list[int]:
        return self._run(self.client.get_into(namespace, keys, buffers), [MISSING] * len(keys))

    def exists(self, namespace: TierNamespace, keys: Sequence[Key]) -> list[bool]:
        return self._run(self.client.exists(namespace, keys), [False] * len(keys))

    def longest_prefix(self, namespace: TierNamespace, keys: Sequence[Key]) -> int:
        return self._run(self.client.longest_prefix(namespace, keys), 0)

    def close(self) -> None:
        if self._loop.is_running():
            asyncio.run_coroutine_threadsafe(self.client.close(), self._loop).result(5.0)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5.0)
