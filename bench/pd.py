"""P/D benchmark: prefill/decode disaggregation at several ratios against colocated serving, same GPUs.

One simulated fleet (8 x H100, Llama-3.1-8B profile, chunked prefill at 2048 tokens a step: ``--chunk``)
runs every configuration: the engines are ``kv_both`` NixlConnector engines (transfer time modelled from
the H100's 400G KV link), and the router sees them as a different deployment per configuration (one model
name each): ``colocated`` (every engine serves whole requests; ``prefix-cache:3,least-request:2``) and
``<n>P<m>D`` (n prefill pods, m decode pods; strategy ``pd``). Workloads, Poisson arrivals, the same for
every configuration:

- long-prompt: 12-20k-token prompts (token ids: the simulators' CPU goes to the engines, not to
  tokenising), 128 output tokens, 9 requests/s (70 % of the colocated fleet's prefill capacity),
  for 20 modelled seconds (``--quick``) or 60;
- multi-turn: AIBrix-style conversations (turns ~ N(3.55, 2.89), Pareto turn lengths), history resent,
  2 conversations/s, for 8 modelled seconds (``--quick``) or 30.

Reported per workload and configuration (modelled seconds): TTFT p50/p90, inter-token latency p90 and p99
(every gap between streamed chunks, pooled), output throughput, goodput (requests/s meeting TTFT <= 2 s
and TPOT <= 50 ms), failures, and the engines' lag (simulated seconds the simulators fell behind their
modelled timeline because the host's CPU was busy: large values make every latency worse than modelled).
Target: P/D cuts ITL p90 at least 2x at equal throughput on the long-prompt workload. ``bench/pd_sweep.py``
runs the same comparison on the simulator's model without HTTP, across rates, output lengths and chunk sizes
(docs/pd.md has its table: the p90 target holds with 2048-token chunks, not with vLLM's H100 default 8192).

Usage: ``.venv/bin/python bench/pd.py [--quick]``; the last line holds the headline figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from brixbench.arrivals import poisson
from brixbench.client import FixedTarget, LoadClient
from brixbench.fleet import TOKENIZER_DIR, Fleet, FleetSpec
from brixbench.stats import Slo, Summary
from brixbench.text import TextSource, single_token_words
from brixbench.workloads import Job, multi_turn
from brixmesh.common.ports import free_port
from brixmesh.common.servers import NatsServer
from brixmesh.common.supervisor import ProcessSpec, ReadinessProbe, SupervisedProcess

ENGINES = 8
SLO = Slo(ttft_s=2.0, tpot_s=0.05)
COLOCATED = "colocated"
COLOCATED_STRATEGY = "prefix-cache:3,least-request:2"
# Long-prompt runs need ~12 modelled seconds of arrivals before a colocated engine's decodes meet prefill
# chunks in steady state (every engine holding a prefill most of the time): 8 s runs measured mostly the
# empty fleet's start, where a colocated decode rarely shares a step with a chunk (ITL p90 11 vs 75 ms).
LONG_PROMPT_S_QUICK = 20.0
LONG_PROMPT_S = 60.0
KV_TRANSFER = {
    "kv_connector": "NixlConnector",
    "kv_role": "kv_both",
    "kv_connector_extra_config": {"sim_transfer": "modelled"},
}


@dataclass(frozen=True, slots=True)
class Workload:
    name: str
    jobs: list[Job]
    rate: float
    """Jobs (conversations) per modelled second."""


@dataclass(frozen=True, slots=True)
class Row:
    workload: str
    config: str
    summary: Summary
    lag_s: float

    def cells(self) -> list[str]:
        s = self.summary
        failed = s.requests - s.succeeded
        return [self.workload, self.config, f"{s.ttft.p50:.2f}", f"{s.ttft.p90:.2f}",
                f"{s.itl.p90 * 1000:.1f}", f"{s.itl.p99 * 1000:.1f}",
                f"{s.output_throughput:.0f}", f"{s.goodput:.2f}", str(failed), f"{self.lag_s:.2f}"]


HEADER = ["workload", "config", "TTFT p50 s", "TTFT p90 s", "ITL p90 ms", "ITL p99 ms", "out tok/s",
          "goodput/s", "failed", "engine lag s"]


class TokenIdClient(LoadClient):
    """Sends single-turn jobs' prompts as token ids (``prompts``: job id -> ids)."""

    def __init__(self, model: str, prompts: dict[str, list[int]], *, time_scale: float) -> None:
        super().__init__(model, time_scale=time_scale)
        self.prompts = prompts

    def _body(self, job: Job, turn: int, history: list[dict[str, str]]) -> dict[str, Any]:
        body = super()._body(job, turn, history)
        if job.id in self.prompts:
            body["prompt"] = self.prompts[job.id]
        return body


