"""Entry point of the ``brixmesh`` command."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Annotated

import msgspec
import typer
from rich.console import Console
from rich.table import Table

from brixmesh.common.bus import BusConnectError
from brixmesh.common.ports import port_is_free
from brixmesh.common.servers import ServerStartError
from brixmesh.common.settings import SettingsError

from brixmesh.cli.bench import bench_app
from brixmesh.cli.mesh import Mesh, MeshOptions, PdError, pd_deployments, run_until_signal
from brixmesh.cli.profile import profile
from brixmesh.cli.state import (
    admin_token_path, default_state_dir, read_record, resolve_nats_auth, resolve_nats_url,
)  # fmt: skip
from brixmesh.cli.status import collect_heartbeats
from brixmesh.cli.tap import tap as run_tap
from brixmesh.cli.top import top as run_top

app = typer.Typer(help="brixmesh: one OpenAI endpoint over a fleet of LLM engines.", no_args_is_help=True,
                  add_completion=False, pretty_exceptions_enable=False)
# piped output (CI logs, tests) gets wide tables instead of 80-column truncation
console = Console(highlight=False, width=None if sys.stdout.isatty() else 200)
errors = Console(stderr=True, highlight=False, soft_wrap=True)  # one line, however long
app.add_typer(bench_app, name="bench")
app.command()(profile)

StateDir = Annotated[Path, typer.Option("--state-dir", help="Where the mesh keeps data, logs and its record.")]
NatsUrl = Annotated[str | None, typer.Option("--nats-url", help="NATS server (default: the running mesh's).")]


def fail(message: str) -> typer.Exit:
    errors.print(f"brixmesh: {message}", markup=False)
    return typer.Exit(2)


@app.command()
def up(
    port: Annotated[int, typer.Option(help="Port of the OpenAI endpoint (the router).")] = 8000,
    engines: Annotated[
        int | None, typer.Option(help="Engine pods of the default deployment (0: an empty mesh; default 2).")
    ] = None,
    engine: Annotated[str, typer.Option(help="Engine kind: sim (simulator) or vllm (real vLLM on CPU).")] = "sim",
    model: Annotated[str, typer.Option(help="Served model name of the default deployment.")] = "tiny-llama",
    autoscale: Annotated[str | None, typer.Option(help="Autoscale the default deployment: hpa, kpa or apa.")] = None,
    max_engines: Annotated[int | None, typer.Option(help="Upper bound for --autoscale (default 4 x engines).")] = None,
    nats_url: Annotated[str | None, typer.Option(help="Use this NATS server instead of starting one.")] = None,
    state_dir: StateDir = default_state_dir(),
    ready_timeout: Annotated[float, typer.Option(help="Seconds to wait for every service to be ready.")] = 120.0,
    pd: Annotated[str | None, typer.Option(
        help="Prefill/decode instead of --engines: a ratio such as 1P1D or 2P1D (one role set), or a YAML "
             "file of role-set deployment specs (docs/pd.md).")] = None,
    backend: Annotated[str, typer.Option(
        help="Where engines run: local (processes) or ray (engine groups on Ray, docs/ray.md).")] = "local",
    ray_address: Annotated[str, typer.Option(
        help="--backend ray: the Ray cluster to join (GCS host:port); default: start a local one.")] = "",
) -> None:
    """Run the whole mesh on this machine: NATS and every service, until Ctrl-C."""
    if engine not in ("sim", "vllm"):
        raise fail(f"--engine must be sim or vllm, not {engine!r}")
    if pd is not None and (engines is not None or autoscale):
        raise fail("--pd sets the engines itself: leave out --engines and --autoscale (autoscale a role with "
                   "a PodAutoscaler spec instead)")
    if backend not in ("local", "ray"):
        raise fail(f"--backend must be local or ray, not {backend!r}")
    if ray_address and backend != "ray":
        raise fail("--ray-address needs --backend ray")
    engines = 2 if engines is None else engines
    if engines < 0:
        raise fail("--engines must be 0 or more")
    if autoscale not in (None, "hpa", "kpa", "apa"):
        raise fail(f"--autoscale must be hpa, kpa or apa, not {autoscale!r}")
    max_engines = max_engines if max_engines is not None else max(engines, 1) * 4
    if autoscale and max_engines < max(engines, 1):
        raise fail("--max-engines must be at least --engines (and at least 1)")
    if not port_is_free(port):
        raise fail(f"port {port} on 127.0.0.1 is in use; choose another with --port")
    running = read_record(state_dir)
    if running is not None:
        raise fail(f"a mesh is already running from {state_dir} (pid {running.pid}, {running.openai_base_url})")
    deployments_file = None
    if pd is not None:
        try:
            deployments_file, engines = pd_deployments(pd, engine, model, state_dir)
        except PdError as exc:
            raise fail(str(exc)) from None
    options = MeshOptions(
        port, state_dir, nats_url, engines, engine, model, ready_timeout, autoscale, max_engines,
        deployments_file, backend, ray_address,
    )
    mesh = Mesh(options, report=lambda line: console.print(f"[dim]{time.strftime('%H:%M:%S')}[/] {line}"))

    def started(not_ready: list[str]) -> None:
        table = Table(title="brixmesh is up", title_justify="left")
        for column in ("service", "state", "pid", "url", "log"):
            table.add_column(column)
        table.add_row("nats", "ready", str(mesh.nats.process.pid) if mesh.nats and mesh.nats.process else "-",
                      mesh.nats_url, "")
        for service in mesh.services.values():
            process = service.process
            state = process.state.value
            table.add_row(service.name, f"[green]{state}[/]" if state == "ready" else f"[red]{state}[/]",
                          str(process.pid), service.url, str(process.spec.log_path))
        for pod in mesh.engine_pods:
            info = pod["pod"]
            kind = info["engine"] if info["role"] == "both" else f"{info['engine']}, {info['role']}"
            table.add_row(f"engine {info['pod']} ({kind})",
                          "[green]ready[/]" if pod["ready"] else f"[red]{pod['phase']}[/]",
                          str(pod.get("pid") or "-"), info["endpoint"], "")
        console.print(table)
        ready_engines = sum(p["ready"] for p in mesh.engine_pods)
        if ready_engines < engines:
            console.print(f"[red]{ready_engines}/{engines} engines ready after {ready_timeout:.0f}s[/] "
                          f"(orchestrator: {mesh.services['orchestrator'].url}/v1/pods)")
        if not_ready:
            console.print(f"[red]not ready after {ready_timeout:.0f}s:[/] {', '.join(not_ready)} (see their logs)")
        console.print(f"admin token (Authorization: Bearer ...): {admin_token_path(state_dir)}")
        console.print(f"Prometheus scrape config: {mesh.prometheus_config()}", soft_wrap=True)
        console.print(f"OpenAI endpoint: [bold]{mesh.openai_base_url}[/]   (Ctrl-C stops everything)")
        tier = mesh.kv_tier_address
        console.print(f"KV tier node: {tier} (engines: --kv-transfer-config with kv_connector "
                      f"BrixTierConnector, tier_nodes [\"{tier}\"])", markup=False)
        if ready_engines:
            console.print("try it:", markup=False)
            console.print(first_request(mesh.openai_base_url, model), markup=False, soft_wrap=True)

    try:
        asyncio.run(run_until_signal(mesh, started))
    except ServerStartError as exc:
        raise fail(str(exc)) from None
    console.print("brixmesh stopped")


def first_request(base_url: str, model: str) -> str:
    """One copy-paste request that streams an answer from the mesh just started."""
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": "Hello!"}],
                       "max_tokens": 32, "stream": True})
    return f"  curl -N {base_url}/chat/completions -H 'Content-Type: application/json' -d '{body}'"


@app.command()
def status(
    nats_url: NatsUrl = None,
    state_dir: StateDir = default_state_dir(),
    wait: Annotated[float, typer.Option(help="Seconds to collect answers.")] = 0.7,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """What is running, from the services' own answers on the bus."""
    url = resolve_nats_url(nats_url, state_dir)
    if url is None:
        raise fail("no running mesh found; start one with `brixmesh up` or pass --nats-url")
    try:
        beats = asyncio.run(collect_heartbeats(url, resolve_nats_auth(nats_url, state_dir), wait))
    except (BusConnectError, SettingsError) as exc:
        raise fail(str(exc)) from None
    if as_json:
        print(json.dumps(msgspec.to_builtins(beats)))
    else:
        table = Table(title=f"services on {url}", title_justify="left")
        for column in ("service", "instance", "ready", "pid", "uptime", "version", "url"):
            table.add_column(column)
        for beat in beats:
            table.add_row(beat.service, beat.instance_id, "[green]yes[/]" if beat.ready else "[red]no[/]",
                          str(beat.pid), f"{beat.uptime_s:.0f}s", beat.version, beat.http_url)
        console.print(table)
    if not beats:
        raise typer.Exit(1)


