"""Engine simulator fidelity and density benchmark.

1. H100 + llama-8b profile: TTFT for 1k/4k-token prompts and decode step times at batch 1/32/128 (2k context),
   from the step-time model and measured end to end through a running simulator, next to the reference
   figures (published H100 llama-8b step times).
2. Density: how many simulated engines (``--replicas N`` in one process pinned to one core) keep real time
   while each serves 10 req/s (Poisson, 256-token prompts, 64 output tokens).

Usage: ``.venv/bin/python bench/engine_sim_fidelity.py [--quick]``. Prints a table; exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import sys
import time

import httpx
from brixbench.simulator import simulator
from brixmesh.engine_sim.timing import RooflineModel, StepShape, gpu_profile, model_profile_named

REFERENCE = {"ttft_1k": 0.032, "ttft_4k": 0.130, "b1": 0.0072, "b32": 0.0105, "b128": 0.0205}


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux /proc)."""
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def stream_timings(c: httpx.AsyncClient, url: str, prompt: list[int], max_tokens: int) -> list[float]:
    """Arrival times of each streamed token, relative to the send."""
    started = time.perf_counter()
    times: list[float] = []
    body = {"prompt": prompt, "max_tokens": max_tokens, "ignore_eos": True, "stream": True}
    async with c.stream("POST", f"{url}/v1/completions", json=body) as response:
        async for line in response.aiter_lines():
            if line.startswith("data: {"):
                times.append(time.perf_counter() - started)
    return times


# Streaming 128 concurrent token streams in real time is more than one core of Python can send and parse;
# the clock is slowed by this factor and client-side times divided by it (what --time-scale is for).
FIDELITY_TIME_SCALE = 4.0


async def measure_fidelity() -> dict[str, float]:
    """Client-observed TTFT and decode gaps, in model seconds."""
    out: dict[str, float] = {}
    args = [
        "--gpu",
        "h100",
        "--model-profile",
        "llama-8b",
        "--max-model-len",
        "8192",
        "--block-size",
        "16",
        "--time-scale",
        str(FIDELITY_TIME_SCALE),
    ]
    with simulator(args) as (_, (url,)):
        limits = httpx.Limits(max_connections=500, max_keepalive_connections=500)
        async with httpx.AsyncClient(timeout=300, limits=limits) as c:
            await stream_timings(c, url, [7] * 16, 2)  # warm-up
            for name, n in (("ttft_1k", 1024), ("ttft_4k", 4096)):
                samples = []
                for _ in range(5):
                    prompt = [random.randrange(6, 2048) for _ in range(n)]
                    samples.append((await stream_timings(c, url, prompt, 1))[0])
                out[name] = statistics.median(samples) / FIDELITY_TIME_SCALE
            for name, batch in (("b1", 1), ("b32", 32), ("b128", 128)):
                prompts = [[random.randrange(6, 2048) for _ in range(2048)] for _ in range(batch)]
                runs = await asyncio.gather(*(stream_timings(c, url, p, 128) for p in prompts))
                # Full-batch pure decode only: after the last stream's first token (no prefill chunk co-batched)
                # and before the first stream ends. Mean gap per stream (single gaps bunch up client-side).
                all_decoding = max(t[0] for t in runs)
                first_end = min(t[-1] for t in runs)
                windows = [[x for x in t if all_decoding < x < first_end] for t in runs]
                gaps = [(w[-1] - w[0]) / (len(w) - 1) for w in windows if len(w) > 8]
                out[name] = statistics.median(gaps) / FIDELITY_TIME_SCALE
    return out


def model_figures() -> dict[str, float]:
    m = RooflineModel(gpu_profile("h100"), model_profile_named("llama-8b"))
    return {
        "ttft_1k": m.step_seconds(StepShape([(1024, 0)], [])),
        "ttft_4k": m.step_seconds(StepShape([(4096, 0)], [])),
        "b1": m.step_seconds(StepShape([], [2048])),
        "b32": m.step_seconds(StepShape([], [2048] * 32)),
        "b128": m.step_seconds(StepShape([], [2048] * 128)),
    }


async def drive(urls: list[str], rate: float, seconds: float) -> tuple[list[float], int]:
    """Poisson arrivals at ``rate`` req/s per engine; returns e2e latencies and the error count."""
    latencies: list[float] = []
    errors = 0
    limits = httpx.Limits(max_connections=2000, max_keepalive_connections=2000)
    async with httpx.AsyncClient(timeout=60, limits=limits) as c:

        async def one(url: str) -> None:
            nonlocal errors
            prompt = [random.randrange(6, 2048) for _ in range(256)]
            started = time.perf_counter()
            try:
                r = await c.post(
                    f"{url}/v1/completions", json={"prompt": prompt, "max_tokens": 64, "ignore_eos": True}
                )
                if r.status_code == 200:
                    latencies.append(time.perf_counter() - started)
                else:
                    errors += 1
            except httpx.HTTPError:
                errors += 1

        async def engine_load(url: str) -> None:
            tasks = []
            end = time.perf_counter() + seconds
            while time.perf_counter() < end:
                tasks.append(asyncio.create_task(one(url)))
                await asyncio.sleep(random.expovariate(rate))
            await asyncio.gather(*tasks)

        await asyncio.gather(*(engine_load(u) for u in urls))
    return latencies, errors


