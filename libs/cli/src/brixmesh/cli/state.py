"""Where a running embedded mesh records itself, so that ``status`` and ``tap`` find its NATS server."""

from __future__ import annotations

import os
from pathlib import Path

import msgspec


class MeshRecord(msgspec.Struct, kw_only=True):
    pid: int
    nats_url: str
    openai_base_url: str
    services: dict[str, str]
    """service name -> HTTP URL"""


def default_state_dir() -> Path:
    return Path(os.environ.get("BRIXMESH_STATE_DIR", ".brixmesh"))


def record_path(state_dir: Path) -> Path:
    return state_dir / "mesh.json"


def write_record(state_dir: Path, record: MeshRecord) -> None:
    state_dir.mkdir(parents=True, exist_ok=True)
    record_path(state_dir).write_bytes(msgspec.json.encode(record))


def read_record(state_dir: Path) -> MeshRecord | None:
    try:
        record = msgspec.json.decode(record_path(state_dir).read_bytes(), type=MeshRecord)
    except (OSError, msgspec.DecodeError, msgspec.ValidationError):
        return None
    try:
        os.kill(record.pid, 0)
    except ProcessLookupError:
        return None
    return record


def resolve_nats_url(explicit: str | None, state_dir: Path) -> str | None:
    """``--nats-url``, else the running mesh's, else ``BRIXMESH_NATS_URL``."""
    if explicit:
        return explicit
    record = read_record(state_dir)
    if record is not None:
        return record.nats_url
    return os.environ.get("BRIXMESH_NATS_URL")
