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
    app.router.add_post("/close", _close)
    runner = web.AppRunner(app, keepalive_timeout=0.3)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield f"http://127.0.0.1:{port}"
    await runner.cleanup()


async def test_keep_alive_reuse_and_stale_connection_retry(server: str) -> None:
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
    third.close()
    pool.close()


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