def pd_ratio(name: str) -> tuple[int, int]:
    prefill, _, decode = name.upper().rstrip("D").partition("P")
    return int(prefill), int(decode)


def long_prompt(count: int, seed: int = 0) -> tuple[list[Job], dict[str, list[int]]]:
    """Jobs (their text is a placeholder) and their token-id prompts: random ids within the vocabulary
    (2048) of the simulators' tokenizer."""
    rng = random.Random(seed)
    prompts = {f"long{i}": [rng.randrange(100, 2000) for _ in range(rng.randint(12000, 20000))]
               for i in range(count)}
    return [Job(job_id, "", ("ids",), (128,)) for job_id in prompts], prompts


async def engine_lag(urls: list[str]) -> float:
    async with aiohttp.ClientSession() as session:
        total = 0.0
        for url in urls:
            async with session.get(f"{url}/admin/stats") as response:
                total += (await response.json())["lag_seconds"]
    return total


def across_processes(urls: list[str], processes: int) -> list[str]:
    """The fleet's URLs (grouped by simulator process) in round-robin order over the processes, so that
    each role's engines share the simulators' CPU evenly."""
    share = math.ceil(len(urls) / processes)
    groups = [urls[i : i + share] for i in range(0, len(urls), share)]
    return [group[i] for i in range(share) for group in groups if i < len(group)]


def endpoints(urls: list[str], configs: list[str]) -> list[dict[str, object]]:
    pods: list[dict[str, object]] = []
    for config in configs:
        if config == COLOCATED:
            pods += [{"name": f"co-{i}", "url": url, "model": config} for i, url in enumerate(urls)]
            continue
        prefill, decode = pd_ratio(config)
        roles = ["prefill"] * prefill + ["decode"] * decode
        pods += [{"name": f"{config}-{role[0]}{i}", "url": url, "model": config, "role": role,
                  "kv_transfer": "nixl"} for i, (url, role) in enumerate(zip(urls, roles, strict=True))]
    return pods


