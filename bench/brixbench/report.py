"""Results as JSON, a Markdown report with one table per workload (ratios to random routing) and PNG plots."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgspec

from brixbench.compare import CompareResult, ContenderRun, WorkloadCase

BASELINES = ("brixmesh:random", "client-random")
TABLE_COLUMNS = ("contender", "out tok/s", "vs random", "TTFT p90 ms", "vs random", "TTFT mean ms",
                 "TPOT p50 ms", "hit rate", "unlimited", "engine share", "busiest/mean", "evicted",
                 "mean queue", "preempt", "success", "goodput/s", "router CPU")


def baseline(runs: Sequence[ContenderRun]) -> ContenderRun | None:
    for name in BASELINES:
        for run in runs:
            if run.contender == name and run.status == "ok" and run.result is not None:
                return run
    return None


def _num(value: float, digits: int = 0) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:,.{digits}f}"


def _ratio(value: float, base: float | None) -> str:
    if base is None or not base or math.isnan(base) or math.isnan(value):
        return "n/a"
    return f"{value / base:.2f}x"


def cpu_text(run: ContenderRun, time_scale: float) -> str:
    """Router CPU seconds over the run and as a share of one core of this machine (wall time)."""
    if run.router_cpu_s is None:
        return "in client"
    wall = run.result.duration_s * time_scale if run.result is not None else 0.0
    text = f"{run.router_cpu_s:.1f}s ({100 * run.router_cpu_s / wall:.0f}% core)" if wall else "n/a"
    if run.helper_cpu_s is not None:
        text += f" + mesh {run.helper_cpu_s:.1f}s"
    return text


def table_rows(runs: Sequence[ContenderRun], time_scale: float) -> list[list[str]]:
    base = baseline(runs)
    base_out = base.result.summary.output_throughput if base and base.result else None
    base_ttft = base.result.summary.ttft.p90 if base and base.result else None
    rows = []
    for run in runs:
        if run.status != "ok" or run.result is None:
            rows.append([run.contender, run.status, *[""] * (len(TABLE_COLUMNS) - 3), run.reason[:80]])
            continue
        s, e = run.result.summary, run.result.engines
        rows.append([
            run.contender, _num(s.output_throughput), _ratio(s.output_throughput, base_out),
            _num(s.ttft.p90 * 1000), _ratio(s.ttft.p90, base_ttft), _num(s.ttft.mean * 1000),
            _num(s.tpot.p50 * 1000, 1), _pct(e.hit_rate), _pct(run.hit_rate_bound),
            _share(e.requests_share), _num(e.busiest_over_mean, 2), _num(sum(run.evicted_blocks)),
            _num(e.mean_waiting, 2), _num(e.preemptions), f"{s.success_rate * 100:.0f}%", _num(s.goodput, 1),
            cpu_text(run, time_scale),
        ])
    return rows


def _pct(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value * 100:.1f}%"


def _share(shares: Sequence[float]) -> str:
    """Least and most loaded engine's share of the prompt tokens: how evenly the router spread the work."""
    known = [x for x in shares if not math.isnan(x)]
    return f"{min(known) * 100:.0f}-{max(known) * 100:.0f}%" if known else "n/a"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def results_json(result: CompareResult) -> dict[str, Any]:
    out: dict[str, Any] = {"started_at": result.started_at, "workloads": []}
    for case in result.cases:
        runs = []
        for run in result.for_workload(case.name):
            entry: dict[str, Any] = {"contender": run.contender, "status": run.status, "reason": run.reason,
                                     "router_cpu_s": run.router_cpu_s, "helper_cpu_s": run.helper_cpu_s,
                                     "wall_s": run.wall_s, "evicted_blocks": list(run.evicted_blocks),
                                     "hit_rate_bound": run.hit_rate_bound}
            if run.result is not None:
                entry["summary"] = msgspec.to_builtins(run.result.summary)
                entry["engines"] = msgspec.to_builtins(run.result.engines)
                entry["duration_s"] = run.result.duration_s
            runs.append(entry)
        out["workloads"].append({"name": case.name, "description": case.description,
                                 "fleet": msgspec.to_builtins(case.fleet), "jobs": len(case.jobs),
                                 "arrivals": case.arrivals.label, "runs": runs})
    return _jsonable(out)


