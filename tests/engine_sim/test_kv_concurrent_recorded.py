"""The simulator's scheduler + KV cache replay a recorded concurrent real vLLM 0.32 run step by step.

``tests/fixtures/vllm-0.32-cpu/kv_concurrent*_run.json`` come from ``scripts/record_vllm_kv_run.py``: 32
requests handed to vLLM at once (64 x 32 block cache, so continuous batching, chunked prefill and
preemption with recompute all happen). Given the same requests and the engine's own output tokens, every
engine step must publish the same KV event batch as vLLM did: same stores, evictions, duplicates, order.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgspec
import pytest
from brixmesh.engine_sim.hashing import BlockHasher
from brixmesh.engine_sim.kv_cache import KvCacheManager
from brixmesh.engine_sim.kv_event_types import encode_batch
from brixmesh.engine_sim.request import SimRequest
from brixmesh.engine_sim.scheduler import Scheduler, SchedulerLimits

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "vllm-0.32-cpu"
# kv_concurrent_lora_run: every third request on lora-a, every seventh on lora-b, max_loras 1.
RUNS = ["kv_concurrent_run.json", "kv_concurrent_lora_run.json"]


class _Output:
    """The i-th sampled token is the i-th token the real engine returned, however often it is recomputed."""

    def __init__(self, tokens: list[int]) -> None:
        self._tokens = tokens
        self._next = 0

    def next_token(self) -> int:
        token = self._tokens[self._next]
        self._next += 1
        return token


def _simulate(run: dict[str, Any]) -> tuple[list[list[dict[str, Any]]], Scheduler, KvCacheManager]:
    meta = run["meta"]
    kv = KvCacheManager(
        meta["num_gpu_blocks"], meta["block_size"], BlockHasher("sha256", environ={"PYTHONHASHSEED": "0"})
    )
    limits = SchedulerLimits(
        meta["max_num_seqs"], meta["max_num_batched_tokens"], meta["max_model_len"], meta.get("max_loras", 0)
    )
    scheduler = Scheduler(limits, kv)
    adapters = meta.get("adapters", {})
    for i, (job, output) in enumerate(zip(run["jobs"], run["generated"], strict=True)):
        lora = job.get("lora")
        request = SimRequest(
            request_id=f"r{i}",
            prompt_token_ids=job["prompt"],
            max_tokens=job["max_tokens"],
            tokens=_Output(output),  # type: ignore[arg-type]
            arrival_time=0.0,
            ignore_eos=True,
            lora_name=lora,
            lora_path=adapters[lora]["lora_path"] if lora else None,
            lora_int_id=adapters[lora]["lora_int_id"] if lora else None,
        )
        scheduler.add(request)
    batches: list[list[dict[str, Any]]] = []
    now = 0.0
    while scheduler.has_work:
        now += 0.01
        scheduler.finish_step(scheduler.schedule(now), now)
        events = kv.take_events()
        if events:
            batches.append(msgspec.msgpack.decode(encode_batch(events, now, 0))[1])
    return batches, scheduler, kv


@pytest.mark.parametrize("name", RUNS)
def test_concurrent_run_publishes_the_same_batches_as_vllm(name: str) -> None:
    run = json.loads((FIXTURES / name).read_text(encoding="utf-8"))
    real = [batch[1] for batch in run["batches"]]
    ours, scheduler, _ = _simulate(run)

    assert scheduler.num_preemptions > 0  # the run is under memory pressure, not just a cache exercise
    removed = [h for batch in real for e in batch if e["type"] == "BlockRemoved" for h in e["block_hashes"]]
    assert len(set(removed)) < len(removed)  # duplicates stored and removed twice
    assert len(ours) == len(real)
    for index, (sim_batch, real_batch) in enumerate(zip(ours, real, strict=True)):
        assert sim_batch == real_batch, f"batch {index} differs"


@pytest.mark.parametrize("name", RUNS)
def test_concurrent_run_counts_prefix_cache_and_preemptions_like_vllm(name: str) -> None:
    run = json.loads((FIXTURES / name).read_text(encoding="utf-8"))
    _, scheduler, kv = _simulate(run)
    counters = run["meta"]["counters"]
    assert kv.counters.queries == counters["vllm:prefix_cache_queries"]
    assert kv.counters.hits == counters["vllm:prefix_cache_hits"]
    assert scheduler.num_preemptions == counters["vllm:num_preemptions"]
