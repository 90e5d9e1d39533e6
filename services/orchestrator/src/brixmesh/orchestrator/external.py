"""Engines the orchestrator does not run (``external:`` endpoints): probed, never started or stopped.

A monitor polls the readiness URL and reports every change between serving and not serving; the local
backend turns those into the same ``ready`` / ``removed`` / ``added`` events as for its own processes.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import httpx


class EndpointMonitor:
    def __init__(self, readiness_url: str, on_change: Callable[[bool], None], *, interval_s: float = 1.0) -> None:
        self.readiness_url = readiness_url
        self.serving = False
        self._on_change = on_change
        self._interval_s = interval_s
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"probe:{self.readiness_url}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        async with httpx.AsyncClient(timeout=max(0.5, min(2.0, self._interval_s))) as client:
            while True:
                try:
                    serving = (await client.get(self.readiness_url)).is_success
                except httpx.HTTPError:
                    serving = False
                if serving != self.serving:
                    self.serving = serving
                    self._on_change(serving)
                await asyncio.sleep(self._interval_s)