def plot_case(case: WorkloadCase, runs: Sequence[ContenderRun], directory: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [run for run in runs if run.status == "ok" and run.result is not None]
    paths = []
    fig, ax = plt.subplots(figsize=(8, 5))
    for run in done:
        assert run.result is not None
        ttfts = sorted(r.ttft_s * 1000 for r in run.result.records if r.ok and r.ttft_s is not None)
        if ttfts:
            ax.plot(ttfts, [(i + 1) / len(ttfts) for i in range(len(ttfts))], label=run.contender)
    ax.set_xscale("log")
    ax.set_xlabel("TTFT (ms, modelled)")
    ax.set_ylabel("fraction of requests")
    ax.set_title(f"{case.name}: TTFT CDF")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    path = directory / f"{case.name}-ttft-cdf.png"
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    paths.append(path)

    fig, ax = plt.subplots(figsize=(8, 5))
    horizon = max((run.result.duration_s for run in done if run.result), default=0.0)
    window = max(horizon / 20, 1e-3)
    offsets = getattr(case.arrivals, "offsets", ())
    for run in done:
        assert run.result is not None
        xs, ys = [], []
        t = 0.0
        while t < run.result.duration_s:
            tokens = sum(n for finished, n in run.result.completions if t <= finished < t + window)
            xs.append(t + window / 2)
            ys.append(tokens / window)
            t += window
        ax.plot(xs, ys, label=run.contender)
    ax.set_xlabel("time (s, modelled)")
    ax.set_ylabel("output tok/s")
    if offsets:
        load = ax.twinx()
        xs = [i * window + window / 2 for i in range(int(horizon / window) + 1)]
        load.plot(xs, [sum(1 for o in offsets if x - window / 2 <= o < x + window / 2) / window for x in xs],
                  "k--", alpha=0.5, label="offered load (req/s)")
        load.set_ylabel("offered load (req/s, dashed)")
    ax.set_title(f"{case.name}: throughput vs load")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")
    path = directory / f"{case.name}-throughput.png"
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    paths.append(path)

    fig, ax = plt.subplots(figsize=(8, 4))
    for run in done:
        assert run.result is not None
        if run.result.waiting_timeline:
            xs, ys = zip(*run.result.waiting_timeline)
            ax.plot(xs, ys, label=run.contender)
    ax.set_xlabel("time (s, modelled)")
    ax.set_ylabel("requests waiting (all engines)")
    ax.set_title(f"{case.name}: engine waiting queues")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    path = directory / f"{case.name}-queues.png"
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    paths.append(path)
    return paths


def write_report(result: CompareResult, directory: Path, title: str = "brixmesh bench compare",
                 extra_sections: Sequence[str] = ()) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "results.json").write_text(json.dumps(results_json(result), indent=1))
    lines = [f"# {title}", "",
             ("Times are modelled seconds of the simulated GPUs (wall time divided by the time scale; "
              "real vLLM engines: wall seconds). Ratios are to random routing (brixmesh `random`, else a "
              "client-side random pick). Hit rate is the engines' own Δprefix_cache_hits / Δprefix_cache_queries; "
              "unlimited: the hit rate one never-evicting cache would reach on the same prompts; engine "
              "share is the least and most loaded engine's share of the prompt tokens; busiest/mean: the most "
              "requests one engine finished over the mean; evicted: blocks the engines evicted (their "
              "BlockRemoved events). Router CPU is the router process (and children) over the run, in % of "
              "one core of this machine; \"+ mesh\" is the CPU of the services it needs beside it "
              "(kv-index; the autoscaler where it runs)."), ""]
    for case in result.cases:
        runs = result.for_workload(case.name)
        lines += [f"## {case.name}", "", case.description, "",
                  markdown_table(TABLE_COLUMNS, table_rows(runs, case.fleet.time_scale)), ""]
        for path in plot_case(case, runs, directory):
            lines += [f"![{path.stem}]({path.name})", ""]
    lines += list(extra_sections)
    report = directory / "report.md"
    report.write_text("\n".join(lines) + "\n")
    return report
