"""``brixmesh up``: the embedded mesh. nats-server first, then every service as a supervised subprocess."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import yaml

from brixmesh.common.nats_auth import generate_passwords, server_config
from brixmesh.common.ports import free_port
from brixmesh.common.servers import NatsServer
from brixmesh.common.supervisor import ProcessSpec, ProcessState, ReadinessProbe, SupervisedProcess, Supervisor
from brixmesh.common.vllm_cpu import VllmNotInstalled, check_nixl, find_install, kv_transfer_config

from brixmesh.cli.state import (
    MeshRecord, admin_token, record_path, secrets_dir, write_nats_passwords, write_record, write_secret,
)  # fmt: skip

ORCHESTRATOR_STOP_GRACE_S = 30.0
TARGETS_REFRESH_S = 5.0
PROMETHEUS_CONFIG = """\
# Written by `brixmesh up`: every service and engine of this mesh (targets.json, refreshed as pods change).
#   prometheus --config.file={config}
global:
  scrape_interval: 5s
  evaluation_interval: 5s
scrape_configs:
  - job_name: brixmesh
    file_sd_configs:
      - files: [targets.json]
"""
SERVICES = ("orchestrator", "kv-index", "kv-tier", "autoscaler", "adapter-manager", "gpu-doctor", "router")
"""Start order: the router last, so that it finds pods and the KV index already announced."""
SERVICE_MODULES = {"kv-tier": "brixmesh.kv_index.tier"}
"""Services run by another package's module (the KV tier is a process of the kv-index package)."""
KV_TIER_MEMORY_MB = 512
"""A local mesh's tier node: slabs are taken as blocks arrive, up to this."""


@dataclass(frozen=True)
class MeshOptions:
    port: int
    state_dir: Path
    nats_url: str | None
    engines: int
    engine: str
    model: str
    ready_timeout_s: float
    autoscale: str | None = None
    max_engines: int = 0
    deployments_file: Path | None = None
    """``--pd``: the orchestrator applies these deployments at start instead of a ``default`` of
    ``engines`` pods (``engines`` is then the number of pods they run in all)."""
    backend: str = "local"
    """Where the orchestrator runs engines: ``local`` processes or ``ray`` engine groups."""
    ray_address: str = ""
    """``--backend ray``: the cluster to join; empty: the orchestrator starts a local one."""


@dataclass(frozen=True)
class RunningService:
    name: str
    url: str
    process: SupervisedProcess


def service_spec(
    name: str,
    port: int,
    nats_url: str,
    options: MeshOptions,
    secret_env: dict[str, str] | None = None,
    kv_tier_port: int = 0,
) -> ProcessSpec:
    env = {
        "BRIXMESH_NATS_URL": nats_url,
        "BRIXMESH_HOST": "127.0.0.1",
        "BRIXMESH_PORT": str(port),
        "BRIXMESH_STATE_DIR": str(options.state_dir.resolve()),
        "BRIXMESH_LOG_FORMAT": "json",
        **(secret_env or {}),
    }
    if name == "router":
        tokenizers = bundled_tokenizer_dirs(options.model)
        if tokenizers:
            env["BRIXMESH_KV_TOKENIZER_DIRS"] = json.dumps(tokenizers)
        if options.deployments_file is not None:  # --pd: requests go through a prefill and a decode pod
            env["BRIXMESH_DEFAULT_STRATEGY"] = "pd"
    if name == "autoscaler" and options.autoscale:
        env["BRIXMESH_AUTOSCALER_SPECS"] = str(write_default_autoscaler(options).resolve())
    if name == "kv-tier":
        env |= {"BRIXMESH_TIER_PORT": str(kv_tier_port), "BRIXMESH_TIER_MEMORY_MB": str(KV_TIER_MEMORY_MB)}
    if name == "orchestrator":
        if options.deployments_file is not None:
            env["BRIXMESH_DEPLOYMENTS_FILE"] = str(options.deployments_file.resolve())
        env |= {
            "BRIXMESH_DEFAULT_ENGINES": "0" if options.deployments_file is not None else str(options.engines),
            "BRIXMESH_DEFAULT_ENGINE": options.engine,
            "BRIXMESH_DEFAULT_MODEL": options.model,
            # the mesh's own shutdown stops its engines; a crashed orchestrator's successor adopts them
            "BRIXMESH_STOP_PODS_ON_EXIT": "1",
            "BRIXMESH_BACKEND": options.backend,
        }
        if options.backend == "ray":
            env |= {"BRIXMESH_RAY_ADDRESS": options.ray_address, "RAY_USAGE_STATS_ENABLED": "0"}
    return ProcessSpec(
        name=name,
        argv=[sys.executable, "-m", SERVICE_MODULES.get(name, f"brixmesh.{name.replace('-', '_')}")],
        env=env,
        log_path=options.state_dir / "logs" / f"{name}.log",
        readiness=ReadinessProbe(f"http://127.0.0.1:{port}/readyz", timeout_s=options.ready_timeout_s),
        # the orchestrator stops its engines on the way out (up to 15 s for vLLM); killed earlier, it would
        # leave them running
        stop_grace_s=ORCHESTRATOR_STOP_GRACE_S if name == "orchestrator" else ProcessSpec.stop_grace_s,
    )


