"""The contender protocol and a supervised router process with an OpenAI-facing readiness check."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Protocol

import aiohttp
from brixmesh.common.supervisor import ProcessSpec, ReadinessProbe, SupervisedProcess

from brixbench.client import Target
from brixbench.fleet import Fleet, log_tail, wait_ready_or_exit


class ContenderError(RuntimeError):
    """A contender did not start; ``str()`` is one line (the runner reports it and goes on)."""


class Contender(Protocol):
    name: str

    def unavailable(self) -> str | None:
        """Why this contender cannot run on this machine, or None."""
        ...

    async def start(self, fleet: Fleet, workdir: Path) -> Target: ...

    @property
    def pid(self) -> int | None: ...

    async def stop(self) -> None: ...


Check = Callable[[aiohttp.ClientSession], Awaitable[bool]]


class RouterProcess:
    """A router subprocess: started under the supervisor, ready when ``/health``-like ``probe_url`` answers
    2xx and then ``ready_check`` (e.g. "all workers registered") holds."""

    def __init__(self, name: str, argv: list[str], probe_url: str, workdir: Path,
                 env: dict[str, str] | None = None, ready_check: Check | None = None) -> None:
        self.log_path = workdir / f"{name}.log"
        self.process = SupervisedProcess(ProcessSpec(
            name=name, argv=argv, env=env or {}, log_path=self.log_path, restart="never",
            readiness=ReadinessProbe(probe_url, timeout_s=60.0)))
        self.ready_check = ready_check

    @property
    def pid(self) -> int | None:
        return self.process.pid

    async def start(self, timeout_s: float = 60.0) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.process.start()
        if not await wait_ready_or_exit(self.process, timeout_s):
            await self.process.stop()
            raise ContenderError(f"{self.process.spec.name} did not start: {log_tail(self.log_path)}")
        if self.ready_check is not None:
            deadline = asyncio.get_running_loop().time() + timeout_s
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
                while not await self.ready_check(session):
                    if asyncio.get_running_loop().time() > deadline:
                        await self.process.stop()
                        raise ContenderError(f"{self.process.spec.name} never became ready to route: "
                                             f"{log_tail(self.log_path)}")
                    await asyncio.sleep(0.2)

    async def stop(self) -> None:
        await self.process.stop()
