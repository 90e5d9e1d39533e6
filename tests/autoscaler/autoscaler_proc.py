"""Runs ``python -m brixmesh.autoscaler`` as a subprocess for tests, on a random loopback port."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from tests.service_proc import service_process


@contextlib.asynccontextmanager
async def autoscaler_process(
    nats_url: str, spec_file: Path, log_path: Path, **settings: str
) -> AsyncIterator[str]:
    """Yields the service's base URL once ``/readyz`` answers 200."""
    env = {
        "BRIXMESH_AUTOSCALER_SPECS": str(spec_file),
        **{f"BRIXMESH_{k.upper()}": v for k, v in settings.items()},
    }
    async with service_process("brixmesh.autoscaler", nats_url, log_path, env) as service:
        yield service.url