PD_RATIO = re.compile(r"^([1-9][0-9]?)P([1-9][0-9]?)D$", re.IGNORECASE)


def pd_kv_transfer(engine: str) -> str:
    """How a ``--pd`` ratio's pods move KV: NIXL (the simulator models it; real vLLM where the ``nixl``
    package is installed), else vLLM's ExampleConnector on a shared directory (needs no extra wheels)."""
    if engine == "sim":
        return "nixl"
    try:
        check_nixl(find_install())
    except VllmNotInstalled:
        return "shared-storage"
    return "nixl"


class PdError(ValueError):
    """``--pd`` names neither a ratio nor a valid spec file; ``str()`` is one line."""


def pd_ratio_spec(ratio: str, engine: str, model: str, state_dir: Path) -> dict | None:
    """``1P1D``, ``2P1D``...: the ``default`` deployment as one role set of that many prefill and decode
    pods, with the engine's P/D KV connector; None if ``ratio`` is not such a ratio."""
    match = PD_RATIO.match(ratio)
    if match is None:
        return None
    prefill, decode = int(match[1]), int(match[2])
    kv_transfer = pd_kv_transfer(engine)
    storage = state_dir.resolve() / "pd-kv" if kv_transfer == "shared-storage" else None

    def role(name: str, replicas: int) -> dict:
        config = kv_transfer_config(kv_transfer, name, storage)
        return {"name": name, "replicas": replicas, "engine_args": ["--kv-transfer-config", config]}

    return {
        "name": "default", "model": model, "engine": engine, "replicas": 1,
        "roles": [role("prefill", prefill), role("decode", decode)],
        "update": {"max_surge": 1, "max_unavailable": 0, "role_order": "parallel"},
    }  # fmt: skip


def pd_deployments(pd: str, engine: str, model: str, state_dir: Path) -> tuple[Path, int]:
    """The deployments file for ``--pd`` (a ratio is written to ``<state_dir>/pd.yaml``) and the number of
    engine pods it runs, checked by the orchestrator's own rules; PdError says what is wrong."""
    spec = pd_ratio_spec(pd, engine, model, state_dir)
    if spec is not None:
        path = state_dir / "pd.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(spec, sort_keys=False))
    else:
        path = Path(pd)
        if not path.is_file():
            raise PdError(f"--pd must be a ratio such as 1P1D or 2P1D, or a spec file; {pd!r} is neither")
    checked = subprocess.run(
        [sys.executable, "-m", "brixmesh.orchestrator.check", str(path)], capture_output=True, text=True,
        timeout=60,
    )  # fmt: skip
    if checked.returncode != 0:
        lines = checked.stderr.strip().splitlines() or [f"exit status {checked.returncode}"]
        raise PdError(f"--pd: {lines[-1]}")
    return path, int(checked.stdout.strip())


