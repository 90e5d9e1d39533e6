"""Runs real router processes (``python -m brixmesh.router``) on random loopback ports for tests."""

from __future__ import annotations

import asyncio
import contextlib
import json
import tempfile
import threading
from collections.abc import Iterator, Sequence
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import TypeVar

from brixmesh.common.ports import free_port
from tests.service_proc import ServiceProcess, service_process

MODEL = "tiny-llama"

T = TypeVar("T")


def endpoints_file(
    directory: Path,
    urls: Sequence[str],
    names: Sequence[str] | None = None,
    adapters: Sequence[str] = ("lora-a",),
) -> Path:
    path = directory / f"endpoints-{free_port()}.json"
    names = names or [f"pod-{i}" for i in range(len(urls))]
    path.write_text(
        json.dumps(
            {
                "endpoints": [
                    {"name": name, "url": url, "model": MODEL, "adapters": list(adapters)}
                    for name, url in zip(names, urls)
                ]
            }
        )
    )
    return path


@contextlib.contextmanager
def router_process(
    nats_url: str, *, endpoints: Path | None = None, timeout_s: float = 20.0, **settings: object
) -> Iterator[ServiceProcess]:
    """Start a router (:func:`tests.service_proc.service_process`) from sync code too: sync tests and fixtures
    use it. ``settings`` become ``BRIXMESH_<NAME>`` (lists/dicts as JSON)."""
    env = {"BRIXMESH_HOST": "127.0.0.1"}
    if endpoints is not None:
        env["BRIXMESH_ENDPOINTS_FILE"] = str(endpoints)
    for name, value in settings.items():
        env[f"BRIXMESH_{name.upper()}"] = json.dumps(value) if isinstance(value, (list, dict)) else str(value)
    log_path = Path(tempfile.mkstemp(prefix="bm-router-", suffix=".log")[1])
    try:
        process = service_process(
            "brixmesh.router", nats_url, log_path, env, startup_timeout_s=timeout_s, stop_grace_s=15.0
        )
        with _entered_on_own_loop(process) as router:
            yield router
    finally:
        log_path.unlink(missing_ok=True)


@contextlib.contextmanager
def _entered_on_own_loop(manager: AbstractAsyncContextManager[T]) -> Iterator[T]:
    """Enter and exit ``manager`` on an event loop of its own, in another thread: the caller may be sync, or
    inside a test's running loop (which cannot run it to completion from a sync call)."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="router-process-loop", daemon=True)
    thread.start()
    try:
        entered = asyncio.run_coroutine_threadsafe(manager.__aenter__(), loop).result()
        try:
            yield entered
        finally:
            asyncio.run_coroutine_threadsafe(manager.__aexit__(None, None, None), loop).result()
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        loop.close()


def metric_value(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels`` in a Prometheus text page."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name) or line.startswith("#"):
            continue
        series, _, value = line.rpartition(" ")
        if series.split("{")[0] != name:
            continue
        if all(f'{k}="{v}"' in series for k, v in labels.items()):
            total += float(value)
    return total
