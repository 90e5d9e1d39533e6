"""Smoke test of the real vLLM CPU engine fixture: HTTP API, metrics, KV events (live + replay), LoRA admin."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from pathlib import Path
from collections.abc import Iterator
from typing import Any

import httpx
import msgspec
import pytest
import zmq
import zmq.asyncio

from tests.plugins.vllm_engine import VllmEngine, published_block_hash, start_vllm_engine, vllm_block_digests

pytestmark = pytest.mark.vllm

REPLAY_END_SEQ = b"\xff" * 8
EVENT_WAIT_S = 15.0


def _client(engine: VllmEngine) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=engine.base_url, timeout=60.0)


async def _complete(
    client: httpx.AsyncClient, model: str, prompt: str, max_tokens: int = 8
) -> dict[str, Any]:
    body = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True}
    response = await client.post("/v1/completions", json=body)
    assert response.status_code == 200, response.text
    return response.json()


async def _tokenize(client: httpx.AsyncClient, engine: VllmEngine, **body: Any) -> list[int]:
    response = await client.post("/tokenize", json={"model": engine.model, **body})
    assert response.status_code == 200, response.text
    return response.json()["tokens"]


async def test_completion_chat_and_streaming(real_vllm: VllmEngine) -> None:
    async with _client(real_vllm) as client:
        completion = await _complete(client, real_vllm.model, "Hello world, this is a test")
        choice = completion["choices"][0]
        assert completion["object"] == "text_completion"
        assert choice["finish_reason"] == "length"
        assert completion["usage"]["completion_tokens"] == 8
        assert isinstance(choice["text"], str)

        chat = await client.post(
            "/v1/chat/completions",
            json={"model": real_vllm.model, "messages": [{"role": "user", "content": "hi"}],
                  "max_tokens": 6, "temperature": 0},
        )  # fmt: skip
        assert chat.status_code == 200, chat.text
        body = chat.json()
        assert body["object"] == "chat.completion"
        assert body["choices"][0]["message"]["role"] == "assistant"
        chat_ids = await _tokenize(client, real_vllm, messages=[{"role": "user", "content": "hi"}])
        assert chat_ids[:2] == [1, 4]  # <s> <|im_start|>: the ChatML template of the tiny tokenizer
        assert body["usage"]["prompt_tokens"] == len(chat_ids)

        streamed: list[str] = []
        events: list[str] = []
        request = {"model": real_vllm.model, "prompt": "Hello world, this is a test", "max_tokens": 8,
                   "temperature": 0, "ignore_eos": True, "stream": True}  # fmt: skip
        async with client.stream("POST", "/v1/completions", json=request) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            async for line in response.aiter_lines():
                if line.startswith("data: "):
                    events.append(line.removeprefix("data: "))
        assert events[-1] == "[DONE]"
        for event in events[:-1]:
            chunk = json.loads(event)
            assert chunk["object"] == "text_completion"
            streamed.append(chunk["choices"][0]["text"])
        assert "".join(streamed) == choice["text"]  # temperature 0 is deterministic


async def test_metrics_expose_kv_cache_usage(real_vllm: VllmEngine) -> None:
    async with _client(real_vllm) as client:
        response = await client.get("/metrics")
    assert response.status_code == 200
    usage_lines = [
        line for line in response.text.splitlines() if line.startswith("vllm:kv_cache_usage_perc{")
    ]
    assert usage_lines, "vllm:kv_cache_usage_perc missing from /metrics"
    assert f'model_name="{real_vllm.model}"' in usage_lines[0]
    assert 0.0 <= float(usage_lines[0].rsplit(" ", 1)[1]) <= 1.0


def _decode_batch(frames: list[bytes], topic: str) -> tuple[int, list[dict[str, Any]]]:
    assert len(frames) == 3, f"expected [topic, seq, payload], got {len(frames)} frames"
    assert frames[0] == topic.encode()
    assert len(frames[1]) == 8
    timestamp, events, dp_rank = msgspec.msgpack.decode(frames[2])
    assert isinstance(timestamp, float) and dp_rank == 0
    assert all(isinstance(event, dict) and "type" in event for event in events)
    return int.from_bytes(frames[1], "big"), events


@pytest.fixture
def zmq_context() -> Iterator[zmq.asyncio.Context]:
    context = zmq.asyncio.Context()
    yield context
    context.destroy(linger=0)


async def test_kv_events_live_and_replay_with_recomputable_hashes(
    real_vllm: VllmEngine, zmq_context: zmq.asyncio.Context
) -> None:
    context = zmq_context
    subscriber, second_subscriber = (context.socket(zmq.SUB) for _ in range(2))
    for sock in (subscriber, second_subscriber):  # the engine binds the ipc endpoint; any number may attach
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt_string(zmq.SUBSCRIBE, real_vllm.topic)
        sock.connect(real_vllm.kv_events_endpoint)
    try:
        await asyncio.sleep(0.5)  # let the subscription reach the publisher before the request runs
        # A fresh random prefix makes every block new, so the engine must announce all of them.
        prompt = f"{os.urandom(6).hex()} " + "the quick brown fox jumps over the lazy dog " * 12
        async with _client(real_vllm) as client:
            prompt_ids = await _tokenize(client, real_vllm, prompt=prompt)
            assert len(prompt_ids) >= 3 * real_vllm.block_size
            await _complete(client, real_vllm.model, prompt, max_tokens=1)

        expected = [
            published_block_hash(digest) for digest in vllm_block_digests(prompt_ids, real_vllm.block_size)
        ]
        published: list[int] = []
        live_seqs: list[int] = []
        async with asyncio.timeout(EVENT_WAIT_S):
            while not set(expected) <= set(published):
                seq, events = _decode_batch(await subscriber.recv_multipart(), real_vllm.topic)
                live_seqs.append(seq)
                for event in events:
                    if (
                        event["type"] == "BlockStored"
                        and event["token_ids"][: real_vllm.block_size] == prompt_ids[: real_vllm.block_size]
                    ):
                        assert event["block_size"] == real_vllm.block_size
                        assert event["parent_block_hash"] is None
                        assert len(event["token_ids"]) == real_vllm.block_size * len(event["block_hashes"])
                        published.extend(event["block_hashes"])
        assert published == expected
        assert live_seqs == list(range(live_seqs[0], live_seqs[0] + len(live_seqs)))
        async with asyncio.timeout(EVENT_WAIT_S):
            second_seqs = [
                _decode_batch(await second_subscriber.recv_multipart(), real_vllm.topic)[0] for _ in live_seqs
            ]
        assert second_seqs == live_seqs
    finally:
        subscriber.close()
        second_subscriber.close()

    replayed = await _replay_from(real_vllm, start_seq=0, context=context)
    assert [seq for seq, _ in replayed][:1] == [0]
    assert [seq for seq, _ in replayed] == list(range(len(replayed)))
    assert live_seqs[-1] < len(replayed)
    replayed_hashes = {
        block_hash
        for _, events in replayed
        for event in events
        if event["type"] == "BlockStored"
        for block_hash in event["block_hashes"]
    }
    assert set(expected) <= replayed_hashes


async def _replay_from(
    engine: VllmEngine, start_seq: int, context: zmq.asyncio.Context
) -> list[tuple[int, list[dict[str, Any]]]]:
    dealer = context.socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    dealer.connect(engine.kv_replay_endpoint)
    batches = []
    try:
        await dealer.send_multipart([b"", start_seq.to_bytes(8, "big")])
        async with asyncio.timeout(EVENT_WAIT_S):
            while True:
                frames = await dealer.recv_multipart()
                assert frames[0] == b""
                if frames[2] == REPLAY_END_SEQ:
                    return batches
                batches.append(_decode_batch(frames[1:], engine.topic))
    finally:
        dealer.close()


async def test_lora_load_serve_unload(real_vllm: VllmEngine) -> None:
    adapter = "smoke-lora-a"
    prompt = "Hello world, this is a test"
    async with _client(real_vllm) as client:
        load = {"lora_name": adapter, "lora_path": str(real_vllm.lora_dirs["lora-a"])}
        loaded = await client.post("/v1/load_lora_adapter", json=load)
        assert loaded.status_code == 200, loaded.text
        assert "added successfully" in loaded.text
        try:
            models = (await client.get("/v1/models")).json()["data"]
            cards = {card["id"]: card for card in models}
            assert cards[adapter]["parent"] == real_vllm.model

            again = await client.post("/v1/load_lora_adapter", json=load)
            assert again.status_code == 400
            assert again.json()["error"]["type"] == "InvalidUserInput"

            base_text = (await _complete(client, real_vllm.model, prompt))["choices"][0]["text"]
            lora_text = (await _complete(client, adapter, prompt))["choices"][0]["text"]
            assert lora_text != base_text
        finally:
            unloaded = await client.post("/v1/unload_lora_adapter", json={"lora_name": adapter})
        assert unloaded.status_code == 200, unloaded.text
        gone = await client.post(
            "/v1/completions", json={"model": adapter, "prompt": prompt, "max_tokens": 1}
        )
        assert gone.status_code == 404
        assert gone.json()["error"]["type"] == "NotFoundError"


def _group_alive(pgid: int) -> bool:
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            state, _ppid, pgrp = stat.read_text().rsplit(")", 1)[1].split()[:3]
            if int(pgrp) == pgid and state != "Z":
                return True
    return False


async def test_second_engine_is_independent_and_stops_cleanly(real_vllm: VllmEngine, tmp_path: Path) -> None:
    async with start_vllm_engine(log_dir=tmp_path) as second:
        assert {second.base_url, second.kv_events_endpoint, second.kv_replay_endpoint}.isdisjoint(
            {real_vllm.base_url, real_vllm.kv_events_endpoint, real_vllm.kv_replay_endpoint}
        )
        async with _client(second) as client, _client(real_vllm) as first_client:
            assert (await client.get("/health")).status_code == 200
            # A fresh engine's first batch of <= 4 tokens once killed its worker (SIGILL): vllm_site's hook.
            await _complete(client, second.model, "hi", max_tokens=1)
            prompt = "Hello world, this is a test"
            first_text = (await _complete(first_client, real_vllm.model, prompt))["choices"][0]["text"]
            assert (await _complete(client, second.model, prompt))["choices"][0]["text"] == first_text
        assert second.log_path.parent == tmp_path and second.log_path.is_file()
        assert _group_alive(second.pid)
    assert not _group_alive(second.pid)
    with pytest.raises(httpx.TransportError):
        async with _client(second) as client:
            await client.get("/health")
