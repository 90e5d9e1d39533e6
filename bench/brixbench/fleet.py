"""A fleet of engines run by the supervisor: simulated ones in ``brixmesh-engine-sim --replicas N`` processes,
or real vLLM (CPU build, the tiny model; ``engine="vllm"``), one process each, bound to the cores in turn.

Every engine publishes KV events on its own ``ipc://`` endpoint (which any number of subscribers may attach
to) and keeps a TCP replay socket; ``/v1/*/render`` is on (vllm-router's cache-aware policies need it).
"""

from __future__ import annotations

import asyncio
import json
import random
import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import aiohttp
from brixmesh.common import vllm_cpu
from brixmesh.common.supervisor import ProcessSpec, ProcessState, ReadinessProbe, SupervisedProcess

from brixbench.engine_metrics import GAUGES, parse_metrics

TOKENIZER_DIR = (Path(__file__).resolve().parents[2]
                 / "services/engine-sim/src/brixmesh/engine_sim/assets/tiny-llama")


class FleetError(RuntimeError):
    """The fleet did not start or could not be reset; ``str()`` is one line."""


def consecutive_free_ports(count: int, attempts: int = 200) -> int:
    """First of ``count`` consecutive free loopback ports (the simulator's ``--base-port`` contract).

    Candidates come from below the kernel's ephemeral range, where outgoing connections (and their
    TIME_WAIT) do not land; SO_REUSEADDR makes only real listeners count as taken.
    """
    rng = random.Random()
    for _ in range(attempts):
        base = rng.randrange(12000, 32000 - count)
        held = []
        try:
            for port in range(base, base + count):
                s = socket.socket()
                held.append(s)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for s in held:
                s.close()
    raise FleetError(f"no {count} consecutive free ports on 127.0.0.1")


async def wait_ready_or_exit(process: SupervisedProcess, timeout_s: float) -> bool:
    """True once ready; False when it exited (it is not restarted) or ``timeout_s`` passed."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while asyncio.get_running_loop().time() < deadline:
        if await process.wait_ready(0.2):
            return True
        if process.state in (ProcessState.EXITED, ProcessState.CRASHLOOP):
            return False
    return False


def log_tail(path: Path) -> str:
    """The last non-empty line of a log, for one-line errors."""
    try:
        lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return f"no log at {path}"
    return f"{lines[-1][:300]} (log: {path})" if lines else f"empty log {path}"


@dataclass(frozen=True, slots=True)
class FleetSpec:
    engines: int = 8
    model: str = "bench-llama-8b"
    gpu: str = "h100"
    model_profile: str = "llama-8b"
    time_scale: float = 10.0
    block_size: int = 16
    num_gpu_blocks: int | None = None
    """KV capacity per engine in blocks; None: what the GPU/model profile leaves (~450k tokens on H100)."""
    max_model_len: int = 32768
    max_num_seqs: int | None = None
    processes: int = 2
    """Simulator processes the engines are split over (each serves its share with ``--replicas``): the
    engines' own CPU work (tokenising, rendering for routers that ask) then spreads over the cores."""
    extra_args: tuple[str, ...] = ()
    engine: Literal["sim", "vllm"] = "sim"
    """``vllm``: real vLLM engines (``model`` is then their served name; the time scale should be 1)."""