async def stats(urls: list[str]) -> list[dict]:
    async with httpx.AsyncClient(timeout=30) as c:
        return [(await c.get(f"{u}/admin/stats")).json() for u in urls]


async def density(
    counts: list[int], seconds: float
) -> list[tuple[int, float, float, int, float, float, bool]]:
    """Per trial: (engines, p50 e2e, p50 vs one engine, errors, sim CPU cores, engine lag share, keeps up).

    An engine keeps up when host overhead delays its steps by less than 5% of its modelled busy time.
    """
    rows = []
    baseline = None
    args = ["--gpu", "h100", "--model-profile", "llama-8b", "--num-gpu-blocks-override", "4096"]
    for n in counts:
        with simulator([*args, "--replicas", str(n)], cpu=0) as (pid, urls):
            await drive(urls, 10.0, 1.0)  # warm-up
            before = await stats(urls)
            cpu_before, wall_before = cpu_seconds(pid), time.perf_counter()
            latencies, errors = await drive(urls, 10.0, seconds)
            cores = (cpu_seconds(pid) - cpu_before) / (time.perf_counter() - wall_before)
            after = await stats(urls)
        lag = sum(a["lag_seconds"] - b["lag_seconds"] for a, b in zip(after, before, strict=True))
        busy = sum(a["busy_seconds"] - b["busy_seconds"] for a, b in zip(after, before, strict=True))
        lag_share = lag / busy if busy else 0.0
        p50 = statistics.median(latencies) if latencies else float("inf")
        baseline = baseline or p50
        ok = errors == 0 and lag_share < 0.05
        rows.append((n, p50, p50 / baseline, errors, cores, lag_share, ok))
        if not ok:
            break
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shorter density trials")
    parser.add_argument("--no-density", action="store_true", help="only the fidelity table")
    args = parser.parse_args()
    random.seed(0)
    model = model_figures()
    measured = asyncio.run(measure_fidelity())
    print(
        f"H100 / llama-8b            reference   model      measured(e2e)  measured/reference"
        f"   (clock slowed {FIDELITY_TIME_SCALE:g}x, times in model seconds)"
    )
    labels = {
        "ttft_1k": "TTFT 1k prompt",
        "ttft_4k": "TTFT 4k prompt",
        "b1": "decode step b1@2k",
        "b32": "decode step b32@2k",
        "b128": "decode step b128@2k",
    }
    for key, label in labels.items():
        ref = REFERENCE[key]
        print(
            f"{label:<26} {ref * 1000:8.1f} ms {model[key] * 1000:7.1f} ms {measured[key] * 1000:9.1f} ms"
            f"     {measured[key] / ref:6.2f}"
        )
    if args.no_density:
        return 0
    counts = [1, 2, 4, 8, 12, 16] if args.quick else [1, 2, 4, 8, 12, 16, 24, 32]
    if hasattr(os, "sched_setaffinity") and len(os.sched_getaffinity(0)) > 1:
        os.sched_setaffinity(0, os.sched_getaffinity(0) - {0})  # keep the load generator off the sim's core
    rows = asyncio.run(density(counts, 3.0 if args.quick else 6.0))
    print(
        "\nengines on core 0 @10 req/s   p50 e2e   vs 1 engine   errors   sim CPU (cores)   step lag   keeps up"
    )
    for n, p50, ratio, errors, cores, lag_share, ok in rows:
        print(
            f"{n:>5}                        {p50 * 1000:7.1f} ms   {ratio:6.2f}      {errors:5d}"
            f"     {cores:6.2f}          {lag_share * 100:5.1f}%    {ok}"
        )
    sustained = max((n for n, *_, ok in rows if ok), default=0)
    print(
        f"\none core sustains {sustained} simulated engines at 10 req/s each (step lag < 5% of modelled time)"
    )
    per_engine = [cores / n for n, _, _, _, cores, _, ok in rows if ok and n >= 4]
    if per_engine:
        print(
            f"simulator CPU per engine at 10 req/s: {min(per_engine):.3f} cores "
            f"(~{1 / min(per_engine):.0f} engines per core if the load generator were elsewhere)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
