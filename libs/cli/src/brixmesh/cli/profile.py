"""``brixmesh profile``: what one replica of a model serves within an SLO per length bucket, per GPU type.

Against simulated GPU types (``--sim-gpu a10``: a one-engine simulator fleet is started per type) or a real
engine (``--url`` with ``--gpu`` naming its GPU type). Each profile is written to ``<out>/<gpu>.json`` (the
durable copy the autoscaler's ``optimizer`` strategy loads at start) and published on
``gpu.profiles.<model>.<gpu>`` when a mesh is reachable. The sweep itself is ``bench/brixbench/profiling.py``.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated, Any

import msgspec
import typer
from rich.console import Console

from brixmesh.cli.bench import brixbench
from brixmesh.cli.state import default_state_dir, resolve_nats_auth, resolve_nats_url
from brixmesh.common.bus import Bus, BusConnectError, NatsAuth
from brixmesh.common.messages import GpuProfile, Slo
from brixmesh.common.shapes import bucket_tokens, length_bucket
from brixmesh.common.subjects import GPU_PROFILES

console = Console(highlight=False)
errors = Console(stderr=True, highlight=False, soft_wrap=True)


def fail(message: str) -> typer.Exit:
    errors.print(f"brixmesh profile: {message}", markup=False)
    return typer.Exit(2)


def parse_lengths(value: str, flag: str) -> tuple[int, ...]:
    """``"256,2048"`` -> length buckets; each length names the bucket holding it."""
    try:
        lengths = [int(part) for part in value.split(",") if part.strip()]
    except ValueError:
        raise fail(f"{flag} {value!r}: use comma-separated token counts like 256,2048") from None
    if not lengths or any(n < 1 for n in lengths):
        raise fail(f"{flag} {value!r}: needs token counts >= 1")
    return tuple(sorted({length_bucket(n) for n in lengths}))


def parse_costs(items: list[str], defaults: dict[str, float]) -> dict[str, float]:
    costs = dict(defaults)
    for item in items:
        gpu, sep, price = item.partition("=")
        try:
            costs[gpu.strip().lower()] = float(price)
        except ValueError:
            raise fail(f"--cost {item!r}: use GPU=PRICE_PER_HOUR, e.g. a10=1.01") from None
        if not sep or costs[gpu.strip().lower()] < 0:
            raise fail(f"--cost {item!r}: use GPU=PRICE_PER_HOUR with a price >= 0")
    return costs


def profile(
    sim_gpu: Annotated[list[str] | None, typer.Option(
        "--sim-gpu", help="Simulated GPU type to profile (repeat): a10, l20, a100, h100.")] = None,
    url: Annotated[str | None, typer.Option(help="A real engine's OpenAI base URL (one replica).")] = None,
    gpu: Annotated[str | None, typer.Option(help="GPU type of the --url engine (its profile's name).")]
    = None,
    model: Annotated[str, typer.Option(help="Served model name (the router's and autoscaler's key).")]
    = "sim-llama-8b",
    model_profile: Annotated[str, typer.Option(help="Simulated model (--sim-gpu).")] = "llama-8b",
    inputs: Annotated[str, typer.Option(help="Prompt lengths to profile; each names its power-of-two "
                                             "bucket.")] = "256,2048",
    outputs: Annotated[str, typer.Option(help="Output lengths to profile (buckets as --inputs).")] = "64,256",
    slo_ttft_ms: Annotated[float, typer.Option(help="TTFT bound (0: none).")] = 1500.0,
    slo_tpot_ms: Annotated[float, typer.Option(help="TPOT bound (0: none).")] = 80.0,
    percentile: Annotated[float, typer.Option(help="Percentile the SLO bounds apply to.")] = 90.0,
    duration: Annotated[float, typer.Option(help="Modelled seconds of arrivals per trial rate.")] = 30.0,
    warmup: Annotated[float, typer.Option(help="Modelled seconds at the start of a trial not judged.")]
    = 10.0,
    precision: Annotated[float, typer.Option(help="Stop when failing/passing rate <= 1 + this.")] = 0.15,
    start_rate: Annotated[float, typer.Option(help="First trial rate (req/s).")] = 1.0,
    cost: Annotated[list[str] | None, typer.Option(
        help="GPU=PRICE per hour (repeat); defaults: a10 1.01, l20 1.50, a100 3.67, h100 7.52.")] = None,
    time_scale: Annotated[float, typer.Option(help="Wall seconds per simulated second of the simulator "
                                                   "(< 1: faster than real time).")] = 0.25,
    seed: Annotated[int, typer.Option(help="Seed of prompts and arrivals.")] = 0,
    out: Annotated[Path | None, typer.Option(help="Directory for <gpu>.json (default <state-dir>/profiles/"
                                                  "<model>).")] = None,
    publish: Annotated[bool | None, typer.Option(
        "--publish/--no-publish", help="Publish on gpu.profiles.* (default: when a mesh is reachable).")]
    = None,
    nats_url: Annotated[str | None, typer.Option(help="NATS server (default: the running mesh's).")] = None,
    state_dir: Annotated[Path, typer.Option(help="The mesh's state directory.")] = default_state_dir(),
) -> None:
    """Measure the highest request rate per (input, output) length bucket that meets the SLO."""
    if bool(sim_gpu) == bool(url):
        raise fail("give either --sim-gpu (simulated types) or --url with --gpu (a real engine)")
    if url and not gpu:
        raise fail("--url needs --gpu naming the engine's GPU type")
    if time_scale <= 0 or duration <= 0 or warmup < 0 or warmup >= duration or precision <= 0:
        raise fail("--time-scale, --duration and --precision must be > 0, and 0 <= --warmup < --duration")
    if not 0 < percentile <= 100 or slo_ttft_ms < 0 or slo_tpot_ms < 0 or slo_ttft_ms + slo_tpot_ms == 0:
        raise fail("the SLO needs --slo-ttft-ms and/or --slo-tpot-ms > 0 and 0 < --percentile <= 100")
    profiling = brixbench("profiling")
    costs = parse_costs(cost or [], profiling.DEFAULT_COST_PER_HOUR)
    types = [g.lower() for g in (sim_gpu or [gpu or ""])]
    unknown = [g for g in types if g not in costs]
    if unknown:
        raise fail(f"no price for GPU type {unknown[0]!r}; give one with --cost {unknown[0]}=PRICE")
    settings = profiling.SweepSettings(
        parse_lengths(inputs, "--inputs"), parse_lengths(outputs, "--outputs"),
        Slo(ttft_s=slo_ttft_ms / 1000, tpot_s=slo_tpot_ms / 1000, percentile=percentile),
        duration_s=duration, warmup_s=warmup, precision=precision, start_rate=start_rate, seed=seed,
    )  # fmt: skip
    directory = out or state_dir / "profiles" / model
    target_nats = resolve_nats_url(nats_url, state_dir)
    if publish and target_nats is None:
        raise fail("--publish: no running mesh found; start one with `brixmesh up` or pass --nats-url")
    publish_to = target_nats if publish is not False else None
    auth = resolve_nats_auth(nats_url, state_dir) if publish_to else NatsAuth()

    def report(line: str) -> None:
        console.print(f"  {line}", markup=False)

    async def run() -> list[GpuProfile]:
        profiles = []
        for gpu_type in types:
            console.print(f"profiling {model} on {gpu_type}", markup=False)
            if url:
                found = await profiling.profile_engine(url.rstrip("/"), model, gpu_type, costs[gpu_type],
                                                       settings, _text_source(), report=report)
            else:
                found = await _profile_simulated(profiling, gpu_type, model, model_profile, costs[gpu_type],
                                                 settings, time_scale, directory, report)
            path = write_profile(found, directory)
            console.print(f"{gpu_type}: {path}", markup=False)
            if publish_to is not None:
                await publish_profile(publish_to, auth, found)
            profiles.append(found)
        return profiles

    try:
        profiles = asyncio.run(run())
    except BusConnectError as exc:
        raise fail(str(exc)) from None
    except (OSError, TimeoutError) as exc:
        raise fail(f"profiling stopped: {exc}") from None
    for found in profiles:
        console.print(describe(found), markup=False)


def _text_source() -> Any:
    text, fleet = brixbench("text"), brixbench("fleet")
    return text.TextSource(text.single_token_words(fleet.TOKENIZER_DIR / "tokenizer.json"))


async def _profile_simulated(profiling: Any, gpu_type: str, model: str, model_profile: str,
                             cost_per_hour: float, settings: Any, time_scale: float, directory: Path,
                             report: Any) -> GpuProfile:
    fleet_mod = brixbench("fleet")
    longest = bucket_tokens(max(settings.input_buckets)) + bucket_tokens(max(settings.output_buckets))
    spec = fleet_mod.FleetSpec(engines=1, model=model, gpu=gpu_type, model_profile=model_profile,
                               max_model_len=longest, time_scale=time_scale, processes=1)
    fleet = fleet_mod.Fleet(spec, directory / f"work-{gpu_type}")
    try:
        await fleet.start()
    except fleet_mod.FleetError as exc:
        raise fail(str(exc)) from None
    try:
        return await profiling.profile_engine(
            fleet.urls[0], model, gpu_type, cost_per_hour, settings, _text_source(), time_scale=time_scale,
            engine_source=f"brixmesh-engine-sim --gpu {gpu_type} --model-profile {model_profile} "
                          f"--time-scale {time_scale:g}",
            report=report,
        )  # fmt: skip
    finally:
        await fleet.stop()


def write_profile(found: GpuProfile, directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{found.gpu}.json"
    partial = path.with_suffix(".json.partial")
    partial.write_bytes(msgspec.json.format(msgspec.json.encode(found)))
    partial.replace(path)  # readers never see half a profile
    return path


async def publish_profile(nats_url: str, auth: NatsAuth, found: GpuProfile) -> None:
    bus = await Bus.connect(nats_url, name="brixmesh-profile", setting="--nats-url", auth=auth)
    try:
        await bus.publish(GPU_PROFILES.format(model=found.model, gpu=found.gpu), found)
    finally:
        await bus.close()  # drains: the profile is on the server before we leave


def describe(found: GpuProfile) -> str:
    slo = found.slo
    cells = ", ".join(f"in<={bucket_tokens(c.input_bucket)}/out<={bucket_tokens(c.output_bucket)} "
                      f"{c.max_rate:g}/s" for c in found.cells)
    return (f"{found.gpu} ({found.cost_per_hour:g}/h, p{slo.percentile:g} TTFT<={slo.ttft_s * 1000:g}ms "
            f"TPOT<={slo.tpot_s * 1000:g}ms): {cells}")
