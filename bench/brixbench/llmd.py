"""llm-d's 8-pod precise-prefix-cache experiment, reproduced in simulation, next to llm-d's published table.

llm-d: 8 vLLM pods of Qwen3-32B (2 x H100 each, 307,328 KV tokens per pod); 150 groups x 5 prompts (system
6000 + question 1200 tokens, output 1000, ignore_eos) on a 3 -> 60 QPS ladder; schedulers precise (prefix from
KV events : KV util : queue = 3:2:2), approximate (1:1:1), load-only and random.

Here: 8 simulated H100 pods with the qwen3-32b profile; every length and the per-pod KV capacity shrunk by
``scale`` (so the prefix set fills the same share of the cache), the ladder's durations shrunk and its rates
scaled to what the smaller requests need to saturate the same fleet. The four schedulers map onto brixmesh
strategies with llm-d's weights: precise = ``kv-aware:3,least-kv-cache:2,least-request:2``, approximate =
``prefix-cache:1,least-kv-cache:1,least-request:1``, load-only = ``least-request``, random = ``random``; the
autoscaler runs beside the router so ``least-kv-cache`` sees every engine's KV usage (``metrics.pods.*``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from brixbench import arrivals
from brixbench.compare import ContenderRun, WorkloadCase
from brixbench.fleet import FleetSpec
from brixbench.report import markdown_table
from brixbench.text import TextSource
from brixbench.workloads import Job, llmd_shared_prefix

LLMD_KV_TOKENS_PER_POD = 307_328


@dataclass(frozen=True, slots=True)
class PublishedRow:
    scheduler: str
    output_tok_s: float
    ttft_p90_s: float
    ttft_mean_s: float
    mean_wait_queue: float


PUBLISHED: tuple[PublishedRow, ...] = (
    PublishedRow("precise", 8730, 0.54, 0.30, 0.1),
    PublishedRow("approximate", 6944, 31, 13.3, 8.1),
    PublishedRow("load-only", 4266, 95, 47, 28.9),
    PublishedRow("random", 4429, 93, 45, 27.3),
)

SCHEDULERS: dict[str, str] = {
    "precise": "brixmesh:kv-aware:3,least-kv-cache:2,least-request:2",
    "approximate": "brixmesh:prefix-cache:1,least-kv-cache:1,least-request:1",
    "load-only": "brixmesh:least-request",
    "random": "brixmesh:random",
}


def llmd_case(source: TextSource, *, scale: float = 0.1, ladder_time: float = 0.05, qps_scale: float = 1.0,
              time_scale: float = 4.0, seed: int = 0) -> WorkloadCase:
    prompts = llmd_shared_prefix(source, scale=scale, seed=seed)
    schedule = arrivals.stage_ladder(arrivals.LLMD_LADDER, seed=seed, qps_scale=qps_scale, time_scale=ladder_time)
    # llm-d's harness draws from the 750 prompts for as long as the ladder runs: cycle through them
    jobs = [Job(f"{prompts[i % len(prompts)].id}-r{i // len(prompts)}", prompts[i % len(prompts)].system,
                prompts[i % len(prompts)].turns, prompts[i % len(prompts)].max_tokens,
                group=prompts[i % len(prompts)].group) for i in range(len(schedule.offsets))]
    blocks = math.ceil(LLMD_KV_TOKENS_PER_POD * scale / 16)
    fleet = FleetSpec(engines=8, model_profile="qwen3-32b", time_scale=time_scale, num_gpu_blocks=blocks)
    return WorkloadCase(
        "llm-d-shared-prefix", jobs, schedule, fleet, engine_metrics_on_bus=True,
        description=(f"150 groups x 5 prompts at scale {scale:g} (system {round(6000 * scale)} + question "
                     f"{round(1200 * scale)} tokens, output {max(2, round(1000 * scale))}); llm-d ladder "
                     f"{len(jobs)} requests over {schedule.offsets[-1]:.0f} s (durations x{ladder_time:g}, "
                     f"rates x{qps_scale:g}); 8 x H100 qwen3-32b, {blocks} KV blocks/pod "
                     f"({LLMD_KV_TOKENS_PER_POD:,} tokens x {scale:g})"))


def side_by_side(runs: Sequence[ContenderRun]) -> str:
    by_contender = {run.contender: run for run in runs}
    header = ("scheduler", "brixmesh strategy", "out tok/s", "TTFT p90 s", "TTFT mean s", "mean wait queue",
              "llm-d out tok/s", "llm-d TTFT p90 s", "llm-d TTFT mean s", "llm-d wait queue")
    rows = []
    for published in PUBLISHED:
        contender = SCHEDULERS[published.scheduler]
        run = by_contender.get(contender)
        ours = ["n/a"] * 4
        if run is not None and run.result is not None:
            s, e = run.result.summary, run.result.engines
            ours = [f"{s.output_throughput:,.0f}", f"{s.ttft.p90:.2f}", f"{s.ttft.mean:.2f}", f"{e.mean_waiting:.1f}"]
        rows.append([published.scheduler, contender.removeprefix("brixmesh:"), *ours,
                     f"{published.output_tok_s:,.0f}", f"{published.ttft_p90_s:g}", f"{published.ttft_mean_s:g}",
                     f"{published.mean_wait_queue:g}"])
    return markdown_table(header, rows)


def ordering_holds(runs: Sequence[ContenderRun]) -> tuple[bool, str]:
    """llm-d's finding: precise > approximate > load-only ~ random, in throughput and in TTFT."""
    by = {name: next((r for r in runs if r.contender == c and r.result), None) for name, c in SCHEDULERS.items()}
    if any(run is None or run.result is None for run in by.values()):
        return False, "not every scheduler ran"
    out = {name: run.result.summary.output_throughput for name, run in by.items()}  # type: ignore[union-attr]
    ttft = {name: run.result.summary.ttft.mean for name, run in by.items()}  # type: ignore[union-attr]
    checks = [
        ("throughput precise > approximate", out["precise"] > out["approximate"]),
        ("throughput approximate > load-only, random", out["approximate"] > max(out["load-only"], out["random"])),
        ("TTFT precise < approximate", ttft["precise"] < ttft["approximate"]),
        ("TTFT approximate < load-only, random", ttft["approximate"] < min(ttft["load-only"], ttft["random"])),
    ]
    failed = [name for name, ok in checks if not ok]
    return not failed, "holds" if not failed else "fails: " + "; ".join(failed)
