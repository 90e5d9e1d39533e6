"""Long-prompt P/D vs colocated across operating points, on the engine simulator's own model, in seconds.

The simulator's scheduler (vLLM v1's continuous batching with chunked prefill), KV cache and H100
roofline step times, driven by a discrete-event loop instead of HTTP engines: requests go to the
least-loaded engine (running + waiting), as the router's load balancing places them; a P/D request
prefills on a prefill engine (``max_tokens`` 1), its KV moves over the GPU's KV link, then it decodes on a
decode engine. The full fleet benchmark (``bench/pd.py``) takes minutes per point on a small host; this
sweeps rates, output lengths and chunk sizes (``max_num_batched_tokens``) to find where P/D's ITL gain
holds. Same workload as bench/pd.py's long-prompt one: 12-20k-token prompts, Poisson arrivals, 8 GPUs.

Usage: ``.venv/bin/python bench/pd_sweep.py [--rates 9,10] [--output-lens 128,256] [--budgets 2048,8192]
[--configs colocated,6P2D] [--duration 30]``; prints one markdown table row per point and configuration.
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import random
from dataclasses import dataclass, field

from brixmesh.engine_sim.hashing import BlockHasher
from brixmesh.engine_sim.kv_cache import KvCacheManager
from brixmesh.engine_sim.request import SimRequest
from brixmesh.engine_sim.scheduler import ScheduledStep, Scheduler, SchedulerLimits
from brixmesh.engine_sim.textgen import TokenStream
from brixmesh.engine_sim.timing import RooflineModel, gpu_profile, model_profile_named

GPUS = 8
BLOCK_SIZE = 16
VOCAB = 2048
MAX_MODEL_LEN = 32768
STEP_MODEL = RooflineModel(gpu_profile("h100"), model_profile_named("llama-8b"))


@dataclass(eq=False)
class SimEngine:
    scheduler: Scheduler
    step: ScheduledStep | None = None

    @property
    def load(self) -> int:
        return len(self.scheduler.running) + len(self.scheduler.waiting)


@dataclass
class Point:
    config: str
    ttfts: list[float] = field(default_factory=list)
    gaps: list[float] = field(default_factory=list)
    output_tokens: int = 0
    last_finish: float = 0.0


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def new_engine(budget: int) -> SimEngine:
    kv = KvCacheManager(STEP_MODEL.kv_cache_tokens() // BLOCK_SIZE, BLOCK_SIZE,
                        BlockHasher("sha256", seed="0"), enable_events=False)
    return SimEngine(Scheduler(SchedulerLimits(STEP_MODEL.gpu.max_num_seqs, budget, MAX_MODEL_LEN), kv))


def simulate(config: str, rate: float, output_len: int, budget: int, duration: float,
             seed: int = 0) -> Point:
    """``config``: ``colocated`` or ``<n>P<m>D``; every engine schedules with ``budget`` tokens a step."""
    rng = random.Random(seed)
    if config == "colocated":
        prefill, decode = [], [new_engine(budget) for _ in range(GPUS)]
    else:
        n, _, m = config.upper().rstrip("D").partition("P")
        prefill = [new_engine(budget) for _ in range(int(n))]
        decode = [new_engine(budget) for _ in range(int(m))]
    order = itertools.count()
    events: list[tuple[float, int, str, object]] = []
    arrival = 0.0
    for _ in range(round(rate * duration)):
        arrival += rng.expovariate(rate)
        events.append((arrival, next(order), "arrive", rng.randint(12000, 20000)))
    heapq.heapify(events)
    arrived: dict[str, float] = {}
    point = Point(config)

    def submit(engines: list[SimEngine], request: SimRequest, now: float) -> None:
        engine = min(engines, key=lambda e: e.load)
        engine.scheduler.add(request)
        start_step(engine, now)

    def start_step(engine: SimEngine, now: float) -> None:
        if engine.step is not None or not engine.scheduler.has_work:
            return
        engine.step = engine.scheduler.schedule(now)
        ends = now + STEP_MODEL.step_seconds(engine.step.shape)
        heapq.heappush(events, (ends, next(order), "step", engine))

    while events:
        now, _, kind, payload = heapq.heappop(events)
        if kind == "arrive":
            prompt = [rng.randrange(100, VOCAB) for _ in range(payload)]
            rid = f"r{len(arrived)}"
            arrived[rid] = now
            tokens = TokenStream(prompt, VOCAB, 6, None)
            if prefill:
                submit(prefill, SimRequest(rid, prompt, 1, tokens, now, ignore_eos=True), now)
            else:
                submit(decode, SimRequest(rid, prompt, output_len, tokens, now, ignore_eos=True), now)
        elif kind == "transferred":
            done: SimRequest = payload
            prompt = done.prompt_token_ids
            tokens = TokenStream(prompt, VOCAB, 6, None)
            submit(decode, SimRequest(done.request_id, prompt, output_len, tokens, now, ignore_eos=True,
                                      remote_prefill=True, ready_time=now), now)
        else:
            engine: SimEngine = payload
            step, engine.step = engine.step, None
            for request in engine.scheduler.finish_step(step, now).finished:
                if engine in prefill:
                    transfer_s = (request.num_prompt_tokens * STEP_MODEL.model.kv_bytes_per_token
                                  / (STEP_MODEL.gpu.kv_link_gbytes_s * 1e9))
                    heapq.heappush(events, (now + transfer_s, next(order), "transferred", request))
                    continue
                times = request.token_times
                point.ttfts.append(times[0] - arrived[request.request_id])
                point.gaps.extend(b - a for a, b in itertools.pairwise(times))
                point.output_tokens += len(times)
                point.last_finish = now
            start_step(engine, now)
    return point


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rates", default="9", help="requests/s, comma-separated")
    parser.add_argument("--output-lens", default="128", help="output tokens, comma-separated")
    parser.add_argument("--budgets", default="2048,4096,8192", help="max_num_batched_tokens, comma-separated")
    parser.add_argument("--configs", default="colocated,5P3D,6P2D", help="colocated and/or <n>P<m>D")
    parser.add_argument("--duration", type=float, default=30.0, help="modelled seconds of arrivals")
    args = parser.parse_args()
    print("| req/s | out tokens | chunk | config | TTFT p90 s | ITL p50 ms | ITL p90 ms | ITL p99 ms "
          "| out tok/s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for rate, output_len, budget in itertools.product(
            [float(r) for r in args.rates.split(",")], [int(n) for n in args.output_lens.split(",")],
            [int(b) for b in args.budgets.split(",")]):
        for config in args.configs.split(","):
            p = simulate(config, rate, output_len, budget, args.duration)
            print(f"| {rate:g} | {output_len} | {budget} | {config} | {percentile(p.ttfts, 0.9):.2f} | "
                  f"{percentile(p.gaps, 0.5) * 1000:.1f} | {percentile(p.gaps, 0.9) * 1000:.1f} | "
                  f"{percentile(p.gaps, 0.99) * 1000:.1f} | {p.output_tokens / p.last_finish:.0f} |",
                  flush=True)


if __name__ == "__main__":
    main()
