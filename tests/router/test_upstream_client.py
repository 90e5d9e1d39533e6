"""The router's HTTP/1.1 upstream client against a real aiohttp server: keep-alive reuse, a pooled connection
the server closed meanwhile, chunked streams, timeouts, refused connections, early close."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from brixmesh.common.ports import free_port
from brixmesh.router.upstream import (
    StreamUsage,
    UpstreamConnectTimeout,
    UpstreamError,
    UpstreamPool,
    UpstreamTimeout,
    usage_of_body,
)


async def _json(request: web.Request) -> web.Response:
    body = await request.read()
    return web.Response(
        body=b'{"echo":' + body + b',"usage":{"prompt_tokens":3,"completion_tokens":2,'
        b'"total_tokens":5},"id":"' + request.headers["x-request-id"].encode() + b'"}',
        content_type="application/json",
    )


async def _stream(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={"content-type": "text/event-stream"})
    await response.prepare(request)
    for i in range(3):
        await response.write(f'data: {{"n":{i}}}\n\n'.encode())
        await asyncio.sleep(0.01)
    await response.write(
        b'data: {"choices":[],"usage":{"prompt_tokens":1,"completion_tokens":3,"total_tokens":4}}\n\n'
    )
    await response.write(b"data: [DONE]\n\n")
    await response.write_eof()
    return response


_LARGE = b'{"data":"' + b"x" * (3 << 20) + b'"}'


async def _large(request: web.Request) -> web.Response:
    return web.Response(body=_LARGE, content_type="application/json")


async def _slow(request: web.Request) -> web.Response:
    await asyncio.sleep(2)
    return web.Response(text="late")


async def _close(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={"content-type": "text/event-stream"})
    await response.prepare(request)
    await response.write(b"data: {}\n\n")
    request.transport.close()  # type: ignore[union-attr]
    return response


@pytest.fixture
async def server() -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_post("/json", _json)
    app.router.add_post("/stream", _stream)
    app.router.add_post("/slow", _slow)
    app.router.add_post("/large", _large)
    app.router.add_post("/close", _close)
    runner = web.AppRunner(app, keepalive_timeout=0.3)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield f"http://127.0.0.1:{port}"
    await runner.cleanup()


async def test_keep_alive_reuse_and_idle_connection_closed_by_the_server(server: str) -> None:
    url = server
    pool = UpstreamPool(connect_timeout_s=1, read_timeout_s=1)
    first = await pool.post(url, "/json", b"[1]", b"X-Request-Id: a\r\n")
    assert first.status == 200 and (await first.read()).startswith(b'{"echo":[1]')
    first.close()
    second = await pool.post(url, "/json", b"[2]", b"X-Request-Id: b\r\n")
    assert second._conn is first._conn and second._conn.reused  # same connection
    body = await second.read()
    assert (
        usage_of_body(body) is not None and usage_of_body(body).total_tokens == 5 and body.endswith(b'"b"}')
    )
    second.close()
    await asyncio.sleep(0.8)  # the server's keep-alive timeout closes the idle connection
    third = await pool.post(url, "/json", b"[3]", b"X-Request-Id: c\r\n")
    assert third.status == 200 and (await third.read()).startswith(b'{"echo":[3]')
    assert not third._conn.reused and pool.stale_retries == 0  # the pool had forgotten the closed one
    third.close()
    pool.close()


async def test_pooled_connection_closed_as_the_request_is_sent_is_retried_on_a_fresh_one() -> None:
    """The race the stale retry exists for: the engine closes an idle connection just as a request is written
    on it. This server answers the first request of each connection and closes the connection, unanswered, on
    its second, so the pool's idle connection is still open when it is reused."""
    connections: list[int] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(0)
        number = len(connections)
        while await reader.readuntil(b"\r\n\r\n"):
            await reader.readexactly(2)  # the body: b"{}"
            connections[number - 1] += 1
            if connections[number - 1] == 2:
                writer.close()
                return
            answer = f'{{"connection":{number}}}'.encode()
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
                         + str(len(answer)).encode() + b"\r\n\r\n" + answer)  # fmt: skip

    port = free_port()
    server = await asyncio.start_server(serve, "127.0.0.1", port)
    pool = UpstreamPool(connect_timeout_s=1, read_timeout_s=2)
    try:
        first = await pool.post(f"http://127.0.0.1:{port}", "/json", b"{}")
        assert await first.read() == b'{"connection":1}'
        first.close()
        second = await pool.post(f"http://127.0.0.1:{port}", "/json", b"{}")
        assert await second.read() == b'{"connection":2}'
        second.close()
        assert pool.stale_retries == 1 and connections == [2, 1]
    finally:
        pool.close()
        server.close()
        await server.wait_closed()


async def test_streamed_chunks_and_usage(server: str) -> None:
    url = server
    pool = UpstreamPool(connect_timeout_s=1, read_timeout_s=1)
    response = await pool.post(url, "/stream", b"{}")
    assert response.header(b"content-type") == b"text/event-stream"
    usage, data = StreamUsage(), b""
    while chunk := await response.next_chunk():
        usage.feed(chunk)
        data += chunk
    response.close()
    assert data.endswith(b"data: [DONE]\n\n") and data.count(b"data: ") == 5
    assert usage.result(0).completion_tokens == 3
    pool.close()


async def test_timeouts_refusals_and_early_close(server: str) -> None:
    url = server
    pool = UpstreamPool(connect_timeout_s=1, read_timeout_s=0.2)
    with pytest.raises(UpstreamTimeout):
        await pool.post(url, "/slow", b"{}")
    with pytest.raises(UpstreamError) as refused:
        await pool.post(f"http://127.0.0.1:{free_port()}", "/json", b"{}")
    assert not isinstance(refused.value, UpstreamConnectTimeout)
    response = await pool.post(url, "/close", b"{}")
    assert await response.next_chunk() == b"data: {}\n\n"
    with pytest.raises(UpstreamError):
        await response.next_chunk()
    response.close()
    with pytest.raises(UpstreamError):
        await pool.post("https://example.invalid", "/x", b"{}")
    pool.close()


async def test_non_streamed_body_larger_than_the_read_pause_threshold(server: str) -> None:
    """A 3 MiB JSON body: reading pauses past 1 MiB buffered; ``read()`` must keep draining, not wait for the
    read timeout with the socket paused."""
    pool = UpstreamPool(connect_timeout_s=1, read_timeout_s=2)
    response = await pool.post(server, "/large", b"{}")
    assert await asyncio.wait_for(response.read(), 10) == _LARGE
    response.close()
    pool.close()


async def test_on_sent_runs_once_while_the_engine_works_on_the_request() -> None:
    """The caller's bookkeeping runs after the request is written and before its answer is awaited: the
    engine here answers only once the callback ran (a callback after the head would never come)."""
    released = asyncio.Event()
    seen: list[bytes] = []

    async def gated(request: web.Request) -> web.Response:
        seen.append(await request.read())
        await asyncio.wait_for(released.wait(), 5)
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/gated", gated)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    pool = UpstreamPool(connect_timeout_s=1, read_timeout_s=5)
    calls: list[str] = []
    try:
        for body in (b"[1]", b"[2]"):  # a new connection, then a pooled one
            response = await pool.post(
                f"http://127.0.0.1:{port}", "/gated", body, on_sent=lambda: (calls.append("sent"), released.set())
            )
            assert (await response.read(), response.status) == (b"ok", 200)
            response.close()
            released.clear()
        assert calls == ["sent", "sent"] and seen == [b"[1]", b"[2]"]
    finally:
        pool.close()
        await runner.cleanup()
