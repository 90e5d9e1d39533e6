"""What every source reports: signals, and the one interface sources share."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True)
class Signal:
    """One observation of something wrong (or worth watching) on one GPU or one engine of this node.

    ``kind`` names a :mod:`~brixmesh.gpu_doctor.catalogue` entry; ``value`` is what the entry's threshold is
    compared with (an Xid code for ``xid``, an increase since the last poll for counters, 1 for a state that
    holds). A state signal is reported at every poll while it holds; the policy measures how long."""

    kind: str
    gpu: str = ""
    """GPU index on the node; "" for an engine symptom whose pod's GPU is not known."""
    pod: str = ""
    """The engine pod it concerns (engine symptoms); "" for GPU telemetry."""
    value: float = 1.0
    source: str = ""
    detail: dict[str, str] = field(default_factory=dict, compare=False, hash=False)


class Source(Protocol):
    name: str

    async def poll(self, now: float) -> list[Signal]:
        """Signals seen since the last poll (counters as increases), plus every state that holds now."""

    async def close(self) -> None:
        """Release what the source holds (NVML handle, HTTP client)."""
