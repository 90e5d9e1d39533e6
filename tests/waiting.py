"""Waiting in tests for something another task, process or server does, without fixed sleeps."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Callable


async def eventually(
    check: Callable[[], object], timeout_s: float = 10.0, *, describe: Callable[[], str] | None = None
) -> None:
    """Poll ``check`` (sync, or returning an awaitable) until it is truthy; AssertionError after
    ``timeout_s``, with ``describe()`` appended."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            detail = f"; {describe()}" if describe is not None else ""
            raise AssertionError(f"condition not reached in {timeout_s}s{detail}")
        await asyncio.sleep(0.05)
