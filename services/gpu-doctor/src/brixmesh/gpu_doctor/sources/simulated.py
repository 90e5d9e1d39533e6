"""A simulated GPU telemetry source driven by a fault script: which fault, which GPU, when.

    faults:
      - {at_s: 30, gpu: "1", signal: xid, value: 79}            # one event
      - {at_s: 60, gpu: "0", signal: throttle_hw, for_s: 45}     # a state held 45 s
      - {at_s: 90, gpu: "2", signal: xid, value: 94, every_s: 20, times: 5}   # flapping

``at_s`` counts from the doctor's start (faults added at run time through ``POST /admin/faults``: from the
moment they are added). ``for_s`` 0 is a one-off event, reported at one poll; a longer ``for_s`` reports the
state at every poll while it lasts. ``every_s``/``times`` repeat the fault. Signals are the catalogue's
kinds, so anything NVML or a DCGM exporter can report can be scripted.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
import yaml

from brixmesh.gpu_doctor.catalogue import RULES
from brixmesh.gpu_doctor.signals import Signal


class ScriptError(ValueError):
    pass


class ScriptedFault(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    signal: str
    gpu: str
    at_s: float = 0.0
    value: float = 1.0
    for_s: float = 0.0
    every_s: float = 0.0
    times: int = 1


def parse_faults(raw: Any, source: str) -> list[ScriptedFault]:
    """Faults from a decoded script: a mapping with ``faults``, or the list itself."""
    items = raw.get("faults") if isinstance(raw, dict) else raw
    if not isinstance(items, list):
        raise ScriptError(f"{source}: expected a list of faults (or a mapping with 'faults')")
    faults = []
    for index, item in enumerate(items):
        if isinstance(item, dict) and "gpu" in item:
            item = {**item, "gpu": str(item["gpu"])}
        try:
            fault = msgspec.convert(item, ScriptedFault)
        except msgspec.ValidationError as exc:
            raise ScriptError(f"{source}: fault {index}: {exc}") from None
        if fault.signal != "xid" and fault.signal not in RULES:
            raise ScriptError(f"{source}: fault {index}: unknown signal {fault.signal!r}; "
                              f"choose xid or one of {', '.join(sorted(RULES))}")
        if fault.at_s < 0 or fault.for_s < 0 or fault.every_s < 0 or fault.times < 1:
            raise ScriptError(f"{source}: fault {index}: at_s, for_s, every_s must be >= 0 and times >= 1")
        if fault.times > 1 and fault.every_s <= fault.for_s:
            raise ScriptError(f"{source}: fault {index}: a repeated fault needs every_s > for_s")
        faults.append(fault)
    return faults


def load_script(path: Path) -> list[ScriptedFault]:
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ScriptError(f"fault script {path}: {exc}") from None
    return parse_faults(raw, f"fault script {path}")


class SimulatedSource:
    name = "sim"

    def __init__(self, faults: list[ScriptedFault], started_at: float) -> None:
        self._scheduled: list[tuple[float, ScriptedFault]] = []
        self._reported: set[tuple[int, int]] = set()
        """One-off occurrences already reported: (fault number, repetition)."""
        self.add(faults, started_at)

    def add(self, faults: list[ScriptedFault], origin: float) -> None:
        self._scheduled += [(origin, fault) for fault in faults]

    def scheduled(self) -> list[dict[str, Any]]:
        return [{"origin": origin, **msgspec.to_builtins(fault)} for origin, fault in self._scheduled]

    async def poll(self, now: float) -> list[Signal]:
        signals = []
        for number, (origin, fault) in enumerate(self._scheduled):
            for repetition in range(fault.times):
                start = origin + fault.at_s + repetition * fault.every_s
                if now < start:
                    break
                if fault.for_s > 0:
                    active = now < start + fault.for_s
                else:
                    active = (number, repetition) not in self._reported
                    self._reported.add((number, repetition))
                if active:
                    detail = {"script_fault": str(number), "repetition": str(repetition)}
                    signals.append(Signal(fault.signal, gpu=fault.gpu, value=fault.value, source=self.name,
                                          detail=detail))
        return signals

    async def close(self) -> None:
        return None
