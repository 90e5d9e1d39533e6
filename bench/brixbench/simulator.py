"""One simulator process (``brixmesh.engine_sim serve``) serving one or more engines, for the bench scripts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx


@contextmanager
def simulator(
    args: list[str], *, model: str = "tiny-llama", cpu: int | None = None, healthy_within_s: float | None = None
) -> Iterator[tuple[int, list[str]]]:
    """``(pid, engine URLs)`` of a simulator started with ``args``; with ``cpu`` pinned to that core; with
    ``healthy_within_s`` once every engine answers ``/health``. Stopped on exit."""
    argv = [sys.executable, "-m", "brixmesh.engine_sim", "serve", model, "--port", "0", *args]
    if cpu is not None and hasattr(os, "sched_setaffinity"):
        argv = ["taskset", "-c", str(cpu), *argv]
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        if not line:
            raise RuntimeError("simulator failed to start")
        urls = [e["url"] for e in json.loads(line)["engines"]]
        if healthy_within_s is not None:
            _wait_healthy(urls, healthy_within_s)
        yield process.pid, urls
    finally:
        process.terminate()
        process.wait(timeout=10)


def _wait_healthy(urls: list[str], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    with httpx.Client() as client:
        for url in urls:
            while client.get(f"{url}/health").status_code != 200:
                if time.monotonic() > deadline:
                    raise RuntimeError("simulator not healthy")
                time.sleep(0.05)
