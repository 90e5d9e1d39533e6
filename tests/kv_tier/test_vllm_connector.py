"""Acceptance with real vLLM 0.32 engines (CPU) loading our KV-tier connector (``BrixTierConnector``) and a
real tier node (``python -m brixmesh.kv_index.tier``):

- engine A serves a long prompt and saves its blocks in the tier; engine B, which never saw the prompt, loads
  them: B's own counters show the loaded tokens and fewer computed ones, and its temperature-0 output equals
  A's;
- the blocks an engine saved are announced on its KV event stream as ``BlockStored`` with medium ``CPU``;
- a hung tier (stopped) is a miss: B computes what it would have loaded, nothing waits on the tier;
- the tier killed while B loads A's prompts and A computes others: every request completes, B's outputs
  still equal A's (loaded or recomputed), and later requests are computed without the tier.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import msgspec
import pytest
import pytest_asyncio
import zmq
import zmq.asyncio

from brixmesh.common.ports import free_port
from brixmesh.common.servers import NatsServer
from brixmesh.common.vllm_cpu import tier_kv_transfer_config
from tests.plugins.vllm_engine import VllmEngine, published_block_hash, vllm_block_digests, vllm_engines
from tests.service_proc import ServiceProcess, service_process
from tests.waiting import eventually

pytestmark = [pytest.mark.vllm, pytest.mark.asyncio(loop_scope="module")]

PROMPT_ITEMS = 60  # ~550 tokens of the tiny tokenizer: 17 full blocks of 32
REQUEST_TIMEOUT_S = 60.0
"""Generous for two busy cores; a hang (a step waiting on a dead tier) would exceed it."""
BY_SOURCE = re.compile(r'^vllm:prompt_tokens_by_source_total\{[^}]*source="(\w+)"[^}]*\} ([0-9.e+]+)$', re.M)
TIER_BLOCKS = re.compile(r"^brixmesh_kv_tier_blocks ([0-9.e+]+)$", re.M)


def long_prompt() -> str:
    """A prompt no other test sent (the tier and the engines' caches outlive one test)."""
    tag = uuid.uuid4().hex[:8]
    return f"{tag} " + " ".join(f"item{i} beta gamma" for i in range(PROMPT_ITEMS))


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def tier(
    nats_server: NatsServer, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[tuple[ServiceProcess, str]]:
    """One tier node for the module: (its process, its block-protocol address)."""
    port = free_port()
    log = tmp_path_factory.mktemp("kv-tier") / "kv-tier.log"
    settings = {"BRIXMESH_TIER_PORT": str(port), "BRIXMESH_TIER_MEMORY_MB": "64"}
    async with service_process("brixmesh.kv_index.tier", nats_server.url, log, settings) as process:
        yield process, f"127.0.0.1:{port}"


@pytest.fixture(scope="module")
def engines(
    tier: tuple[ServiceProcess, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[VllmEngine]]:
    """Engines A and B, both with the connector on the module's tier. Budgets generous for a busy CI box (a
    lookup timing out would make the tier a miss); a dead tier is retried after 1 s."""
    config = tier_kv_transfer_config(
        [tier[1]], lookup_timeout_ms=1000, load_timeout_ms=5000, retry_after_ms=1000
    )
    log_dir = tmp_path_factory.mktemp("vllm-tier")
    with vllm_engines(2, extra_args=["--kv-transfer-config", config], log_dir=log_dir) as started:
        yield started


async def prompt_tokens_by_source(client: httpx.AsyncClient, engine: VllmEngine) -> dict[str, float]:
    text = (await client.get(f"{engine.base_url}/metrics")).text
    return {source: float(value) for source, value in BY_SOURCE.findall(text)}


async def complete(client: httpx.AsyncClient, engine: VllmEngine, prompt: str) -> tuple[str, int]:
    body = {"model": engine.model, "prompt": prompt, "max_tokens": 12, "temperature": 0, "ignore_eos": True}
    response = await client.post(f"{engine.base_url}/v1/completions", json=body, timeout=REQUEST_TIMEOUT_S)
    assert response.status_code == 200, response.text
    reply = response.json()
    return reply["choices"][0]["text"], reply["usage"]["prompt_tokens"]


async def tier_blocks(client: httpx.AsyncClient, tier: ServiceProcess) -> float:
    match = TIER_BLOCKS.search((await client.get(f"{tier.url}/metrics")).text)
    return float(match.group(1)) if match else 0.0


async def test_fresh_engine_loads_a_prompt_another_engine_computed(
    engines: list[VllmEngine], tier: tuple[ServiceProcess, str]
) -> None:
    engine_a, engine_b = engines
    prompt = long_prompt()
    async with httpx.AsyncClient() as client:
        before_a = await tier_blocks(client, tier[0])
        text_a, prompt_tokens = await complete(client, engine_a, prompt)
        full_blocks = prompt_tokens // 32
        # A's saves are asynchronous: B is asked once they are all in the tier.
        await eventually(lambda: _at_least(client, tier[0], before_a + full_blocks), timeout_s=20)

        before = await prompt_tokens_by_source(client, engine_b)
        text_b, _ = await complete(client, engine_b, prompt)
        after = await prompt_tokens_by_source(client, engine_b)

    loaded = after["external_kv_transfer"] - before["external_kv_transfer"]
    computed = after["local_compute"] - before["local_compute"]
    # Every full block but one token's worth is loaded: the last prompt token is always computed.
    assert loaded == (prompt_tokens - 1) // 32 * 32
    assert computed == prompt_tokens - loaded
    assert text_b == text_a


async def _at_least(client: httpx.AsyncClient, tier: ServiceProcess, blocks: float) -> bool:
    return await tier_blocks(client, tier) >= blocks


async def cpu_blocks_announced(engine: VllmEngine) -> set[int]:
    """Block hashes the engine announced with medium CPU and did not withdraw: its events replayed from 0."""
    held: set[int] = set()
    context = zmq.asyncio.Context()
    dealer = context.socket(zmq.DEALER)
    dealer.connect(engine.kv_replay_endpoint)
    try:
        await dealer.send_multipart([b"", (0).to_bytes(8, "big")])
        while (frames := await asyncio.wait_for(dealer.recv_multipart(), 10))[2] != b"\xff" * 8:
            for event in msgspec.msgpack.decode(frames[3])[1]:
                if event.get("medium") == "CPU" and event["type"] == "BlockStored":
                    held.update(event["block_hashes"])
                elif event.get("medium") == "CPU" and event["type"] == "BlockRemoved":
                    held.difference_update(event["block_hashes"])
    finally:
        dealer.close(linger=0)
        context.term()
    return held


async def test_saved_blocks_are_announced_as_cpu_kv_events(
    engines: list[VllmEngine], tier: tuple[ServiceProcess, str]
) -> None:
    engine_a = engines[0]
    prompt = long_prompt()
    async with httpx.AsyncClient() as client:
        held = await tier_blocks(client, tier[0])
        _, prompt_tokens = await complete(client, engine_a, prompt)
        await eventually(lambda: _at_least(client, tier[0], held + prompt_tokens // 32), timeout_s=20)
        await complete(client, engine_a, "hi")  # a step after the puts finished reports them
        body = {"model": engine_a.model, "prompt": prompt}
        tokenized = await client.post(f"{engine_a.base_url}/tokenize", json=body)
    saved = {published_block_hash(digest) for digest in vllm_block_digests(tokenized.json()["tokens"], 32)}
    assert saved <= await cpu_blocks_announced(engine_a)


async def test_a_hung_tier_is_a_miss_not_a_stall(
    engines: list[VllmEngine], tier: tuple[ServiceProcess, str]
) -> None:
    engine_a, engine_b = engines
    prompt = long_prompt()
    async with httpx.AsyncClient() as client:
        held = await tier_blocks(client, tier[0])
        text_a, prompt_tokens = await complete(client, engine_a, prompt)
        await eventually(lambda: _at_least(client, tier[0], held + prompt_tokens // 32), timeout_s=20)
        before = await prompt_tokens_by_source(client, engine_b)
        os.killpg(tier[0].process.pid, signal.SIGSTOP)  # holds the blocks, answers nothing
        try:
            text_b, _ = await complete(client, engine_b, prompt)
            assert (await complete(client, engine_a, long_prompt()))[0]
        finally:
            os.killpg(tier[0].process.pid, signal.SIGCONT)
        after = await prompt_tokens_by_source(client, engine_b)
    # B's lookup timed out: it computed the prompt itself.
    assert after["external_kv_transfer"] == before["external_kv_transfer"]
    assert after["local_compute"] - before["local_compute"] == prompt_tokens
    assert text_b == text_a


async def test_engines_keep_serving_when_the_tier_is_killed_mid_run(
    engines: list[VllmEngine], tier: tuple[ServiceProcess, str]
) -> None:
    engine_a, engine_b = engines
    async with httpx.AsyncClient() as client:
        shared = [long_prompt() for _ in range(3)]
        held = await tier_blocks(client, tier[0])
        expected = [await complete(client, engine_a, prompt) for prompt in shared]
        blocks = sum(tokens // 32 for _, tokens in expected)
        await eventually(lambda: _at_least(client, tier[0], held + blocks), timeout_s=20)

        # B loading A's prompts and A computing new ones (looking up, saving) when the tier dies: whatever
        # was loaded or not, every request completes with the output it has without a tier.
        loading = [asyncio.create_task(complete(client, engine_b, prompt)) for prompt in shared]
        computing = [asyncio.create_task(complete(client, engine_a, long_prompt())) for _ in range(3)]
        os.killpg(tier[0].process.pid, signal.SIGKILL)
        await asyncio.to_thread(tier[0].process.wait)
        assert await asyncio.gather(*loading) == expected
        assert all(text for text, _ in await asyncio.gather(*computing))

        # Later requests recompute: B computes the whole prompt A served and answers the same.
        prompt = long_prompt()
        text_a, prompt_tokens = await complete(client, engine_a, prompt)
        before = await prompt_tokens_by_source(client, engine_b)
        text_b, _ = await complete(client, engine_b, prompt)
        after = await prompt_tokens_by_source(client, engine_b)
    assert after["external_kv_transfer"] == before["external_kv_transfer"]
    assert after["local_compute"] - before["local_compute"] == prompt_tokens
    assert text_b == text_a