@dataclass(slots=True)
class Fleet:
    spec: FleetSpec
    workdir: Path
    urls: list[str] = field(default_factory=list)
    kv_endpoints: list[str] = field(default_factory=list)
    """The ipc:// PUB endpoint of each engine (same order as ``urls``)."""
    kv_replay_endpoints: list[str] = field(default_factory=list)
    processes: list[SupervisedProcess] = field(default_factory=list)

    @property
    def max_model_len(self) -> int:
        """The spec's, lowered to what the KV cache can hold (the simulator refuses more, as vLLM)."""
        if self.spec.num_gpu_blocks is None:
            return self.spec.max_model_len
        return min(self.spec.max_model_len, (self.spec.num_gpu_blocks - 1) * self.spec.block_size)

    def _process_spec(self, index: int, engines: int, timeout_s: float) -> ProcessSpec:
        spec = self.spec
        base_port = consecutive_free_ports(engines)
        replay_port = consecutive_free_ports(engines)
        events = f"ipc://{self.workdir / f'kv-events-p{index}'}"
        argv = [sys.executable, "-m", "brixmesh.engine_sim", "serve", str(TOKENIZER_DIR),
                "--served-model-name", spec.model, "--host", "127.0.0.1",
                "--replicas", str(engines), "--base-port", str(base_port), "--port", str(base_port),
                "--gpu", spec.gpu, "--model-profile", spec.model_profile, "--time-scale", str(spec.time_scale),
                "--block-size", str(spec.block_size), "--max-model-len", str(self.max_model_len),
                "--enable-prefix-caching", "--enable-scale-out", "--enable-prompt-tokens-details",
                "--kv-events-config", json.dumps({"enable_kv_cache_events": True, "publisher": "zmq",
                                                  "endpoint": events, "topic": "",
                                                  "replay_endpoint": f"tcp://127.0.0.1:{replay_port}"})]
        if spec.num_gpu_blocks is not None:
            argv += ["--num-gpu-blocks-override", str(spec.num_gpu_blocks)]
        if spec.max_num_seqs is not None:
            argv += ["--max-num-seqs", str(spec.max_num_seqs)]
        argv += list(spec.extra_args)
        urls = [f"http://127.0.0.1:{base_port + i}" for i in range(engines)]
        self.urls += urls
        self.kv_endpoints += [events if i == 0 else f"{events}-{i}" for i in range(engines)]
        self.kv_replay_endpoints += [f"tcp://127.0.0.1:{replay_port + i}" for i in range(engines)]
        log = self.workdir / f"engine-sim-p{index}.log"
        return ProcessSpec(name=f"engine-sim-p{index}", argv=argv, log_path=log, restart="never",
                           readiness=ReadinessProbe(f"{urls[-1]}/health", timeout_s=timeout_s))

    def _vllm_process_spec(self, index: int, install: vllm_cpu.VllmInstall, timeout_s: float) -> ProcessSpec:
        spec = self.spec
        port, replay_port = consecutive_free_ports(1), consecutive_free_ports(1)
        events = f"ipc://{self.workdir / f'kv-events-{index}'}"
        replay = f"tcp://127.0.0.1:{replay_port}"
        extra = ["--max-model-len", str(self.max_model_len), "--enable-prompt-tokens-details",
                 "--kv-events-config", vllm_cpu.kv_events_config(events, replay, topic="")]
        if spec.num_gpu_blocks is not None:
            extra += ["--num-gpu-blocks-override", str(spec.num_gpu_blocks)]
        if spec.max_num_seqs is not None:
            extra += ["--max-num-seqs", str(spec.max_num_seqs)]
        argv = vllm_cpu.serve_argv(install, port=port, kv_events_endpoint=events, kv_replay_endpoint=replay,
                                   served_model_name=spec.model, extra_args=[*extra, *spec.extra_args])
        cores = vllm_cpu.usable_cores()
        tmp = self.workdir / f"vllm-{index}-tmp"
        tmp.mkdir(parents=True, exist_ok=True)
        url = f"http://127.0.0.1:{port}"
        self.urls.append(url)
        self.kv_endpoints.append(events)
        self.kv_replay_endpoints.append(replay)
        return ProcessSpec(name=f"vllm-{index}", argv=argv, log_path=self.workdir / f"vllm-{index}.log",
                           env=vllm_cpu.engine_env(str(cores[index % len(cores)]), install.venv, tmp),
                           restart="never",
                           readiness=ReadinessProbe(f"{url}/health", timeout_s=timeout_s))

    def _process_specs(self, timeout_s: float) -> list[ProcessSpec]:
        if self.spec.engine == "vllm":
            try:
                install = vllm_cpu.find_install()
            except vllm_cpu.VllmNotInstalled as exc:
                raise FleetError(str(exc)) from None
            return [self._vllm_process_spec(i, install, timeout_s) for i in range(self.spec.engines)]
        count = max(1, min(self.spec.processes, self.spec.engines))
        shares = [self.spec.engines // count + (1 if i < self.spec.engines % count else 0) for i in range(count)]
        return [self._process_spec(index, engines, timeout_s) for index, engines in enumerate(shares)]

    async def start(self, timeout_s: float | None = None) -> Fleet:
        """Start the engines: simulated ones split over ``spec.processes`` simulator processes (each
        ``--replicas k``), or one vLLM process per engine (they take 30-90 s to start on two busy cores)."""
        timeout_s = timeout_s or (300.0 if self.spec.engine == "vllm" else 60.0)
        self.workdir.mkdir(parents=True, exist_ok=True)
        for process_spec in self._process_specs(timeout_s):
            process = SupervisedProcess(process_spec)
            self.processes.append(process)
            process.start()
        for process in self.processes:
            if not await wait_ready_or_exit(process, timeout_s):
                await self.stop()
                raise FleetError(f"engine simulator did not start: {log_tail(process.spec.log_path)}")
        return self

    async def reset(self) -> None:
        """Empty every engine's prefix cache (engines publish AllBlocksCleared)."""
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
            for url in self.urls:
                async with session.post(f"{url}/reset_prefix_cache") as response:
                    if response.status != 200:
                        raise FleetError(f"{url}/reset_prefix_cache answered {response.status}")

    async def wait_idle(self, timeout_s: float = 60.0) -> None:
        """Wait until no engine runs or queues a request (a contender's stragglers must not leak over)."""
        deadline = asyncio.get_running_loop().time() + timeout_s
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
            while True:
                busy = 0.0
                for url in self.urls:
                    async with session.get(f"{url}/metrics") as response:
                        values = parse_metrics(await response.text())
                    busy += sum(values.get(name, 0.0) for name in GAUGES)
                if busy == 0:
                    return
                if asyncio.get_running_loop().time() > deadline:
                    raise FleetError(f"engines still busy after {timeout_s:.0f}s")
                await asyncio.sleep(0.2)

    async def stop(self) -> None:
        for process in self.processes:
            await process.stop()
