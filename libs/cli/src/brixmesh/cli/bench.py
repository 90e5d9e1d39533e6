"""``brixmesh bench``: workloads against any endpoint, and brixmesh side by side with its peers.

The benchmark code lives in the checkout's ``bench/brixbench`` package (not installed with the CLI); this
module finds it from the working directory or from the checkout the CLI is installed from.
"""

from __future__ import annotations

import asyncio
import importlib
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

bench_app = typer.Typer(help="Benchmarks: workloads, a simulated fleet, and the peers side by side.",
                        no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
console = Console(highlight=False, width=None if sys.stdout.isatty() else 200)
errors = Console(stderr=True, highlight=False, soft_wrap=True)


def fail(message: str) -> typer.Exit:
    errors.print(f"brixmesh bench: {message}", markup=False)
    return typer.Exit(2)


def _bench_dirs() -> list[Path]:
    installed_checkout = Path(__file__).resolve().parents[5]
    return [Path.cwd() / "bench", installed_checkout / "bench"]


def brixbench(module: str = "") -> ModuleType:
    """Import ``brixbench[.module]`` from the checkout."""
    for directory in _bench_dirs():
        if (directory / "brixbench" / "__init__.py").is_file():
            if str(directory) not in sys.path:
                sys.path.insert(0, str(directory))
            break
    else:
        raise fail("bench/brixbench not found; run from the brixmesh checkout")
    return importlib.import_module("brixbench" + (f".{module}" if module else ""))


def _progress(total: int) -> tuple[Progress | None, Any]:
    if not console.is_terminal:
        return None, lambda: None
    progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), console=console, refresh_per_second=2)
    task = progress.add_task("requests", total=total)
    return progress, lambda: progress.advance(task)


def _print_tables(result: Any, report_mod: ModuleType) -> None:
    for case in result.cases:
        table = Table(title=f"{case.name}: {case.description}", title_justify="left")
        for column in report_mod.TABLE_COLUMNS:
            table.add_column(column, no_wrap=column in ("contender", "router CPU"))
        for row in report_mod.table_rows(result.for_workload(case.name), case.fleet.time_scale):
            table.add_row(*row)
        console.print(table)


Out = Annotated[Path | None, typer.Option("--out", help="Report folder (default bench/results/<command>-<time>).")]


def _out_dir(out: Path | None, command: str) -> Path:
    return out or Path("bench/results") / f"{command}-{time.strftime('%Y%m%d-%H%M%S')}"


