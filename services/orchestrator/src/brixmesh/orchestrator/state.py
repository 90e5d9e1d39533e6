"""What the orchestrator keeps in its state directory so that a restart is not an outage:

- ``deployments/<name>.json``: each deployment as last applied (spec, generation, desired replicas, the last
  scale decision taken, and whether it came from a start-up file or the HTTP API; for role sets also each
  role's template generation, desired pods and last decision);
- ``pods/<pod>.json``: each pod it created (identity, endpoints, generation, slot, how to relaunch it), so
  that a new orchestrator adopts the engines still running instead of starting others.

Every file is written whole to a temporary file and renamed over the old one: a crash leaves the old or the
new version, never half of one. Files are private to the user (specs may carry secrets in ``env``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Generic, Literal, TypeVar

import msgspec
from brixmesh.common.files import write_atomic
from brixmesh.common.messages import PodInfo, ScaleDecision

log = logging.getLogger(__name__)

Origin = Literal["startup", "api"]
"""Who applied a deployment last: a start-up source (deployments file/dir, ``--engines``) or the HTTP API."""


class DeploymentRecord(msgspec.Struct, kw_only=True):
    spec: dict[str, Any]
    generation: int
    replicas: int
    created_at: float
    updated_at: float
    origin: Origin
    last_decision: ScaleDecision | None = None
    role_generations: dict[str, int] = msgspec.field(default_factory=dict)
    role_replicas: dict[str, int] = msgspec.field(default_factory=dict)
    role_decisions: dict[str, ScaleDecision] = msgspec.field(default_factory=dict)


class LaunchRecord(msgspec.Struct, kw_only=True):
    """The supervised command of a local pod, as launched (a relaunch after adoption reuses it as is)."""

    argv: list[str]
    env: dict[str, str]
    readiness_url: str
    readiness_timeout_s: float
    stop_grace_s: float
    restart: Literal["always", "on-failure", "never"]


class PodRecord(msgspec.Struct, kw_only=True):
    info: PodInfo
    generation: int
    slot: int
    created_at: float
    host_slot: int = -1
    draining: bool = False
    launch: LaunchRecord | None = None
    """None for an external pod (nothing to run: announced and probed only)."""
    probe_url: str = ""
    """An external pod's readiness URL."""


R = TypeVar("R", DeploymentRecord, PodRecord)


class RecordDir(Generic[R]):
    """One JSON file per named record in ``directory``."""

    def __init__(self, directory: Path, schema: type[R]) -> None:
        self.directory = directory
        self._schema = schema

    def save(self, name: str, record: R) -> None:
        write_atomic(self.directory / f"{name}.json", msgspec.json.encode(record))

    def load(self, name: str) -> R | None:
        try:
            return msgspec.json.decode((self.directory / f"{name}.json").read_bytes(), type=self._schema)
        except FileNotFoundError:
            return None

    def drop(self, name: str) -> None:
        (self.directory / f"{name}.json").unlink(missing_ok=True)

    def load_all(self) -> dict[str, R]:
        """Every readable record by name; an unreadable one is logged and skipped (never fatal at start)."""
        records: dict[str, R] = {}
        for path in sorted(self.directory.glob("*.json")):
            try:
                records[path.stem] = msgspec.json.decode(path.read_bytes(), type=self._schema)
            except (OSError, msgspec.DecodeError, msgspec.ValidationError) as exc:
                log.error("ignoring unreadable state file %s: %s", path, exc)
        return records


def deployment_records(state_dir: Path) -> RecordDir[DeploymentRecord]:
    return RecordDir(state_dir / "deployments", DeploymentRecord)


def pod_records(state_dir: Path) -> RecordDir[PodRecord]:
    return RecordDir(state_dir / "pods", PodRecord)
