"""Scheduler + KV cache step loop: chunked prefill, budgets, preemption of the newest, prefix hits."""

from __future__ import annotations

from brixmesh.engine_sim.hashing import BlockHasher
from brixmesh.engine_sim.kv_cache import KvCacheManager
from brixmesh.engine_sim.request import SimRequest, Status
from brixmesh.engine_sim.scheduler import Scheduler, SchedulerLimits
from brixmesh.engine_sim.textgen import TokenStream


def make_request(rid: str, prompt: list[int], max_tokens: int = 4, **kw) -> SimRequest:
    return SimRequest(rid, prompt, max_tokens, TokenStream(prompt, 2048, 6, 5), 0.0, **kw)


def make_scheduler(
    num_blocks: int = 64, block_size: int = 16, max_seqs: int = 8, budget: int = 64, max_model_len: int = 4096
) -> Scheduler:
    kv = KvCacheManager(num_blocks, block_size, BlockHasher("sha256", seed="0"))
    return Scheduler(SchedulerLimits(max_seqs, budget, max_model_len), kv)


def run_to_completion(s: Scheduler, limit: int = 10_000) -> int:
    steps = 0
    while s.has_work and steps < limit:
        step = s.schedule(float(steps))
        s.finish_step(step, float(steps + 1))
        steps += 1
    return steps


def test_chunked_prefill_respects_token_budget() -> None:
    s = make_scheduler(budget=64)
    r = make_request("a", list(range(6, 6 + 150)), max_tokens=2)
    s.add(r)
    step = s.schedule(0.0)
    assert step.num_scheduled == {r: 64}
    assert step.shape.prefill_chunks == [(64, 0)]
    s.finish_step(step, 1.0)
    assert r.num_output_tokens == 0  # partial chunk: no token yet
    step = s.schedule(1.0)
    assert step.shape.prefill_chunks == [(64, 64)]
    s.finish_step(step, 2.0)
    step = s.schedule(2.0)
    assert step.num_scheduled[r] == 22
    result = s.finish_step(step, 3.0)
    assert result.first_tokens == [r] and r.num_output_tokens == 1
    step = s.schedule(3.0)
    assert step.shape.decode_contexts == [150]
    result = s.finish_step(step, 4.0)
    assert result.finished == [r] and r.finish_reason == "length"
    assert not s.has_work


def test_max_num_seqs_limits_running() -> None:
    s = make_scheduler(max_seqs=2, budget=1000)
    reqs = [make_request(str(i), [6 + i] * 10) for i in range(4)]
    for r in reqs:
        s.add(r)
    step = s.schedule(0.0)
    assert set(step.num_scheduled) == set(reqs[:2])
    assert len(s.waiting) == 2


def test_preempts_newest_when_blocks_run_out_and_recomputes() -> None:
    # 9 blocks (1 null) of 16 tokens = 128 tokens of KV; two 60-token prompts with long outputs overflow it.
    s = make_scheduler(num_blocks=9, block_size=16, budget=1000)
    first = make_request("first", [7] * 60, max_tokens=40)
    second = make_request("second", [8] * 60, max_tokens=40)
    s.add(first)
    s.add(second)
    preempted: list[SimRequest] = []
    steps = 0
    while s.has_work and steps < 500:
        step = s.schedule(float(steps))
        preempted += step.preempted
        s.finish_step(step, float(steps + 1))
        steps += 1
    assert preempted and all(p is second for p in preempted)
    assert s.num_preemptions == len(preempted)
    assert first.status is Status.FINISHED and second.status is Status.FINISHED
    assert first.num_output_tokens == 40 and second.num_output_tokens == 40
    assert second.num_preemptions >= 1
    assert s.kv.usage == 0.0


def test_prefix_hit_skips_cached_blocks() -> None:
    s = make_scheduler(budget=1000)
    prompt = list(range(6, 6 + 70))
    a = make_request("a", prompt, max_tokens=1)
    s.add(a)
    run_to_completion(s)
    b = make_request("b", prompt, max_tokens=1)
    s.add(b)
    step = s.schedule(10.0)
    # 4 full blocks cached (64 tokens); the remaining 6 are computed on top of them.
    assert b.num_cached_tokens == 64
    assert step.shape.prefill_chunks == [(6, 64)]


def test_abort_frees_blocks() -> None:
    s = make_scheduler()
    r = make_request("a", [9] * 40, max_tokens=100)
    s.add(r)
    s.finish_step(s.schedule(0.0), 1.0)
    assert s.kv.usage > 0
    assert s.abort(r)
    assert s.kv.usage == 0 and not s.has_work
    assert not s.abort(r)


def test_eos_stops_unless_ignored() -> None:
    s = make_scheduler()
    r = SimRequest(
        "a", [9] * 10, 50, TokenStream([9] * 10, 2048, 6, 5, eos_probability=1.0), 0.0, eos_token_id=5
    )
    s.add(r)
    run_to_completion(s)
    assert r.finish_reason == "stop" and r.output_token_ids == [5]
    r2 = SimRequest(
        "b",
        [9] * 10,
        3,
        TokenStream([9] * 10, 2048, 6, 5, eos_probability=1.0),
        0.0,
        eos_token_id=5,
        ignore_eos=True,
    )
    s.add(r2)
    run_to_completion(s)
    assert r2.finish_reason == "length" and r2.num_output_tokens == 3


def test_remote_prefill_waits_for_transfer_and_computes_one_token() -> None:
    s = make_scheduler(budget=1000)
    r = make_request("pd", [9] * 100, max_tokens=2, remote_prefill=True, ready_time=5.0)
    s.add(r)
    assert s.schedule(1.0).is_empty and s.num_deferred == 1
    step = s.schedule(5.0)
    assert step.num_scheduled[r] == 100
    assert step.shape.prefill_chunks == [(1, 99)]
    s.finish_step(step, 6.0)
    assert r.num_output_tokens == 1 and r.num_external_tokens == 99


def test_lora_slots_defer_extra_adapters() -> None:
    kv = KvCacheManager(64, 16, BlockHasher("sha256", seed="0"))
    s = Scheduler(SchedulerLimits(8, 1000, 4096, max_loras=1), kv)
    a = make_request("a", [9] * 10, lora_name="x", lora_path="/x", lora_int_id=1)
    b = make_request("b", [9] * 10, lora_name="y", lora_path="/y", lora_int_id=2)
    c = make_request("c", [9] * 10)
    for r in (a, b, c):
        s.add(r)
    step = s.schedule(0.0)
    assert set(step.num_scheduled) == {a, c}
    assert list(s.waiting) == [b] and s.num_deferred == 1


def test_same_prompt_same_tokens() -> None:
    one = TokenStream([1, 2, 3], 2048, 6, 5, seed=0)
    two = TokenStream([1, 2, 3], 2048, 6, 5, seed=0)
    other = TokenStream([1, 2, 3], 2048, 6, 5, seed=0, adapter="lora")
    a = [one.next_token() for _ in range(20)]
    assert a == [two.next_token() for _ in range(20)]
    assert a != [other.next_token() for _ in range(20)]
    assert all(6 <= t < 2048 for t in a)
