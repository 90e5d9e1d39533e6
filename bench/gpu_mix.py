"""GPU-mix benchmark: the optimizer's mix of simulated A10 and L20 engines against single-GPU-type fleets.

1. Profiles: ``brixmesh profile``'s sweep (``brixbench.profiling``) on one simulated engine per GPU type, for
   the length buckets of the workload (or ``--profiles DIR`` with ``<gpu>.json`` files it wrote).
2. Plans: the autoscaler's integer program (``brixmesh.autoscaler.gpu_plan.solve``) for the workload's rate
   per bucket, once with every GPU type (the mix) and once per type alone (each single-type fleet sized by the
   same profiles and SLO).
3. Runs: each planned fleet is started (simulated engines) and serves the same mixed workload, Poisson
   arrivals per shape; the mix routes each bucket's requests to GPU types in the plan's proportions, every
   fleet sends a request to the engine of the chosen type with the fewest requests in flight.

Reported per fleet: replicas, cost per hour, SLO attainment (share of requests with TTFT and TPOT within the
SLO) and the p90s. AIBrix's anchor: ~10 % cheaper for A10 + L20 than L20 alone, within the SLO.

Usage: ``.venv/bin/python bench/gpu_mix.py [--quick]``; the last line holds the headline figures.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
from brixbench.arrivals import OpenLoop
from brixbench.client import LoadClient
from brixbench.fleet import TOKENIZER_DIR, Fleet, FleetSpec
from brixbench.profiling import DEFAULT_COST_PER_HOUR, PROMPT_BOUNDARY_TOKENS, SweepSettings, profile_engine
from brixbench.stats import RequestRecord, percentile
from brixbench.text import TextSource, single_token_words
from brixbench.workloads import Job
from brixmesh.autoscaler.gpu_plan import Cell, GpuOption, Infeasible, Plan, capacity_from_profile, solve
from brixmesh.common.messages import GpuProfile, Slo
from brixmesh.common.shapes import bucket_tokens, length_bucket

MODEL = "sim-llama2-7b"
MODEL_PROFILE = "llama2-7b"
"""AIBrix's GPU-optimizer examples profile Llama-2-7B; its full-size KV cache (512 KiB per token) makes the
cache, where L20 holds ~4.5x what A10 holds, matter at a few requests per second."""
MAX_MODEL_LEN = 4096
GPUS = ("a10", "l20")
SLO = Slo(ttft_s=1.5, tpot_s=0.08, percentile=90)


@dataclass(frozen=True, slots=True)
class Shape:
    name: str
    input_tokens: int
    output_tokens: int
    rate: float
    """Requests per modelled second."""

    @property
    def cell(self) -> Cell:
        return length_bucket(self.input_tokens), length_bucket(self.output_tokens)


# Chat turns, retrieval-augmented questions (long prompt, short answer) and long generations: AIBrix's
# heterogeneous experiment mixed ShareGPT chat with Text2SQL (long prompts, short outputs) the same way.
WORKLOAD = (Shape("chat", 256, 32, 6.0), Shape("rag", 2048, 32, 1.0), Shape("writer", 256, 256, 3.0))


def workload_jobs(shapes: Sequence[Shape], duration_s: float, source: TextSource,
                  seed: int) -> tuple[list[Job], OpenLoop, dict[str, Cell]]:
    """Poisson arrivals per shape over ``duration_s``; lengths uniform in the upper half of each bucket."""
    rng = random.Random(seed)
    arrivals: list[tuple[float, Job]] = []
    cells: dict[str, Cell] = {}
    for shape in shapes:
        t = 0.0
        while True:
            t += rng.expovariate(shape.rate)
            if t > duration_s:
                break
            top_in, top_out = bucket_tokens(shape.cell[0]), bucket_tokens(shape.cell[1])
            n_in = rng.randint(top_in // 2 + 1, top_in - PROMPT_BOUNDARY_TOKENS)
            n_out = rng.randint(top_out // 2 + 1, top_out)
            job = Job(f"{shape.name}-{len(arrivals)}", "", (source.text(rng, n_in),), (n_out,))
            cells[job.prompt] = shape.cell
            arrivals.append((t, job))
    arrivals.sort(key=lambda pair: pair[0])
    return [job for _, job in arrivals], OpenLoop(tuple(t for t, _ in arrivals), "mixed poisson"), cells


class PlanTarget:
    """Sends each request's bucket to GPU types in the plan's proportions (smooth weighted round robin),
    then to the engine of that type with the fewest requests in flight."""

    def __init__(self, urls: dict[str, list[str]], plan: Plan, cells: dict[str, Cell]) -> None:
        self.urls = urls
        self.cells = cells
        self.weights = {cell: {g: r for g, r in split.items() if urls.get(g)}
                        for cell, split in plan.routing.items()}
        self.credit: dict[tuple[Cell, str], float] = {}
        self.in_flight = {url: 0 for group in urls.values() for url in group}

    def _gpu_for(self, cell: Cell) -> str:
        weights = self.weights.get(cell) or {g: 1.0 for g, group in self.urls.items() if group}
        total = sum(weights.values())
        for gpu, weight in weights.items():
            self.credit[cell, gpu] = self.credit.get((cell, gpu), 0.0) + weight
        chosen = max(weights, key=lambda g: self.credit[cell, g])
        self.credit[cell, chosen] -= total
        return chosen

    async def pick(self, body: dict[str, Any]) -> str:
        gpu = self._gpu_for(self.cells[body["prompt"]])
        url = min(self.urls[gpu], key=lambda u: self.in_flight[u])
        self.in_flight[url] += 1
        return url

    def release(self, base_url: str, body: dict[str, Any]) -> None:
        self.in_flight[base_url] -= 1


@dataclass(slots=True)
class FleetResult:
    label: str
    plan: Plan
    attainment: float
    ttft_p90_s: float
    tpot_p90_s: float
    requests: int
    failed: int


def in_use(plan: Plan) -> dict[str, int]:
    return {gpu: n for gpu, n in plan.replicas.items() if n}


def attainment(records: Sequence[RequestRecord], slo: Slo) -> float:
    met = sum(1 for r in records if r.ok and r.ttft_s is not None and r.ttft_s <= slo.ttft_s
              and (r.tpot_s is None or r.tpot_s <= slo.tpot_s))
    return met / len(records) if records else math.nan


async def profiles_for(shapes: Sequence[Shape], args: argparse.Namespace, source: TextSource,
                       workdir: Path) -> dict[str, GpuProfile]:
    if args.profiles:
        return {gpu: msgspec.json.decode((args.profiles / f"{gpu}.json").read_bytes(), type=GpuProfile)
                for gpu in GPUS}
    inputs, outputs = tuple(sorted({s.cell[0] for s in shapes})), tuple(sorted({s.cell[1] for s in shapes}))
    settings = SweepSettings(inputs, outputs, SLO, duration_s=args.profile_duration,
                             warmup_s=args.profile_duration / 3,
                             precision=args.precision, start_rate=2.0)
    found = {}
    for gpu in GPUS:
        spec = FleetSpec(engines=1, model=MODEL, gpu=gpu, model_profile=MODEL_PROFILE,
                         max_model_len=MAX_MODEL_LEN, time_scale=args.profile_time_scale, processes=1)
        fleet = await Fleet(spec, workdir / f"profile-{gpu}").start()
        try:
            started = time.monotonic()
            found[gpu] = await profile_engine(
                fleet.urls[0], MODEL, gpu, DEFAULT_COST_PER_HOUR[gpu], settings, source,
                time_scale=args.profile_time_scale, only=sorted({s.cell for s in shapes}),
                report=lambda line: print(f"  {gpu} {line}", flush=True))
            print(f"profiled {gpu} in {time.monotonic() - started:.0f}s", flush=True)
        finally:
            await fleet.stop()
        (workdir / f"{gpu}.json").write_bytes(msgspec.json.encode(found[gpu]))
    return found


async def serve(label: str, plan: Plan, jobs: list[Job], arrivals: OpenLoop, cells: dict[str, Cell],
                args: argparse.Namespace, workdir: Path) -> FleetResult:
    fleets: dict[str, Fleet] = {}
    workdir = workdir / label.replace(" ", "-")
    try:
        for gpu, count in plan.replicas.items():
            if count:
                spec = FleetSpec(engines=count, model=MODEL, gpu=gpu, model_profile=MODEL_PROFILE,
                                 max_model_len=MAX_MODEL_LEN, time_scale=args.time_scale, processes=1)
                fleets[gpu] = await Fleet(spec, workdir / gpu).start()
        target = PlanTarget({gpu: fleet.urls for gpu, fleet in fleets.items()}, plan, cells)
        client = LoadClient(MODEL, time_scale=args.time_scale)
        result = await client.run(jobs, arrivals, target)
    finally:
        for fleet in fleets.values():
            await fleet.stop()
    done = [r for r in result.records if r.ok]
    return FleetResult(label, plan, attainment(result.records, SLO),
                       percentile([r.ttft_s for r in done if r.ttft_s is not None], 90),
                       percentile([t for r in done if (t := r.tpot_s) is not None], 90),
                       len(result.records), len(result.records) - len(done))


def describe_profiles(profiles: dict[str, GpuProfile]) -> None:
    print(f"\nprofiles (max req/s per replica within p{SLO.percentile:g} TTFT <= {SLO.ttft_s * 1000:g} ms, "
          f"TPOT <= {SLO.tpot_s * 1000:g} ms):")
    for gpu, found in profiles.items():
        cells = ", ".join(f"in<={bucket_tokens(c.input_bucket)}/out<={bucket_tokens(c.output_bucket)} "
                          f"{c.max_rate:.2f}" for c in found.cells)
        print(f"  {gpu} ({found.cost_per_hour:.2f}/h): {cells}")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="shorter profiles and runs (under 10 minutes)")
    parser.add_argument("--profiles", type=Path, help="directory of <gpu>.json profiles (skips profiling)")
    parser.add_argument("--duration", type=float, help="modelled seconds of workload per fleet")
    parser.add_argument("--scale", type=float, default=1.0, help="multiplies every shape's rate")
    parser.add_argument("--time-scale", type=float, default=0.5, help="wall s per simulated s (the runs)")
    parser.add_argument("--profile-time-scale", type=float, default=0.25, help="the same while profiling")
    parser.add_argument("--out", type=Path, help="report folder (default bench/results/gpu-mix-<time>)")
    args = parser.parse_args()
    args.out = args.out or Path("bench/results", time.strftime("gpu-mix-%Y%m%d-%H%M%S"))
    args.duration = args.duration or (60.0 if args.quick else 180.0)
    args.profile_duration = 20.0 if args.quick else 40.0
    args.precision = 0.25 if args.quick else 0.1
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    shapes = [Shape(s.name, s.input_tokens, s.output_tokens, s.rate * args.scale) for s in WORKLOAD]
    source = TextSource(single_token_words(TOKENIZER_DIR / "tokenizer.json"))
    profiles = await profiles_for(shapes, args, source, args.out)
    describe_profiles(profiles)

    load: dict[Cell, float] = {}
    for shape in shapes:
        load[shape.cell] = load.get(shape.cell, 0.0) + shape.rate
    options = [GpuOption(gpu, p.cost_per_hour, capacity_from_profile(p)) for gpu, p in profiles.items()]
    plans: dict[str, Plan] = {}
    for label, chosen in [("mix", options)] + [(f"{o.gpu} only", [o]) for o in options]:
        try:
            plans[label] = solve(load, chosen)
        except Infeasible as exc:
            print(f"{label}: no plan: {exc}")
    if "mix" not in plans:
        print("gpu_mix: the optimizer found no plan for the workload", flush=True)
        raise SystemExit(1)
    singles = {label: plan for label, plan in plans.items() if label != "mix"}
    best_single = min(singles, key=lambda label: singles[label].cost_per_hour) if singles else None
    print("\nworkload: " + ", ".join(f"{s.name} in<={bucket_tokens(s.cell[0])}/out<="
                                     f"{bucket_tokens(s.cell[1])} {s.rate:g}/s" for s in shapes))
    for label, plan in plans.items():
        print(f"plan {label}: {plan.describe()}")

    jobs, arrivals, cells = workload_jobs(shapes, args.duration, source, seed=1)
    to_run = ["mix"] + ([best_single] if best_single else [])
    if "l20 only" in plans and "l20 only" not in to_run and not args.quick:
        to_run.append("l20 only")
    results = []
    for label in to_run:
        if label != "mix" and in_use(plans[label]) == in_use(plans["mix"]):
            continue  # the same fleet: the mix run stands for it
        print(f"serving {len(jobs)} requests with {label}: {plans[label].describe()}", flush=True)
        results.append(await serve(label, plans[label], jobs, arrivals, cells, args, args.out))

    table = [f"{'fleet':<14}{'replicas':<22}{'cost/h':>8}{'SLO attained':>14}{'TTFT p90':>10}{'TPOT p90':>10}"
             f"{'failed':>8}"]
    for r in results:
        mix = " + ".join(f"{n}x{g}" for g, n in sorted(r.plan.replicas.items()) if n)
        table.append(f"{r.label:<14}{mix:<22}{r.plan.cost_per_hour:>8.2f}{r.attainment:>14.1%}"
                     f"{r.ttft_p90_s * 1000:>8.0f}ms{r.tpot_p90_s * 1000:>8.1f}ms{r.failed:>8}")
    print("\n" + "\n".join(table))
    mix_result = results[0]
    single = next((r for r in results[1:] if r.label == best_single), None)
    if best_single is None:
        single_text, saving = "no single type can serve it", math.nan
    else:
        attained = f"SLO {single.attainment:.1%}" if single else "the same fleet as the mix"
        single_text = f"best single type {plans[best_single].describe()}, {attained}"
        saving = 1 - mix_result.plan.cost_per_hour / plans[best_single].cost_per_hour
    l20 = plans.get("l20 only")
    vs_l20 = 1 - mix_result.plan.cost_per_hour / l20.cost_per_hour if l20 else math.nan
    headline = (f"gpu_mix: mix {mix_result.plan.describe()}, SLO {mix_result.attainment:.1%} | {single_text} "
                f"| saving {saving:.1%} vs best single type, {vs_l20:.1%} vs L20 only "
                f"(AIBrix: ~10% vs L20 only)")
    (args.out / "summary.txt").write_text("\n".join([*table, headline, ""]))
    print(f"({time.monotonic() - started:.0f}s; profiles and summary.txt in {args.out})")
    print(headline, flush=True)


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        sys.exit(130)