def bundled_tokenizer_dirs(model: str) -> dict[str, str]:
    """The simulator ships the tiny model's tokenizer (real vLLM serves the same one): routers tokenize
    locally instead of asking an engine. Located without importing the simulator."""
    found = importlib.util.find_spec("brixmesh.engine_sim")
    if found is None or not found.submodule_search_locations:
        return {}
    directory = Path(next(iter(found.submodule_search_locations))) / "assets" / model
    return {model: str(directory)} if (directory / "tokenizer.json").is_file() else {}


def write_default_autoscaler(options: MeshOptions) -> Path:
    """A PodAutoscaler for the default deployment: router demand leads, KV usage backs it up."""
    spec = {
        "name": "default",
        "deployment": "default",
        "model": options.model,
        "strategy": options.autoscale,
        "min_replicas": options.engines,
        "max_replicas": options.max_engines,
        "scale_to_zero": options.engines == 0,
        "metrics": [
            {"source": "router", "metric": "demand", "target": 8},
            {"source": "pod", "metric": "kv_usage", "target": 0.7},
        ],
    }
    path = options.state_dir / "autoscaler.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


class Mesh:
    def __init__(self, options: MeshOptions, report: Callable[[str], None]) -> None:
        self.options = options
        self.report = report
        self.nats: NatsServer | None = None
        self.nats_url = options.nats_url or ""
        self.services: dict[str, RunningService] = {}
        self.admin_token = ""
        self._nats_passwords: dict[str, str] = {}
        self.engine_pods: list[dict] = []
        self.supervisor = Supervisor(on_state=self._on_state)
        self._started = False
        self.kv_tier_address = f"127.0.0.1:{free_port()}"
        """The KV tier node's block protocol (engines: ``--kv-transfer-config``'s ``tier_nodes``)."""

    @property
    def openai_base_url(self) -> str:
        return f"http://127.0.0.1:{self.options.port}/v1"

    async def start(self) -> list[str]:
        """Start everything; returns the services that did not become ready in time."""
        self.admin_token = admin_token(self.options.state_dir)
        if not self.nats_url:
            self._nats_passwords = generate_passwords()
            write_nats_passwords(self.options.state_dir, self._nats_passwords)
            config = secrets_dir(self.options.state_dir) / "nats-server.conf"
            write_secret(config, server_config(self._nats_passwords))
            nats = NatsServer(self.options.state_dir / "nats", config=config)
            self.nats = await asyncio.to_thread(nats.start)
            self.nats_url = self.nats.url
        for name in SERVICES:
            port = self.options.port if name == "router" else free_port()
            tier_port = int(self.kv_tier_address.rpartition(":")[2])
            spec = service_spec(name, port, self.nats_url, self.options, self._secret_env(name), tier_port)
            self.services[name] = RunningService(name, f"http://127.0.0.1:{port}", self.supervisor.add(spec))
        self.supervisor.start_all()
        not_ready = await self.supervisor.wait_all_ready(self.options.ready_timeout_s)
        if self.options.engines and "orchestrator" not in not_ready:
            self.engine_pods = await self.wait_engines_ready()
        self.write_prometheus_config()
        self._started = True
        write_record(
            self.options.state_dir,
            MeshRecord(
                pid=os.getpid(),
                nats_url=self.nats_url,
                openai_base_url=self.openai_base_url,
                services={name: s.url for name, s in self.services.items()},
            ),
        )
        return not_ready

    def _secret_env(self, name: str) -> dict[str, str]:
        """The admin token for every service; on the mesh's own NATS server, the service's own user."""
        env = {"BRIXMESH_ADMIN_TOKEN": self.admin_token}
        if self._nats_passwords:
            env |= {"BRIXMESH_NATS_USER": name, "BRIXMESH_NATS_PASSWORD": self._nats_passwords[name]}
        return env

    async def wait_engines_ready(self) -> list[dict]:
        """The default deployment's pods (``--pd``: every pod), once ``engines`` of them are ready (or the
        ready timeout passed)."""
        url = f"{self.services['orchestrator'].url}/v1/pods"
        deadline = asyncio.get_running_loop().time() + self.options.ready_timeout_s
        pods: list[dict] = []
        async with httpx.AsyncClient(timeout=2.0) as client:
            while asyncio.get_running_loop().time() < deadline:
                try:
                    every = self.options.deployments_file is not None
                    pods = [p for p in (await client.get(url)).json()["data"]
                            if every or p["pod"]["deployment"] == "default"]
                except (httpx.HTTPError, ValueError, KeyError):
                    pods = []
                if sum(p["ready"] for p in pods) >= self.options.engines:
                    break
                await asyncio.sleep(0.25)
        return pods

    def prometheus_config(self) -> Path:
        return self.options.state_dir.resolve() / "prometheus" / "prometheus.yml"

    def write_prometheus_config(self) -> None:
        path = self.prometheus_config()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(PROMETHEUS_CONFIG.format(config=path))
        self.write_scrape_targets(self.engine_pods)

    def write_scrape_targets(self, pods: list[dict]) -> None:
        """Prometheus file-based discovery: one group per service (label ``service``) and per engine pod."""
        groups = [
            {"targets": [service.url.removeprefix("http://")], "labels": {"service": name}}
            for name, service in self.services.items()
        ]
        groups += [
            {
                "targets": [pod["pod"]["endpoint"].removeprefix("http://").rstrip("/")],
                "labels": {
                    "service": "engine", "pod": pod["pod"]["pod"], "deployment": pod["pod"]["deployment"],
                },
            }
            for pod in pods
        ]
        path = self.prometheus_config().parent / "targets.json"
        staged = path.with_suffix(".tmp")
        staged.write_text(json.dumps(groups, indent=1))
        staged.replace(path)  # Prometheus never reads a half-written file

    async def refresh_scrape_targets(self) -> None:
        """Keep the engines in the scrape targets as the orchestrator creates and removes pods."""
        url = f"{self.services['orchestrator'].url}/v1/pods"
        async with httpx.AsyncClient(timeout=2.0) as client:
            while True:
                await asyncio.sleep(TARGETS_REFRESH_S)
                try:
                    pods = (await client.get(url)).json()["data"]
                except (httpx.HTTPError, ValueError, KeyError):
                    continue
                self.write_scrape_targets(pods)

    async def stop(self) -> None:
        await self.supervisor.stop_all()
        if self.nats is not None:
            await asyncio.to_thread(self.nats.stop)
        record_path(self.options.state_dir).unlink(missing_ok=True)

    def _on_state(self, process: SupervisedProcess, state: ProcessState) -> None:
        if not self._started:
            return
        name = process.spec.name
        if state is ProcessState.BACKOFF:
            self.report(f"{name} exited with code {process.last_exit_code}; restarting (restart #{process.restarts + 1})")
        elif state is ProcessState.CRASHLOOP:
            self.report(f"{name} is crash-looping (exit code {process.last_exit_code}); log: {process.spec.log_path}")
        elif state is ProcessState.READY:
            self.report(f"{name} ready again (pid {process.pid})")


async def run_until_signal(mesh: Mesh, on_started: Callable[[list[str]], None]) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        starting = asyncio.ensure_future(mesh.start())
        stopped_early = asyncio.ensure_future(stop.wait())
        await asyncio.wait({starting, stopped_early}, return_when=asyncio.FIRST_COMPLETED)
        if starting.done():
            on_started(starting.result())
            refreshing = asyncio.ensure_future(mesh.refresh_scrape_targets())
            await stop.wait()
            refreshing.cancel()
        else:
            starting.cancel()
        stopped_early.cancel()
    finally:
        await mesh.stop()
