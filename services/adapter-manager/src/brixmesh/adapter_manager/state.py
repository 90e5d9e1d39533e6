"""Registered adapters in ``<state_dir>/adapters/<name>.json``, one file each, and the unregistered ones still
to unload in ``<state_dir>/adapters-retired.json``, written atomically: a restarted adapter-manager knows
every adapter, its phase and where it was placed."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Literal

import msgspec
from brixmesh.common.files import write_atomic
from brixmesh.common.messages import AdapterPhase

log = logging.getLogger(__name__)

Origin = Literal["file", "api", "resource"]


class AdapterRecord(msgspec.Struct, kw_only=True):
    spec: dict[str, Any]
    origin: Origin
    created_at: float
    updated_at: float
    phase: AdapterPhase = "Pending"
    reason: str = ""
    pods: list[str] = msgspec.field(default_factory=list)
    """Pods holding it, as last verified."""
    desired: list[str] = msgspec.field(default_factory=list)


class AdapterStore:
    def __init__(self, state_dir: Path) -> None:
        self.directory = state_dir / "adapters"
        self.retired_file = state_dir / "adapters-retired.json"
        """Adapters unregistered but maybe still loaded somewhere: a restarted manager unloads them too."""

    def save_retired(self, names: set[str]) -> None:
        write_atomic(self.retired_file, msgspec.json.encode(sorted(names)))

    def load_retired(self) -> set[str]:
        try:
            return set(msgspec.json.decode(self.retired_file.read_bytes(), type=list[str]))
        except FileNotFoundError:
            return set()
        except (OSError, msgspec.DecodeError, msgspec.ValidationError) as exc:
            log.error("ignoring unreadable state file %s: %s", self.retired_file, exc)
            return set()

    def save(self, name: str, record: AdapterRecord) -> None:
        write_atomic(self.directory / f"{name}.json", msgspec.json.encode(record))

    def drop(self, name: str) -> None:
        (self.directory / f"{name}.json").unlink(missing_ok=True)

    def load_all(self) -> dict[str, AdapterRecord]:
        """Every readable record; an unreadable one is logged and skipped (never fatal at start)."""
        records: dict[str, AdapterRecord] = {}
        for path in sorted(self.directory.glob("*.json")):
            try:
                records[path.stem] = msgspec.json.decode(path.read_bytes(), type=AdapterRecord)
            except (OSError, msgspec.DecodeError, msgspec.ValidationError) as exc:
                log.error("ignoring unreadable state file %s: %s", path, exc)
        return records