@bench_app.command()
def compare(
    quick: Annotated[bool, typer.Option("--quick", help="Smaller workloads (under 10 minutes on 2 cores).")] = False,
    tiny: Annotated[bool, typer.Option("--tiny", help="Two engines, a few requests (the test suite's run).")] = False,
    contender: Annotated[list[str] | None, typer.Option(
        "--contender", "-c", help="brixmesh:<strategy>, smg:<policy>, vllm-router:<policy>, oracle, client-random "
                                  "(repeat; default: all)")] = None,
    workload: Annotated[list[str] | None, typer.Option(
        "--workload", "-w", help="shared-prefix and/or multi-turn (repeat; default: both)")] = None,
    engines: Annotated[int | None, typer.Option(help="Engines (default 8 simulated, 2 vLLM).")] = None,
    time_scale: Annotated[float | None, typer.Option(help="Wall seconds per simulated second.")] = None,
    engine: Annotated[str, typer.Option(
        help="sim (simulated H100s), vllm (real vLLM CPU engines with the tiny model, small KV caches; "
             "default contenders: the composition, the cost model, smg, vllm-router, the oracle) or vllm-sim "
             "(vllm's cases on simulated engines of the same KV geometry and speed).")] = "sim",
    out: Out = None,
) -> None:
    """Start a fleet (simulated, or real vLLM on this CPU) and run the same workloads through brixmesh and its
    peers."""
    presets = brixbench("presets")
    compare_mod = brixbench("compare")
    contenders_mod = brixbench("contenders")
    report_mod = brixbench("report")
    fleet_mod = brixbench("fleet")
    text = brixbench("text")
    source = text.TextSource(text.single_token_words(fleet_mod.TOKENIZER_DIR / "tokenizer.json"))
    if engine not in ("sim", "vllm", "vllm-sim"):
        raise fail(f"unknown --engine {engine!r}; use sim, vllm or vllm-sim")
    if engine != "sim":
        if tiny or time_scale is not None:
            raise fail("--tiny and --time-scale are for the simulated H100 fleet")
        cases = presets.vllm_cases(quick, simulated=engine == "vllm-sim")
    elif tiny:
        cases = presets.tiny_cases(source)
    else:
        cases = presets.quick_cases(source) if quick else presets.full_cases(source)
    if workload:
        unknown = set(workload) - {case.name for case in cases}
        if unknown:
            raise fail(f"unknown workload {min(unknown)!r}; known: {', '.join(c.name for c in cases)}")
        cases = [case for case in cases if case.name in workload]
    if engines is not None or time_scale is not None:
        if engines is not None and engines < 1:
            raise fail("--engines must be >= 1")
        if time_scale is not None and time_scale <= 0:
            raise fail("--time-scale must be > 0")
        cases = [presets.with_fleet(case, engines=engines, time_scale=time_scale) for case in cases]
    defaults = (contenders_mod.VLLM_CONTENDERS if engine != "sim"
                else contenders_mod.QUICK_CONTENDERS if quick else contenders_mod.DEFAULT_CONTENDERS)
    names = contender or list(defaults)
    try:
        for name in names:
            contenders_mod.resolve(name, None)
    except contenders_mod.UnknownContender as exc:
        raise fail(str(exc)) from None
    directory = _out_dir(out, "compare")
    total = sum(sum(len(job.turns) for job in case.jobs) for case in cases) * len(names)
    progress, advance = _progress(total)

    def report_line(line: str) -> None:
        (progress.console if progress else console).print(f"[dim]{time.strftime('%H:%M:%S')}[/] {line}",
                                                          markup=True, highlight=False)

    started = time.monotonic()
    try:
        if progress:
            progress.start()
        result = asyncio.run(compare_mod.compare(cases, names, directory / "work", report_line, advance))
    except asyncio.CancelledError:
        raise fail("stopped by SIGTERM (engines and routers stopped)") from None
    finally:
        if progress:
            progress.stop()
    report = report_mod.write_report(result, directory)
    _print_tables(result, report_mod)
    console.print(f"report: {report}  ({time.monotonic() - started:.0f}s)")


@bench_app.command()
def run(
    url: Annotated[str, typer.Option(help="OpenAI base URL to load (a router, or one engine).")],
    model: Annotated[str, typer.Option(help="Model name to request.")],
    workload: Annotated[str, typer.Option(help="shared-prefix[:G:P:SYS:Q:OUT], llmd[:SCALE], "
                                               "multi-turn[:N:MEAN:STD:OUT], sharegpt[:N], mooncake:PATH[:LIMIT]")]
    = "shared-prefix:16:8:2048:128:64",
    arrival: Annotated[str, typer.Option(help="poisson:RATE, gamma:RATE:CV, closed:N, ladder[:QPS_X:TIME_X], "
                                              "sinusoid:PRESET:MEAN:SECONDS, trace[:SPEEDUP]")] = "poisson:10",
    engine_url: Annotated[list[str] | None, typer.Option(
        "--engine-url", help="Engine to scrape for hit rate, queue and preemptions (repeat).")] = None,
    header: Annotated[list[str] | None, typer.Option(help="Extra request header NAME:VALUE (repeat).")] = None,
    time_scale: Annotated[float, typer.Option(help="Divide wall times by this (simulated engines).")] = 1.0,
    slo_ttft_ms: Annotated[float | None, typer.Option(help="Goodput SLO on TTFT.")] = None,
    slo_tpot_ms: Annotated[float | None, typer.Option(help="Goodput SLO on TPOT.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the workload and the arrivals.")] = 0,
    out: Out = None,
) -> None:
    """Run one workload against any OpenAI endpoint and report it."""
    specs = brixbench("specs")
    client_mod = brixbench("client")
    compare_mod = brixbench("compare")
    report_mod = brixbench("report")
    fleet_mod = brixbench("fleet")
    stats = brixbench("stats")
    text = brixbench("text")
    if time_scale <= 0:
        raise fail("--time-scale must be > 0")
    headers = {}
    for item in header or []:
        name, sep, value = item.partition(":")
        if not sep or not name.strip():
            raise fail(f"--header {item!r}: use NAME:VALUE")
        headers[name.strip()] = value.strip()
    source = text.TextSource(text.single_token_words(fleet_mod.TOKENIZER_DIR / "tokenizer.json"))
    try:
        jobs = specs.parse_workload(workload, source, seed)
        schedule = specs.parse_arrivals(arrival, jobs, seed)
    except specs.SpecError as exc:
        raise fail(str(exc)) from None
    slo = stats.Slo(ttft_s=slo_ttft_ms / 1000 if slo_ttft_ms else None,
                    tpot_s=slo_tpot_ms / 1000 if slo_tpot_ms else None)
    progress, advance = _progress(sum(len(job.turns) for job in jobs))
    client = client_mod.LoadClient(model, time_scale=time_scale, headers=headers)
    try:
        if progress:
            progress.start()
        result = asyncio.run(client.run(jobs, schedule, client_mod.FixedTarget(url.rstrip("/")),
                                        engine_urls=engine_url or [], slo=slo, on_request_done=advance))
    finally:
        if progress:
            progress.stop()
    fleet = fleet_mod.FleetSpec(engines=len(engine_url or []), model=model, time_scale=time_scale)
    case = compare_mod.WorkloadCase(workload, jobs, schedule, fleet, slo, f"{workload}, {schedule.label}, {url}")
    compared = compare_mod.CompareResult([case], [compare_mod.ContenderRun(url, workload, "ok", result=result)])
    report = report_mod.write_report(compared, _out_dir(out, "run"), f"brixmesh bench run: {url}")
    _print_tables(compared, report_mod)
    console.print(f"report: {report}")
    if result.summary.succeeded == 0:
        first = next((r.error for r in result.records if r.error), "no request was sent")
        raise fail(f"no request succeeded: {first}")


