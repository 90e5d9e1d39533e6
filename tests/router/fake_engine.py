"""A minimal OpenAI-shaped engine (aiohttp, in a thread) for what the simulator does not do: a streamed chat
that answers with the ``traceparent`` header it received (and, given ``linger_s`` in the body, keeps the
connection that long after ``[DONE]``), embeddings, and a non-streamed completion whose body trickles in (one
piece per ``max_tokens``, 0.1 s apart)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections.abc import Iterator

from aiohttp import web

from brixmesh.common.ports import free_port


async def _embeddings(request: web.Request) -> web.Response:
    body = await request.json()
    return web.json_response(
        {
            "object": "list",
            "model": body["model"],
            "data": [{"object": "embedding", "index": 0, "embedding": [0.1, 0.2, 0.3, 0.4]}],
            "usage": {"prompt_tokens": 1, "total_tokens": 1},
        }
    )


async def _traceparent_chat(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={"content-type": "text/event-stream"})
    await response.prepare(request)
    content = request.headers.get("traceparent", "")
    chunk = {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": content}}]}
    await response.write(b"data: " + json.dumps(chunk).encode() + b"\n\ndata: [DONE]\n\n")
    await asyncio.sleep((await request.json()).get("linger_s", 0))
    await response.write_eof()
    return response


async def _trickled_completion(request: web.Request) -> web.StreamResponse:
    """Never silent for long, yet slow in total: what a per-read timeout alone never stops."""
    body = await request.json()
    response = web.StreamResponse(headers={"content-type": "application/json"})
    await response.prepare(request)
    await response.write(b'{"object":"text_completion","text":"')
    for _ in range(body["max_tokens"]):
        await asyncio.sleep(0.1)
        await response.write(b"x")
    await response.write(b'"}')
    await response.write_eof()
    return response


@contextlib.contextmanager
def fake_engine() -> Iterator[str]:
    port = free_port()
    loop = asyncio.new_event_loop()
    app = web.Application()
    app.router.add_post("/v1/embeddings", _embeddings)
    app.router.add_post("/v1/completions", _trickled_completion)
    app.router.add_post("/v1/chat/completions", _traceparent_chat)
    runner = web.AppRunner(app)
    loop.run_until_complete(runner.setup())
    loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", port).start())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(5)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()
