"""Supervised subprocesses: own process group, readiness probe, restart with exponential backoff, crash-loop
detection, clean group stop, and adoption of a group a dead supervisor left running (Linux pidfds). Used
by ``brixmesh up`` for services and by the orchestrator's local backend for engine pods.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import os
import signal
import subprocess
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import httpx

log = logging.getLogger(__name__)


class ProcessState(str, enum.Enum):
    STARTING = "starting"
    READY = "ready"
    BACKOFF = "backoff"
    CRASHLOOP = "crashloop"
    EXITED = "exited"
    STOPPED = "stopped"


@dataclass(frozen=True)
class ReadinessProbe:
    """HTTP GET ``url`` answering 2xx (or, with ``tcp``, the port accepting connections)."""

    url: str
    tcp: bool = False
    interval_s: float = 0.1
    timeout_s: float = 120.0


@dataclass(frozen=True)
class ProcessSpec:
    name: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    cwd: str | None = None
    log_path: Path | None = None
    readiness: ReadinessProbe | None = None
    restart: Literal["always", "on-failure", "never"] = "always"
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 30.0
    crashloop_restarts: int = 5
    """Restarts within ``crashloop_window_s`` after which the process is reported as crash-looping."""
    crashloop_window_s: float = 60.0
    stop_grace_s: float = 10.0


StateListener = Callable[["SupervisedProcess", ProcessState], None]


class SupervisedProcess:
    """One process group: started as a child, or adopted from a supervisor that died (then restarted as a
    child once it exits). Exits are watched through a pidfd, which works for both."""

    def __init__(self, spec: ProcessSpec, on_state: StateListener | None = None) -> None:
        self.spec = spec
        self.state = ProcessState.STOPPED
        self.pid: int | None = None
        self.restarts = 0
        self.last_exit_code: int | None = None
        """None after an adopted process exited: its exit status went to its real parent."""
        self.started_at: float | None = None
        self.adopted = False
        """True while the running process is one this supervisor adopted rather than started."""
        self._on_state = on_state
        self._exited: asyncio.Future[None] | None = None
        self._runner: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()
        self._recent_restarts: deque[float] = deque()
        self._stop_requested = False

    def start(self) -> None:
        self._begin(None)

    def adopt(self, pid: int) -> None:
        """Supervise the running group leader ``pid`` (which the caller identified as this process):
        probe its readiness, watch it, and start a child in its place when it exits."""
        self._begin(pid)

    def _begin(self, adopted_pid: int | None) -> None:
        if self._runner is not None and not self._runner.done():
            return
        self._stop_requested = False
        self._runner = asyncio.get_running_loop().create_task(
            self._run(adopted_pid), name=f"supervise:{self.spec.name}"
        )

    async def wait_ready(self, timeout_s: float) -> bool:
        try:
            await asyncio.wait_for(self._ready.wait(), timeout_s)
        except asyncio.TimeoutError:
            return False
        return True

    async def stop(self) -> None:
        """SIGTERM the whole process group, SIGKILL after ``stop_grace_s``; no restart afterwards."""
        self._stop_requested = True
        await self._terminate_group()
        await self._cancel_runner()
        self._set_state(ProcessState.STOPPED)

    async def release(self) -> None:
        """Stop supervising and leave the process running, for a later supervisor to :meth:`adopt`."""
        self._stop_requested = True
        await self._cancel_runner()

    def signal(self, signum: int) -> None:
        if self.pid is not None and self._exited is not None and not self._exited.done():
            os.killpg(self.pid, signum)

    async def _cancel_runner(self) -> None:
        if self._runner is not None:
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._runner

    async def _run(self, adopted_pid: int | None) -> None:
        backoff = self.spec.backoff_initial_s
        while not self._stop_requested:
            launched_at = time.monotonic()
            if adopted_pid is not None:
                code = await self._watch(adopted_pid, None)
                adopted_pid = None
            else:
                code = await self._launch_and_wait()
            if self._stop_requested:
                return
            self.last_exit_code = code
            if self.spec.restart == "never" or (self.spec.restart == "on-failure" and code == 0):
                self._set_state(ProcessState.EXITED)
                return
            if time.monotonic() - launched_at > self.spec.backoff_max_s:
                backoff = self.spec.backoff_initial_s
            now = time.monotonic()
            self._recent_restarts.append(now)
            while self._recent_restarts and now - self._recent_restarts[0] > self.spec.crashloop_window_s:
                self._recent_restarts.popleft()
            crashlooping = len(self._recent_restarts) >= self.spec.crashloop_restarts
            self._set_state(ProcessState.CRASHLOOP if crashlooping else ProcessState.BACKOFF)
            log.warning(
                "%s exited with %s; restarting in %.1fs%s", self.spec.name, code, backoff,
                " (crash loop)" if crashlooping else "",
            )
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self.spec.backoff_max_s)
            self.restarts += 1

    async def _launch_and_wait(self) -> int | None:
        env = {**os.environ, **self.spec.env}
        log_file = None
        if self.spec.log_path is not None:
            self.spec.log_path.parent.mkdir(parents=True, exist_ok=True)
            log_file = open(self.spec.log_path, "ab")  # noqa: SIM115 (the child keeps its own descriptor)
        try:
            # Popen rather than an asyncio subprocess: an asyncio transport kills its child when it is
            # closed, and a child released at shutdown must outlive this process.
            child = subprocess.Popen(
                self.spec.argv,
                env=env,
                cwd=self.spec.cwd,
                stdin=subprocess.DEVNULL,
                stdout=log_file or subprocess.DEVNULL,
                stderr=subprocess.STDOUT if log_file else subprocess.DEVNULL,
                start_new_session=True,
            )
        except OSError as exc:
            self._ready.clear()
            self._set_state(ProcessState.STARTING)
            log.error("%s could not start: %s", self.spec.name, exc)
            return 127
        finally:
            if log_file is not None:
                log_file.close()
        return await self._watch(child.pid, child)

    async def _watch(self, pid: int, child: subprocess.Popen[bytes] | None) -> int | None:
        """Probe and wait until the group leader ``pid`` exits; then kill what it left in its group.
        Returns its exit code (None for an adopted process, or one already gone)."""
        self._ready.clear()
        self.pid = pid
        self.adopted = child is None
        self.started_at = time.time()
        self._set_state(ProcessState.STARTING)
        loop = asyncio.get_running_loop()
        try:
            pidfd = os.pidfd_open(pid)
        except ProcessLookupError:
            return None
        exited = self._exited = loop.create_future()
        loop.add_reader(pidfd, lambda: exited.done() or exited.set_result(None))
        probe = loop.create_task(self._probe_ready())
        try:
            await asyncio.shield(exited)
        finally:
            loop.remove_reader(pidfd)
            os.close(pidfd)
            probe.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await probe
        # the leader is gone (a zombie still holds its pid for a child); nothing it forked may keep running
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
        return child.wait() if child is not None else None

    async def _probe_ready(self) -> None:
        probe = self.spec.readiness
        if probe is None:
            self._mark_ready()
            return
        deadline = time.monotonic() + probe.timeout_s
        async with httpx.AsyncClient(timeout=1.0) as client:
            while time.monotonic() < deadline:
                if await _probe_once(client, probe):
                    self._mark_ready()
                    return
                await asyncio.sleep(probe.interval_s)
        log.warning("%s not ready after %.0fs; restarting it", self.spec.name, probe.timeout_s)
        self.signal(signal.SIGTERM)

    def _mark_ready(self) -> None:
        self._ready.set()
        self._set_state(ProcessState.READY)

    async def _terminate_group(self) -> None:
        exited = self._exited
        if self.pid is None or exited is None or exited.done():
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(asyncio.shield(exited), self.spec.stop_grace_s)
        except asyncio.TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGKILL)
            await asyncio.shield(exited)

    def _set_state(self, state: ProcessState) -> None:
        if state is self.state:
            return
        self.state = state
        if self._on_state is not None:
            self._on_state(self, state)


async def _probe_once(client: httpx.AsyncClient, probe: ReadinessProbe) -> bool:
    if probe.tcp:
        host, _, port = probe.url.rpartition(":")
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(host, int(port)), 1.0)
        except (OSError, asyncio.TimeoutError):
            return False
        writer.close()
        return True
    try:
        return (await client.get(probe.url)).is_success
    except httpx.HTTPError:
        return False


class Supervisor:
    """A set of supervised processes started together and stopped together (in reverse order)."""

    def __init__(self, on_state: StateListener | None = None) -> None:
        self.processes: dict[str, SupervisedProcess] = {}
        self._on_state = on_state

    def add(self, spec: ProcessSpec) -> SupervisedProcess:
        if spec.name in self.processes:
            raise ValueError(f"process {spec.name!r} already supervised")
        process = SupervisedProcess(spec, self._on_state)
        self.processes[spec.name] = process
        return process

    async def remove(self, name: str) -> None:
        process = self.processes.pop(name)
        await process.stop()

    def start_all(self) -> None:
        for process in self.processes.values():
            process.start()

    async def wait_all_ready(self, timeout_s: float) -> list[str]:
        """Names of the processes that did not become ready in time."""
        results = await asyncio.gather(*(p.wait_ready(timeout_s) for p in self.processes.values()))
        return [name for name, ok in zip(self.processes, results) if not ok]

    async def stop_all(self) -> None:
        await asyncio.gather(*(p.stop() for p in reversed(list(self.processes.values()))))
