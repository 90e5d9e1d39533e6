"""Differential test: the simulated KV cache emits exactly the events a live real vLLM 0.32 emits.

Requests from ``kv_differential.workload()`` run one at a time against the shared real engine after
``POST /reset_prefix_cache``; their token sequences (prompt + the engine's own generated tokens) then go
through ``KvCacheManager``. The flat event streams must be identical: hashes, parents, token ids, extra
keys, LoRA and session fields, duplicates and the eviction order.

``BRIXMESH_RECORD_KV_DIFFERENTIAL=<file>`` also saves the run (the offline test replays
``tests/fixtures/vllm-0.32-cpu/kv_sequential_run.json`` recorded this way).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
import zmq

from tests.engine_sim.kv_differential import LORA, Job, Recording, assert_same_events, workload

pytestmark = pytest.mark.vllm

QUIET_S = 0.5


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


def _record(engine: Any, jobs: list[Job]) -> Recording:
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
    lora_ids = {e["lora_id"] for e in events if e.get("lora_name") == LORA}
    assert len(lora_ids) == 1, lora_ids
    meta = {
        "vllm": "0.32.0 (CPU)",
        "block_size": 32,
        "num_gpu_blocks": 64,
        "hash": "sha256, PYTHONHASHSEED=0",
    }
    return Recording(jobs, generated, events, lora_path, lora_ids.pop(), meta)


def test_sequential_requests_produce_vllm_identical_events(real_vllm: Any) -> None:
    recording = _record(real_vllm, workload())
    target = os.environ.get("BRIXMESH_RECORD_KV_DIFFERENTIAL")
    if target:
        recording.save(Path(target))
    assert_same_events(recording)