async def start_router(workdir: Path, nats_url: str, urls: list[str], configs: list[str]) -> tuple[
        SupervisedProcess, str]:
    path = workdir / "endpoints.json"
    path.write_text(json.dumps({"endpoints": endpoints(urls, configs)}))
    port = free_port()
    strategies = {config: COLOCATED_STRATEGY if config == COLOCATED else "pd" for config in configs}
    env = {"BRIXMESH_NATS_URL": nats_url, "BRIXMESH_PORT": str(port), "BRIXMESH_HOST": "127.0.0.1",
           "BRIXMESH_ENDPOINTS_FILE": str(path), "BRIXMESH_MODEL_STRATEGIES": json.dumps(strategies),
           "BRIXMESH_LOG_LEVEL": "warning"}
    url = f"http://127.0.0.1:{port}"
    router = SupervisedProcess(ProcessSpec("router", [sys.executable, "-m", "brixmesh.router"], env=env,
                                           log_path=workdir / "router.log", restart="never",
                                           readiness=ReadinessProbe(f"{url}/readyz", timeout_s=120)))
    router.start()
    if not await router.wait_ready(120):
        raise SystemExit(f"pd: the router did not start (log: {workdir / 'router.log'})")
    return router, url


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="one P/D ratio, short runs (under 10 minutes)")
    parser.add_argument("--time-scale", type=float, default=4.0, help="wall s per simulated s")
    parser.add_argument("--duration", type=float,
                        help="modelled seconds of arrivals per run (default: LONG_PROMPT_S for long-prompt)")
    parser.add_argument("--chunk", type=int, default=2048,
                        help="the engines' --max-num-batched-tokens (vLLM's default on an H100 is 8192)")
    parser.add_argument("--out", type=Path, help="report folder (default bench/results/pd-<time>)")
    args = parser.parse_args()
    started = time.monotonic()
    out = args.out or Path("bench/results", time.strftime("pd-%Y%m%d-%H%M%S"))
    out.mkdir(parents=True, exist_ok=True)
    long_s = args.duration or (LONG_PROMPT_S_QUICK if args.quick else LONG_PROMPT_S)
    turn_s = args.duration or (8.0 if args.quick else 30.0)
    # --quick: the one ratio whose prefill keeps up at 9 requests/s (5P3D's TTFT grows over a run)
    configs = [COLOCATED, "6P2D"]
    if not args.quick:
        configs += ["3P5D", "4P4D", "5P3D", "7P1D"]
    source = TextSource(single_token_words(TOKENIZER_DIR / "tokenizer.json"))
    long_rate, turn_rate = 9.0, 2.0
    long_jobs, long_prompts = long_prompt(math.ceil(long_rate * long_s))
    workloads = [
        Workload("long-prompt", long_jobs, long_rate),
        Workload("multi-turn", multi_turn(source, sessions=math.ceil(turn_rate * turn_s),
                                          turn_len_mean=1500, turn_len_std=600, max_turn_len=4000,
                                          output_len=128, seed=1), turn_rate),
    ]
    workdir = Path(tempfile.mkdtemp(prefix="bm-bench-pd-"))
    spec = FleetSpec(engines=ENGINES, model=COLOCATED, time_scale=args.time_scale, max_model_len=32768,
                     processes=2, extra_args=("--served-model-name", *configs,
                                              "--max-num-batched-tokens", str(args.chunk),
                                              "--kv-transfer-config", json.dumps(KV_TRANSFER)))
    fleet = await Fleet(spec, workdir / "fleet").start(timeout_s=120)
    nats = NatsServer(workdir / "nats").start()
    urls = across_processes(fleet.urls, spec.processes)
    router, router_url = await start_router(workdir, nats.url, urls, configs)
    rows: list[Row] = []
    try:
        for workload in workloads:
            for config in configs:
                await fleet.wait_idle(timeout_s=600)
                await fleet.reset()
                client = TokenIdClient(config, long_prompts, time_scale=args.time_scale)
                arrivals = poisson(workload.rate, len(workload.jobs), seed=2)
                lag = await engine_lag(fleet.urls)
                result = await client.run(workload.jobs, arrivals, FixedTarget(router_url), slo=SLO)
                row = Row(workload.name, config, result.summary, await engine_lag(fleet.urls) - lag)
                rows.append(row)
                print("  ".join(row.cells()), flush=True)
    finally:
        await router.stop()
        nats.stop()
        await fleet.stop()
    widths = [max(len(h), *(len(r.cells()[i]) for r in rows)) for i, h in enumerate(HEADER)]
    table = ["  ".join(h.ljust(w) for h, w in zip(HEADER, widths, strict=True))]
    table += ["  ".join(c.ljust(w) for c, w in zip(row.cells(), widths, strict=True)) for row in rows]
    print("\n" + "\n".join(table))
    headline = headline_of(rows, args.chunk)
    (out / "summary.txt").write_text("\n".join([*table, headline, ""]))
    print(f"({time.monotonic() - started:.0f}s; summary.txt in {out})")
    print(headline, flush=True)


def headline_of(rows: list[Row], chunk: int) -> str:
    """Long-prompt: the P/D ratio with the lowest ITL p90 among those within 5% of colocated's throughput."""
    long = {row.config: row.summary for row in rows if row.workload == "long-prompt"}
    colocated = long[COLOCATED]
    equal = {c: s for c, s in long.items() if c != COLOCATED
             and s.output_throughput >= 0.95 * colocated.output_throughput}
    if not equal:
        return "pd: no P/D ratio reached colocated's long-prompt throughput"
    best = min(equal, key=lambda c: equal[c].itl.p90)
    s = equal[best]
    turns = {row.config: row.summary for row in rows if row.workload == "multi-turn"}
    multi = ", ".join(f"{c} {t.ttft.p90:.2f}s" for c, t in turns.items())
    return (f"pd: long-prompt (chunk {chunk}) {best} vs colocated at {s.output_throughput:.0f} vs "
            f"{colocated.output_throughput:.0f} out tok/s: ITL p90 {s.itl.p90 * 1000:.0f} vs "
            f"{colocated.itl.p90 * 1000:.0f} ms ({colocated.itl.p90 / s.itl.p90:.2f}x better, target >= 2x), "
            f"ITL p99 {s.itl.p99 * 1000:.0f} vs {colocated.itl.p99 * 1000:.0f} ms "
            f"({colocated.itl.p99 / s.itl.p99:.2f}x), "
            f"TTFT p90 {s.ttft.p90:.2f} vs {colocated.ttft.p90:.2f}s, "
            f"goodput {s.goodput:.2f} vs {colocated.goodput:.2f}/s | multi-turn TTFT p90: {multi}")


if __name__ == "__main__":
    asyncio.run(main())
