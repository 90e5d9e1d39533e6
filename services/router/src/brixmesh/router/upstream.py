"""The HTTP client side: a small HTTP/1.1 keep-alive client to the engines, and usage extraction.

Why not aiohttp or httpx: on the router's hot path the client is most of the cost. Profiled at concurrency 64,
aiohttp's request machinery took ~240 us of CPU per proxied request (httpx more); this client writes the
request in one ``transport.write`` and parses with ``httptools`` (the parser uvicorn uses), ~40 us. It does
only what proxying to engines needs: POST with a body, content-length or chunked responses, a pool of idle
connections per engine, a connect timeout, a per-read timeout, an optional overall deadline per request, and a
stale pooled connection retried on a fresh one.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable
from urllib.parse import urlsplit

import httptools
import msgspec
from brixmesh.common.messages import PAYLOAD_ERRORS

from brixmesh.router.routing.context import Usage

_PAUSE_AT = 1 << 20


class UpstreamError(Exception):
    """The connection failed (refused, reset, closed early); retryable while nothing was relayed."""


class UpstreamConnectTimeout(UpstreamError):
    """No connection within the connect timeout: retryable like a refused connection."""


class UpstreamTimeout(Exception):
    """Connected, but the engine sent nothing for longer than the read timeout."""


class UpstreamDeadline(UpstreamTimeout):
    """The request's overall deadline passed before the engine's answer ended."""


class _Connection(asyncio.Protocol):
    def __init__(self, pool: UpstreamPool, key: tuple[str, int]) -> None:
        self.pool = pool
        self.key = key
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.reused = False
        self._reset()

    def _reset(self) -> None:
        self.status = 0
        self.headers: dict[bytes, bytes] = {}
        self.chunks: collections.deque[bytes] = collections.deque()
        self.buffered = 0
        self.headers_done = False
        self.keep_alive = False
        self.complete = False
        self.received_any = False
        self.error: Exception | None = None
        self.waiter: asyncio.Future[None] | None = None
        self.paused = False

    # --- asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.received_any = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self.error = UpstreamError(f"malformed response: {exc}")
            self.transport.close()  # type: ignore[union-attr]
        self._wake()

    def connection_lost(self, exc: Exception | None) -> None:
        self.pool.forget(self)
        if not self.complete and self.error is None:
            if self.headers_done and b"content-length" not in self.headers and not self._chunked():
                self.complete = True  # body delimited by the connection's end
            else:
                self.error = UpstreamError("connection closed by the engine" + (f": {exc}" if exc else ""))
        self.transport = None
        self._wake()

    # --- httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.lower()] = value

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        self.keep_alive = self.parser.should_keep_alive()  # only valid here, not after the message
        self.headers_done = True

    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)
        self.buffered += len(body)
        if self.buffered > _PAUSE_AT and not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()

    def on_message_complete(self) -> None:
        self.complete = True

    # --- helpers
    def _chunked(self) -> bool:
        return b"chunked" in self.headers.get(b"transfer-encoding", b"").lower()

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def wait(self, timeout_s: float, deadline: float | None) -> None:
        """Until the parser has news; UpstreamTimeout after ``timeout_s`` of silence, UpstreamDeadline at
        ``deadline`` (``time.monotonic()`` time) if that comes first."""
        error: UpstreamTimeout = UpstreamTimeout("the engine sent nothing in time")
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= timeout_s:
                timeout_s, error = max(0.0, left), UpstreamDeadline("the request's deadline passed")
        loop = asyncio.get_running_loop()
        self.waiter = waiter = loop.create_future()
        timer = loop.call_later(timeout_s, _expire, waiter, error)
        try:
            await waiter
        finally:
            timer.cancel()
            self.waiter = None

    def take(self) -> bytes:
        data = b"".join(self.chunks) if len(self.chunks) != 1 else self.chunks[0]
        self.chunks.clear()
        self.buffered = 0
        if self.paused and self.transport is not None:
            self.paused = False
            self.transport.resume_reading()
        return data


def _expire(waiter: asyncio.Future[None], error: UpstreamTimeout) -> None:
    if not waiter.done():
        waiter.set_exception(error)


class UpstreamResponse:
    """One response; ``close()`` must be called (it returns the connection to the pool when the response
    was read to its end, and drops it otherwise: the engine then sees the client gone and aborts)."""

    __slots__ = ("_conn", "_read_timeout_s", "_deadline", "status", "_closed")

    def __init__(self, conn: _Connection, read_timeout_s: float, deadline: float | None) -> None:
        self._conn = conn
        self._read_timeout_s = read_timeout_s
        self._deadline = deadline
        self.status = conn.status
        self._closed = False

    def header(self, name: bytes, default: bytes = b"") -> bytes:
        return self._conn.headers.get(name, default)

    async def next_chunk(self) -> bytes:
        """The next body bytes; ``b""`` at the end. Raises UpstreamError or UpstreamTimeout (or Deadline)."""
        conn = self._conn
        while not conn.chunks:
            if conn.complete:
                return b""
            if conn.error is not None:
                raise conn.error
            await conn.wait(self._read_timeout_s, self._deadline)
        self._check_deadline()
        return conn.take()

    async def read(self) -> bytes:
        """The whole body. What arrived is taken as it comes: reading pauses while too much is buffered
        (:meth:`_Connection.on_body`), so waiting for the end without taking would stall a large body."""
        conn = self._conn
        parts: list[bytes] = []
        while not conn.complete:
            if conn.error is not None:
                raise conn.error
            if conn.chunks:
                self._check_deadline()
                parts.append(conn.take())
                continue
            await conn.wait(self._read_timeout_s, self._deadline)
        if not parts:
            return conn.take()
        parts.append(conn.take())
        return b"".join(parts)

    def _check_deadline(self) -> None:
        """An engine that never stops sending is never waited for: the deadline is checked on data too."""
        if self._deadline is not None and time.monotonic() >= self._deadline:
            raise UpstreamDeadline("the request's deadline passed")

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        conn = self._conn
        if conn.complete and conn.error is None and conn.keep_alive and conn.transport is not None:
            self._conn.pool.release(conn)
        elif conn.transport is not None:
            conn.transport.close()


class UpstreamPool:
    def __init__(
        self, connect_timeout_s: float, read_timeout_s: float, max_idle_per_engine: int = 512
    ) -> None:
        self.connect_timeout_s = connect_timeout_s
        self.read_timeout_s = read_timeout_s
        self.max_idle_per_engine = max_idle_per_engine
        self._idle: dict[tuple[str, int], list[_Connection]] = {}
        self._targets: dict[str, tuple[str, int, bytes]] = {}
        self.stale_retries = 0
        """Requests sent again on a fresh connection because the pooled one was closed under them."""

    def _target(self, base_url: str) -> tuple[str, int, bytes]:
        found = self._targets.get(base_url)
        if found is None:
            parts = urlsplit(base_url)
            if parts.scheme != "http" or not parts.hostname:
                raise UpstreamError(f"unsupported engine URL {base_url!r} (http://host:port expected)")
            port = parts.port or 80
            found = self._targets[base_url] = (parts.hostname, port, f"{parts.hostname}:{port}".encode())
        return found

    async def post(
        self,
        base_url: str,
        path: str,
        body: bytes,
        extra_headers: bytes = b"",
        deadline: float | None = None,
        on_sent: Callable[[], None] | None = None,
    ) -> UpstreamResponse:
        """POST ``body`` (JSON) and wait for the response head. ``extra_headers``: ``b"Name: value\\r\\n"``
        lines. ``deadline`` (``time.monotonic()`` time; None: none) bounds the whole exchange.

        ``on_sent`` is called once, as soon as the request is written to a pooled connection (the caller's
        bookkeeping then runs while the engine works), or before waiting for a new connection: either way
        before this coroutine first yields, so no other request runs in between."""
        host, port, host_header = self._target(base_url)
        head = (
            b"POST "
            + path.encode()
            + b" HTTP/1.1\r\nHost: "
            + host_header
            + b"\r\nContent-Type: application/json\r\nContent-Length: "
            + str(len(body)).encode()
            + b"\r\n"
            + extra_headers
            + b"\r\n"
        )
        payload = head + body
        while True:
            conn = self._checkout((host, port))
            if conn is None:
                if on_sent is not None:
                    on_sent()
                    on_sent = None
                conn = await self._connect(host, port)
            conn._reset()
            conn.transport.write(payload)  # type: ignore[union-attr]
            if on_sent is not None:
                on_sent()
                on_sent = None
            try:
                while not conn.headers_done:
                    if conn.error is not None:
                        raise conn.error
                    await conn.wait(self.read_timeout_s, deadline)
            except UpstreamError:
                if conn.reused and not conn.received_any:
                    self.stale_retries += 1
                    continue  # the engine closed this idle connection meanwhile: try a fresh one
                raise
            except BaseException:
                if conn.transport is not None:
                    conn.transport.close()
                raise
            return UpstreamResponse(conn, self.read_timeout_s, deadline)

    def _checkout(self, key: tuple[str, int]) -> _Connection | None:
        idle = self._idle.get(key)
        while idle:
            conn = idle.pop()
            if conn.transport is not None and not conn.transport.is_closing():
                conn.reused = True
                return conn
        return None

    async def _connect(self, host: str, port: int) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            _transport, conn = await asyncio.wait_for(
                loop.create_connection(lambda: _Connection(self, (host, port)), host, port),
                self.connect_timeout_s,
            )
        except asyncio.TimeoutError:
            raise UpstreamConnectTimeout(
                f"no connection to {host}:{port} within {self.connect_timeout_s} s"
            ) from None
        except OSError as exc:
            raise UpstreamError(f"cannot connect to {host}:{port}: {exc.strerror or exc}") from None
        return conn

    def release(self, conn: _Connection) -> None:
        idle = self._idle.setdefault(conn.key, [])
        if len(idle) < self.max_idle_per_engine:
            idle.append(conn)
        elif conn.transport is not None:
            conn.transport.close()

    def forget(self, conn: _Connection) -> None:
        idle = self._idle.get(conn.key)
        if idle and conn in idle:
            idle.remove(conn)

    def close(self) -> None:
        for idle in self._idle.values():
            for conn in idle:
                if conn.transport is not None:
                    conn.transport.close()
        self._idle.clear()


# --- usage ------------------------------------------------------------------------------------------------


class _UsageOnly(msgspec.Struct):
    usage: Usage | None = None


_usage_decoder = msgspec.json.Decoder(_UsageOnly)


def usage_of_body(body: bytes) -> Usage | None:
    try:
        return _usage_decoder.decode(body).usage
    except PAYLOAD_ERRORS:
        return None


class StreamUsage:
    """Watches SSE bytes going by: keeps the ``usage`` chunk if the engine sends one (``include_usage``), else
    counts content events as a completion-token estimate. Cheap: only chunks mentioning usage are decoded."""

    __slots__ = ("events", "usage", "_tail")

    def __init__(self) -> None:
        self.events = 0
        self.usage: Usage | None = None
        self._tail = b""

    def feed(self, chunk: bytes) -> None:
        self.events += chunk.count(b"data: ")
        if b'"usage"' not in chunk and b'"usage"' not in self._tail + chunk[:16]:
            self._tail = chunk[-16:]
            return
        data = self._tail + chunk
        self._tail = chunk[-16:]
        for line in data.split(b"\n"):
            if line.startswith(b"data: {") and b'"usage"' in line:
                found = usage_of_body(line[6:])
                if found is not None:
                    self.usage = found

    def result(self, prompt_estimate: int) -> Usage:
        if self.usage is not None:
            return self.usage
        completion = max(0, self.events - 2)  # the role chunk and [DONE] carry no tokens
        return Usage(prompt_estimate, completion, prompt_estimate + completion)
