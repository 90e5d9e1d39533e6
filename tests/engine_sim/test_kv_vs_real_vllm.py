"""Differential test: the simulated KV cache emits exactly the events real vLLM 0.32 emits.

Requests run one at a time against the shared real engine (64 blocks x 32 tokens, sha256,
PYTHONHASHSEED=0) after ``POST /reset_prefix_cache``; the same token sequences (prompt + the engine's own
generated tokens) then go through ``KvCacheManager`` the way vLLM's scheduler drives it. The flat event
streams must be identical: hashes, parents, token ids, extra keys, duplicates and the eviction order.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import Any

import httpx
import msgspec
import pytest
import zmq
from brixmesh.engine_sim.hashing import BlockHasher
from brixmesh.engine_sim.kv_cache import KvCacheManager
from brixmesh.engine_sim.kv_event_types import encode_batch

pytestmark = pytest.mark.vllm

LORA = "lora-a"
QUIET_S = 0.5


@dataclass
class Req:
    request_id: str
    all_token_ids: list[int]
    num_computed_tokens: int = 0
    lora_name: str | None = None
    lora_path: str | None = None
    lora_int_id: int | None = None
    cache_salt: str | None = None
    num_preemptions: int = 0
    session_id: str | None = None


@dataclass
class Job:
    prompt: list[int]
    max_tokens: int
    lora: bool = False
    cache_salt: str | None = None
    session_id: str | None = None


def _workload() -> list[Job]:
    rng = random.Random(20261121)

    def tokens(n: int) -> list[int]:
        return [rng.randrange(10, 2000) for _ in range(n)]

    a, b = tokens(100), tokens(64)
    jobs = [
        Job(a, 40),  # prompt + generated blocks
        Job(a, 40),  # hit capped below the prompt end: the recomputed block is stored again (duplicate)
        Job(b, 1),  # exactly two blocks
        Job(b, 1),  # hits one block, stores the second again
        Job(a[:64] + tokens(80), 10),  # shares two blocks with a
        Job(tokens(70), 5, cache_salt="tenant-1"),
        Job(tokens(70), 5, lora=True),
        Job(tokens(40), 30, session_id="conversation-7"),
    ]
    jobs += [Job(tokens(300), 20) for _ in range(10)]  # ~100 blocks into a 63-block pool: eviction
    jobs += [Job(a, 40), Job(b, 1)]
    return jobs


def _drain(sub: zmq.Socket) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    while sub.poll(int(QUIET_S * 1000)):
        _, _, payload = sub.recv_multipart()
        events.extend(msgspec.msgpack.decode(payload)[1])
    return events


def _reset_and_join(client: httpx.Client, model: str, sub: zmq.Socket) -> None:
    """Resets the prefix cache until this subscriber sees the (lazily published) AllBlocksCleared."""
    for _ in range(20):
        if client.post("/reset_prefix_cache").status_code != 200:
            time.sleep(0.2)
            continue
        # A step without full blocks publishes just the pending AllBlocksCleared.
        probe = {"model": model, "prompt": [11, 12, 13], "max_tokens": 1, "temperature": 0}
        client.post("/v1/completions", json=probe).raise_for_status()
        if {"type": "AllBlocksCleared"} in _drain(sub):
            return
    raise AssertionError("never saw AllBlocksCleared after /reset_prefix_cache")


def _run_real(engine: Any, jobs: list[Job]) -> tuple[list[list[int]], list[dict[str, Any]], str]:
    lora_path = str(engine.lora_dirs[LORA])
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, engine.topic.encode())
    sub.setsockopt(zmq.LINGER, 0)
    sub.connect(engine.kv_events_endpoint)
    try:
        with httpx.Client(base_url=engine.base_url, timeout=120) as client:
            loaded = client.post("/v1/load_lora_adapter", json={"lora_name": LORA, "lora_path": lora_path})
            assert loaded.status_code in (200, 400), loaded.text  # 400: already loaded
            try:
                _reset_and_join(client, engine.model, sub)
                generated = [_complete(client, engine.model, job) for job in jobs]
                events = _drain(sub)
            finally:
                if loaded.status_code == 200:  # leave the shared engine as we found it
                    client.post("/v1/unload_lora_adapter", json={"lora_name": LORA})
    finally:
        ctx.destroy(linger=0)
    return generated, events, lora_path


def _complete(client: httpx.Client, model: str, job: Job) -> list[int]:
    body: dict[str, Any] = {
        "model": LORA if job.lora else model,
        "prompt": job.prompt,
        "max_tokens": job.max_tokens,
        "temperature": 0,
        "ignore_eos": True,
        "return_token_ids": True,
    }
    if job.cache_salt:
        body["cache_salt"] = job.cache_salt
    if job.session_id:
        body["session_id"] = job.session_id
    response = client.post("/v1/completions", json=body)
    response.raise_for_status()
    token_ids = response.json()["choices"][0]["token_ids"]
    assert len(token_ids) == job.max_tokens
    return token_ids


def _run_sim(jobs: list[Job], generated: list[list[int]], lora_path: str, lora_id: int | None) -> list[Any]:
    mgr = KvCacheManager(64, 32, BlockHasher("sha256", environ={"PYTHONHASHSEED": "0"}))
    for i, (job, output) in enumerate(zip(jobs, generated, strict=True)):
        req = Req(f"r{i}", list(job.prompt), cache_salt=job.cache_salt, session_id=job.session_id)
        if job.lora:
            req.lora_name, req.lora_path, req.lora_int_id = LORA, lora_path, lora_id
        req.num_computed_tokens = mgr.get_computed_blocks(req)
        assert mgr.allocate_slots(req, len(job.prompt) - req.num_computed_tokens)
        req.num_computed_tokens = len(job.prompt)
        # Every sampled token but the last is fed back and computed in the next step.
        for token in output[:-1]:
            req.all_token_ids.append(token)
            assert mgr.allocate_slots(req, 1)
            req.num_computed_tokens += 1
        mgr.free(req)
    events = mgr.take_events()
    return msgspec.msgpack.decode(encode_batch(events, 0.0, 0))[1]


def test_sequential_requests_produce_vllm_identical_events(real_vllm: Any) -> None:
    jobs = _workload()
    generated, real_events, lora_path = _run_real(real_vllm, jobs)
    lora_ids = {e["lora_id"] for e in real_events if e.get("lora_name") == LORA}
    assert len(lora_ids) == 1
    sim_events = _run_sim(jobs, generated, lora_path, lora_ids.pop())

    # The workload exercises what the comparison is about.
    stored = [h for e in real_events if e["type"] == "BlockStored" for h in e["block_hashes"]]
    removed = [h for e in real_events if e["type"] == "BlockRemoved" for h in e["block_hashes"]]
    assert len(removed) > 10 and len(set(stored)) < len(stored)
    assert any(e.get("extra_keys") == [["tenant-1"], None] for e in real_events)
    assert any(e.get("lora_name") == LORA for e in real_events)
    assert any(e.get("session_id") == "conversation-7" for e in real_events)
    assert all(e["type"] != "AllBlocksCleared" for e in real_events)

    assert len(sim_events) == len(real_events)
    for index, (ours, theirs) in enumerate(zip(sim_events, real_events, strict=True)):
        assert ours == theirs, f"event {index} differs"