@app.command()
def tap(
    subjects: Annotated[list[str], typer.Argument(help="Subjects to watch; wildcards * and > allowed.")],
    nats_url: NatsUrl = None,
    state_dir: StateDir = default_state_dir(),
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per message.")] = False,
    count: Annotated[int | None, typer.Option(help="Stop after this many messages.")] = None,
    timeout: Annotated[float | None, typer.Option(help="Stop after this many seconds.")] = None,
) -> None:
    """Print every message on SUBJECTS, decoded with its schema, one line each."""
    url = resolve_nats_url(nats_url, state_dir)
    if url is None:
        raise fail("no running mesh found; start one with `brixmesh up` or pass --nats-url")
    try:
        auth = resolve_nats_auth(nats_url, state_dir)
        code = asyncio.run(run_tap(url, auth, subjects, as_json=as_json, count=count, timeout_s=timeout))
    except (BusConnectError, SettingsError) as exc:
        raise fail(str(exc)) from None
    except KeyboardInterrupt:
        code = 0
    raise typer.Exit(code)


@app.command()
def top(
    nats_url: NatsUrl = None,
    state_dir: StateDir = default_state_dir(),
    refresh: Annotated[float, typer.Option(help="Seconds between redraws.")] = 1.0,
) -> None:
    """Live view of the fleet: pods (load, KV usage, hit rate), deployments (desired vs ready), request rates,
    the latest scale decisions. Ctrl-C quits."""
    if refresh <= 0:
        raise fail("--refresh must be > 0")
    url = resolve_nats_url(nats_url, state_dir)
    if url is None:
        raise fail("no running mesh found; start one with `brixmesh up` or pass --nats-url")
    try:
        asyncio.run(run_top(url, resolve_nats_auth(nats_url, state_dir), console, refresh))
    except (BusConnectError, SettingsError) as exc:
        raise fail(str(exc)) from None
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    app()
