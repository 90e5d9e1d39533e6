"""Cordons: nodes, or single GPUs of a node, on which no new pod is placed (pods already there keep running
until something drains them). Set by a gpu-doctor's decision or by hand; lifted only by hand
(``DELETE /v1/cordons/{node}``): a GPU that needed a reset or a node whose GPU fell off the bus stays out of
service until an operator says it is fixed. Durable in ``<state_dir>/cordons.json``.
"""

from __future__ import annotations

import time
from pathlib import Path

import msgspec

from brixmesh.orchestrator.state import write_atomic


class Cordon(msgspec.Struct, kw_only=True):
    node: str
    gpu: str = ""
    """"" cordons the whole node."""
    reason: str
    since: float


class Cordons:
    def __init__(self, path: Path | None) -> None:
        """``path``: the file they are kept in (None: a subclass keeps them, see :meth:`_save`)."""
        self._path = path
        self._cordons: dict[tuple[str, str], Cordon] = {}
        if path is not None and path.exists():
            self._merge(path.read_bytes())

    def _merge(self, stored: bytes) -> int:
        """Add the cordons ``stored`` holds (those held here win); returns how many it holds."""
        cordons = msgspec.json.decode(stored, type=list[Cordon])
        for cordon in cordons:
            self._cordons.setdefault((cordon.node, cordon.gpu), cordon)
        return len(cordons)

    def cordon(self, node: str, gpu: str, reason: str) -> bool:
        """Cordon ``node`` (``gpu`` "") or one GPU of it; False when it already was."""
        if (node, gpu) in self._cordons:
            return False
        self._cordons[(node, gpu)] = Cordon(node=node, gpu=gpu, reason=reason, since=time.time())
        self._save()
        return True

    def uncordon(self, node: str, gpu: str | None = None) -> list[Cordon]:
        """Lift the node's cordon and its GPUs' (``gpu`` None), or one GPU's (``gpu`` "": the node's
        own)."""
        lifted = [c for key, c in self._cordons.items() if key[0] == node and (gpu is None or key[1] == gpu)]
        for cordon in lifted:
            del self._cordons[(cordon.node, cordon.gpu)]
        if lifted:
            self._save()
        return lifted

    def blocking(self, node: str, gpu: str) -> Cordon | None:
        """The cordon that forbids placing a pod on ``gpu`` of ``node``, if any."""
        return self._cordons.get((node, "")) or self._cordons.get((node, gpu))

    def node_cordon(self, node: str) -> Cordon | None:
        return self._cordons.get((node, ""))

    def all(self) -> list[Cordon]:
        return sorted(self._cordons.values(), key=lambda c: (c.node, c.gpu))

    def encoded(self) -> bytes:
        return msgspec.json.encode(self.all())

    def _save(self) -> None:
        """Called after every change."""
        if self._path is not None:
            write_atomic(self._path, self.encoded())
