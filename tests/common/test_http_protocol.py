"""The head-holding HTTP protocol: a response head joins the next write, and nothing is lost or reordered."""

from __future__ import annotations

import asyncio
import socket

import httpx
import pytest
import uvicorn

from brixmesh.common.http_protocol import HeadHoldingHttpToolsProtocol, HeadHoldingTransport

HEAD = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n"


class RecordingTransport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))

    def writelines(self, lines: tuple[bytes, ...]) -> None:
        self.writes.append(b"".join(lines))  # one syscall (writev) in the real transport

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def get_write_buffer_size(self) -> int:
        return 0

    def get_extra_info(self, name: str) -> str:
        return f"info:{name}"


async def test_a_head_is_joined_to_the_body_that_follows() -> None:
    inner = RecordingTransport()
    transport = HeadHoldingTransport(inner, asyncio.get_running_loop())  # type: ignore[arg-type]
    transport.write(HEAD)
    assert inner.writes == []
    assert transport.get_write_buffer_size() == len(HEAD)
    transport.write(b"hello")
    assert inner.writes == [HEAD + b"hello"]
    await asyncio.sleep(0)  # the scheduled flush finds nothing left to send
    assert inner.writes == [HEAD + b"hello"]


async def test_a_head_alone_leaves_in_the_next_loop_iteration() -> None:
    inner = RecordingTransport()
    transport = HeadHoldingTransport(inner, asyncio.get_running_loop())  # type: ignore[arg-type]
    transport.write(HEAD)
    await asyncio.sleep(0)
    assert inner.writes == [HEAD]
    transport.write(b"later")
    assert inner.writes == [HEAD, b"later"]


async def test_other_writes_pass_through_and_close_flushes() -> None:
    inner = RecordingTransport()
    transport = HeadHoldingTransport(inner, asyncio.get_running_loop())  # type: ignore[arg-type]
    transport.write(b"5\r\nchunk\r\n")
    assert inner.writes == [b"5\r\nchunk\r\n"]
    transport.write(HEAD)
    transport.close()
    assert inner.writes == [b"5\r\nchunk\r\n", HEAD]
    assert inner.closed
    assert transport.get_extra_info("peername") == "info:peername"


async def _app(scope: dict, receive: object, send: object) -> None:
    if scope["type"] != "http":
        return
    path = scope["path"]
    if path == "/plain":
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"5")]})
        await send({"type": "http.response.body", "body": b"hello"})
    elif path == "/empty":
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})
    else:  # a stream whose head goes out before its first chunk exists
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        await asyncio.sleep(0.05)
        for part in (b"one ", b"two ", b"three"):
            await send({"type": "http.response.body", "body": part, "more_body": True})
        await send({"type": "http.response.body", "body": b""})


@pytest.fixture
async def server_url() -> object:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(_app, http=HeadHoldingHttpToolsProtocol, log_config=None, lifespan="off")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        await asyncio.sleep(0.01)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    server.should_exit = True
    await task


async def test_responses_arrive_whole_over_a_real_socket(server_url: str) -> None:
    async with httpx.AsyncClient(base_url=server_url) as client:
        for _ in range(3):  # keep-alive: the connection's next response is not disturbed by a held head
            plain = await client.get("/plain")
            assert (plain.status_code, plain.content) == (200, b"hello")
            empty = await client.get("/empty")
            assert (empty.status_code, empty.content) == (204, b"")
        async with client.stream("GET", "/stream") as streamed:
            assert streamed.status_code == 200  # the head came before any chunk was sent
            assert b"".join([part async for part in streamed.aiter_bytes()]) == b"one two three"
