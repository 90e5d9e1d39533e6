"""Static endpoints file for standalone use (no orchestrator).

JSON: ``{"endpoints": [{"name": "pod-a", "url": "http://127.0.0.1:8001", "model": "tiny-llama",
"adapters": ["lora-a"], "role": "both", "labels": {}}]}`` (or the bare list). ``name`` defaults to the URL.
P/D pods add ``role`` (prefill/decode), ``role_set``, ``kv_transfer`` and ``bootstrap_port`` (as ``PodInfo``).
"""

from __future__ import annotations

import json
from pathlib import Path

import msgspec

from brixmesh.router.routing.endpoint import Endpoint


class StaticEndpoint(msgspec.Struct, forbid_unknown_fields=True):
    url: str
    model: str
    name: str = ""
    adapters: list[str] = []
    role: str = "both"
    role_set: str = ""
    kv_transfer: str = ""
    bootstrap_port: int = 0
    labels: dict[str, str] = {}


class StaticFile(msgspec.Struct):
    endpoints: list[StaticEndpoint]


class EndpointsFileError(ValueError):
    """The endpoints file is missing or malformed; ``str()`` is one line."""


def load_endpoints(path: Path) -> list[Endpoint]:
    try:
        raw = json.loads(path.read_text())
    except OSError as exc:
        raise EndpointsFileError(f"cannot read endpoints file {path}: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise EndpointsFileError(f"endpoints file {path} is not JSON: {exc}") from None
    if isinstance(raw, list):
        raw = {"endpoints": raw}
    try:
        parsed = msgspec.convert(raw, StaticFile)
    except msgspec.ValidationError as exc:
        raise EndpointsFileError(f"endpoints file {path}: {exc}") from None
    if not parsed.endpoints:
        raise EndpointsFileError(f"endpoints file {path} lists no endpoints")
    return [
        Endpoint(
            name=item.name or item.url,
            url=item.url.rstrip("/"),
            model=item.model,
            adapters=frozenset(item.adapters),
            role=item.role,
            role_set=item.role_set,
            kv_transfer=item.kv_transfer,
            bootstrap_port=item.bootstrap_port,
            labels=dict(item.labels),
        )
        for item in parsed.endpoints
    ]
