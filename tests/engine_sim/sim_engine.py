"""Launches ``brixmesh-engine-sim`` as a subprocess on random loopback ports, for tests.

Its handle is an ``EngineHandle`` like the real-vLLM fixture's, so conformance tests treat both alike.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.engine_handle import EngineHandle
from tests.service_proc import consecutive_free_ports, stop_process_group

MODEL_NAME = "tiny-llama"
TOPIC = "kv-events"
BLOCK_SIZE = 32
NUM_BLOCKS = 64
MAX_MODEL_LEN = 1024
ASSETS = Path(__file__).resolve().parents[2] / "services/engine-sim/src/brixmesh/engine_sim/assets/tiny-llama"


@dataclass(frozen=True)
class SimEngine(EngineHandle):
    urls: tuple[str, ...] = ()
    """Every replica's base URL (``base_url`` is the first)."""


def _healthy(client: httpx.Client, url: str) -> bool:
    try:
        return client.get(f"{url}/health").status_code == 200
    except httpx.TransportError:
        return False


@contextlib.contextmanager
def sim_engine(
    extra_args: Sequence[str] = (), replicas: int = 1, kv_events: bool = True, startup_timeout: float = 20.0
) -> Iterator[SimEngine]:
    """Starts the simulator (``replicas`` engines) with the same geometry as the real-vLLM fixture."""
    runtime = Path(tempfile.mkdtemp(prefix="bm-sim-"))
    lora_dirs = {}
    for name in ("lora-a", "lora-b"):
        (runtime / name).mkdir()
        (runtime / name / "adapter_config.json").write_text("{}")
        lora_dirs[name] = runtime / name
    events = f"ipc://{runtime / 'kv-events.ipc'}"
    replay = f"tcp://127.0.0.1:{consecutive_free_ports(replicas)}"
    argv = [
        sys.executable, "-m", "brixmesh.engine_sim", "serve", str(ASSETS),
        "--host", "127.0.0.1", "--port", "0", "--served-model-name", MODEL_NAME,
        "--max-model-len", str(MAX_MODEL_LEN), "--block-size", str(BLOCK_SIZE),
        "--num-gpu-blocks-override", str(NUM_BLOCKS), "--enable-prefix-caching",
        "--enable-lora", "--max-loras", "2", "--max-lora-rank", "8",
        "--perf-model", "constant", "--time-to-first-token", "5", "--inter-token-latency", "2",
        "--replicas", str(replicas),
    ]  # fmt: skip
    if kv_events:
        argv += [
            "--kv-events-config",
            json.dumps(
                {
                    "enable_kv_cache_events": True,
                    "publisher": "zmq",
                    "endpoint": events,
                    "replay_endpoint": replay,
                    "topic": TOPIC,
                }
            ),
        ]
    argv += list(extra_args)
    log_path = runtime / "sim.log"
    log = open(log_path, "wb")
    process = subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=log,
        stdin=subprocess.DEVNULL,
        env={**os.environ, "PYTHONHASHSEED": "0"},
        start_new_session=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        if not line:
            process.wait(timeout=startup_timeout)
            raise RuntimeError(f"simulator exited {process.returncode}: {log_path.read_text()[-2000:]}")
        engines = json.loads(line)["engines"]
        urls = tuple(e["url"] for e in engines)
        deadline = time.monotonic() + startup_timeout
        with httpx.Client() as client:
            while not _healthy(client, urls[0]):
                if time.monotonic() > deadline:
                    raise RuntimeError("simulator not healthy")
                time.sleep(0.05)
        yield SimEngine(
            base_url=urls[0],
            model=MODEL_NAME,
            kv_events_endpoint=events,
            kv_replay_endpoint=replay,
            topic=TOPIC,
            block_size=BLOCK_SIZE,
            num_blocks=NUM_BLOCKS,
            max_model_len=MAX_MODEL_LEN,
            model_dir=ASSETS,
            lora_dirs=lora_dirs,
            pid=process.pid,
            urls=urls,
        )
    finally:
        stop_process_group(process)
        if process.stdout is not None:
            process.stdout.close()
        log.close()
        for path in sorted(runtime.rglob("*"), reverse=True):
            path.rmdir() if path.is_dir() else path.unlink()
        runtime.rmdir()
