"""The workload cases of ``brixmesh bench compare`` (full and ``--quick``) and of the tiny test run.

Sizes are chosen so that cache placement decides the outcome: the shared prefixes of all groups do not fit
in one engine's KV cache but do fit in the fleet's, so a router that keeps each group on one engine keeps its
prefix hot while a router that spreads a group everywhere evicts and recomputes it.
"""

from __future__ import annotations

import random
from dataclasses import replace

from brixmesh.common import vllm_cpu

from brixbench import arrivals
from brixbench.compare import WorkloadCase
from brixbench.fleet import FleetSpec
from brixbench.stats import Slo
from brixbench.text import TextSource
from brixbench.workloads import Job, multi_turn, shared_prefix

SLO = Slo(ttft_s=0.5, tpot_s=0.05)
VLLM_SLO = Slo(ttft_s=0.5, tpot_s=0.1)
"""The tiny model on two shared CPU cores: wall seconds."""


def shared_prefix_case(source: TextSource, *, engines: int = 8, groups: int = 32, per_group: int = 8,
                       system_len: int = 2048, question_len: int = 128, output_len: int = 64,
                       qps: float = 100.0, time_scale: float = 10.0, seed: int = 0) -> WorkloadCase:
    jobs = shared_prefix(source, groups=groups, prompts_per_group=per_group, system_len=system_len,
                         question_len=question_len, output_len=output_len, seed=seed)
    blocks_per_prefix = system_len // 16 + 1
    # one engine holds about half of all prefixes, plus room for the requests running on it
    capacity = max(64, groups * blocks_per_prefix // 2 + 8 * (system_len + question_len + output_len) // 16)
    fleet = FleetSpec(engines=engines, time_scale=time_scale, num_gpu_blocks=capacity)
    return WorkloadCase("shared-prefix", jobs, arrivals.poisson(qps, len(jobs), seed), fleet, SLO,
                        f"{groups} groups x {per_group} prompts, system {system_len} + question {question_len} "
                        f"tokens, output {output_len}; Poisson {qps:g} req/s; KV {capacity} blocks/engine")


def multi_turn_case(source: TextSource, *, engines: int = 8, sessions: int = 48, turn_len_mean: float = 300,
                    turn_len_std: float = 100, output_len: int = 32, session_qps: float = 32.0,
                    time_scale: float = 10.0, seed: int = 0) -> WorkloadCase:
    jobs = multi_turn(source, sessions=sessions, turn_len_mean=turn_len_mean, turn_len_std=turn_len_std,
                      max_turn_len=int(turn_len_mean * 4), output_len=output_len, seed=seed)
    history_blocks = sum(
        sum(len(turn.split(" ")) + output_len for turn in job.turns) // 16 + 1 for job in jobs)
    capacity = max(64, history_blocks // 2)
    fleet = FleetSpec(engines=engines, time_scale=time_scale, num_gpu_blocks=capacity)
    turns = sum(len(job.turns) for job in jobs)
    return WorkloadCase("multi-turn", jobs, arrivals.poisson(session_qps, len(jobs), seed), fleet, SLO,
                        f"{sessions} sessions, {turns} turns (N(3.55, 2.89)), Pareto turns mean {turn_len_mean:g} "
                        f"tokens, output {output_len}, history resent; sessions Poisson {session_qps:g}/s; "
                        f"KV {capacity} blocks/engine")


def quick_cases(source: TextSource) -> list[WorkloadCase]:
    return [shared_prefix_case(source, groups=16, per_group=8, system_len=4096, question_len=256, output_len=32,
                               qps=250.0, time_scale=8.0),
            multi_turn_case(source, sessions=32, turn_len_mean=800, turn_len_std=250, output_len=16,
                            session_qps=48.0, time_scale=8.0)]


def full_cases(source: TextSource) -> list[WorkloadCase]:
    return [shared_prefix_case(source, groups=64, per_group=16, system_len=2048, question_len=128,
                               output_len=128, qps=60.0),
            multi_turn_case(source, sessions=200, turn_len_mean=600, turn_len_std=200, output_len=64,
                            session_qps=20.0)]


def tiny_cases(source: TextSource) -> list[WorkloadCase]:
    """Two engines, a handful of requests: keeps the pipeline working in ``make test``."""
    return [shared_prefix_case(source, engines=2, groups=2, per_group=3, system_len=64, question_len=16,
                               output_len=4, qps=20.0, time_scale=2.0)]


def with_fleet(case: WorkloadCase, *, engines: int | None = None, time_scale: float | None = None) -> WorkloadCase:
    fleet = case.fleet
    if engines is not None:
        fleet = replace(fleet, engines=engines)
    if time_scale is not None:
        fleet = replace(fleet, time_scale=time_scale)
    return replace(case, fleet=fleet)


def conversations(source: TextSource, *, sessions: int, systems: int, system_len: int, turn_len_mean: float,
                  max_turns: int, output_len: int, seed: int) -> list[Job]:
    """Multi-turn sessions (history resent) sharing system prompts: session i uses system ``i % systems``."""
    rng = random.Random(seed + 1)
    prompts = [source.text(rng, system_len) for _ in range(systems)]
    jobs = multi_turn(source, sessions=sessions, turn_len_mean=turn_len_mean, turn_len_std=turn_len_mean / 3,
                      max_turn_len=int(turn_len_mean * 2), output_len=output_len, seed=seed)
    return [replace(job, system=prompts[i % systems], turns=job.turns[:max_turns],
                    max_tokens=job.max_tokens[:max_turns]) for i, job in enumerate(jobs)]


def one_off_prompts(source: TextSource, *, count: int, length: int, output_len: int, seed: int) -> list[Job]:
    """Long prompts that share nothing with anything (they only take cache space from the conversations)."""
    rng = random.Random(seed + 2)
    return [Job(f"long{i}", "", (source.text(rng, length),), (output_len,), api="chat", group=f"long{i}")
            for i in range(count)]


TINY_CPU_TIMING = ("--perf-model", "per-token", "--inter-token-latency", "12", "--prefill-overhead", "100",
                   "--prefill-time-per-token", "0.05")
"""The simulator's step times set to what the two real engines measured *in this benchmark*, sharing two
busy cores with the client and the routers (TTFT mean 140-300 ms, TPOT p50 2-40 ms); an idle engine is
5-10x faster (reference: 20 ms TTFT, 4 ms per token), and with those times every router looked alike (the
engines never held a queue). ``--engine vllm-sim`` runs the real-engine cases on it."""


def vllm_multi_turn_case(source: TextSource, *, sessions: int = 40, blocks: int = 64,
                         session_qps: float = 2.0, long_prompts: int = 0, engines: int = 2,
                         simulated: bool = False,
                         seed: int = 0) -> WorkloadCase:
    jobs = conversations(source, sessions=sessions, systems=4, system_len=192, turn_len_mean=60, max_turns=6,
                         output_len=16, seed=seed)
    name = "multi-turn"
    what = f"{sessions} sessions (4 shared system prompts of 192 tokens, <= 6 turns of ~60)"
    if long_prompts:
        extra = one_off_prompts(source, count=long_prompts, length=700, output_len=16, seed=seed)
        jobs = [*jobs, *extra]
        random.Random(seed).shuffle(jobs)
        name, what = "mixed", f"{what} + {long_prompts} one-off 700-token prompts"
    if blocks < 64:
        name += f"-{blocks}-blocks"
    fleet = FleetSpec(engines=engines, model=vllm_cpu.MODEL_NAME, engine="sim" if simulated else "vllm",
                      model_profile="tiny-llama", time_scale=1.0, block_size=vllm_cpu.BLOCK_SIZE,
                      num_gpu_blocks=blocks, max_model_len=vllm_cpu.MAX_MODEL_LEN, processes=1,
                      extra_args=TINY_CPU_TIMING if simulated else ())
    turns = sum(len(job.turns) for job in jobs)
    return WorkloadCase(name, jobs, arrivals.poisson(session_qps, len(jobs), seed), fleet, VLLM_SLO,
                        f"{'simulated' if simulated else 'real'} vLLM x {engines}: {what}, {turns} requests, "
                        f"output 16; Poisson {session_qps:g} "
                        f"sessions/s; KV {blocks} blocks of {vllm_cpu.BLOCK_SIZE} tokens/engine")


def vllm_cases(quick: bool = False, simulated: bool = False) -> list[WorkloadCase]:
    """Real vLLM CPU engines (two, one per core), or ``simulated`` ones with the same KV geometry and speeds:
    the working set of live conversations is about one engine's cache and a half, so placement decides what
    stays cached."""
    from brixbench.fleet import TOKENIZER_DIR
    from brixbench.text import single_token_words

    source = TextSource(single_token_words(TOKENIZER_DIR / "tokenizer.json"))
    sessions = 24 if quick else 40
    cases = [vllm_multi_turn_case(source, sessions=sessions, simulated=simulated),
             vllm_multi_turn_case(source, sessions=sessions, long_prompts=sessions // 4, simulated=simulated)]
    if not quick:
        cases.append(vllm_multi_turn_case(source, sessions=sessions, blocks=40, simulated=simulated))
    return cases