@bench_app.command()
def llmd(
    quick: Annotated[bool, typer.Option("--quick", help="A shorter ladder.")] = False,
    scale: Annotated[float, typer.Option(help="Length and KV-capacity scale of the 150 x 5 set.")] = 0.1,
    time_scale: Annotated[float, typer.Option(help="Wall seconds per simulated second.")] = 4.0,
    qps_scale: Annotated[float, typer.Option(help="Multiplies every rate of the ladder (2: the scaled-down "
                                                  "requests saturate the fleet as llm-d's did).")] = 2.0,
    out: Out = None,
) -> None:
    """llm-d's 8-pod shared-prefix experiment in simulation, next to llm-d's published table."""
    if not 0 < scale <= 1:
        raise fail("--scale must be in (0, 1]")
    if time_scale <= 0 or qps_scale <= 0:
        raise fail("--time-scale and --qps-scale must be > 0")
    llmd_mod = brixbench("llmd")
    compare_mod = brixbench("compare")
    report_mod = brixbench("report")
    fleet_mod = brixbench("fleet")
    text = brixbench("text")
    source = text.TextSource(text.single_token_words(fleet_mod.TOKENIZER_DIR / "tokenizer.json"))
    case = llmd_mod.llmd_case(source, scale=scale, ladder_time=0.02 if quick else 0.05, qps_scale=qps_scale,
                              time_scale=time_scale)
    names = list(llmd_mod.SCHEDULERS.values())
    directory = _out_dir(out, "llmd")
    progress, advance = _progress(len(case.jobs) * len(names))

    def report_line(line: str) -> None:
        (progress.console if progress else console).print(f"[dim]{time.strftime('%H:%M:%S')}[/] {line}")

    try:
        if progress:
            progress.start()
        result = asyncio.run(compare_mod.compare([case], names, directory / "work", report_line, advance))
    finally:
        if progress:
            progress.stop()
    runs = result.for_workload(case.name)
    _holds, verdict = llmd_mod.ordering_holds(runs)
    section = ["## Next to llm-d's published table", "", llmd_mod.side_by_side(runs), "",
               f"llm-d's ordering (precise > approximate > load-only ~ random, throughput and TTFT): **{verdict}**",
               ""]
    report = report_mod.write_report(result, directory, "llm-d shared-prefix experiment, simulated", section)
    _print_tables(result, report_mod)
    console.print(llmd_mod.side_by_side(runs))
    console.print(f"ordering: {verdict}")
    console.print(f"report: {report}")


@bench_app.command("install-peers")
def install_peers() -> None:
    """Install the peers (sglang-router, vllm-router; pinned) into their own virtual environment."""
    peers = brixbench("contenders.peers")
    if not peers.install_peers():
        raise fail(f"could not install the peers into {peers.peers_venv()}")
    console.print(f"peers ready in {peers.peers_venv()}")
