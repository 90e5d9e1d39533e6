"""Leases: what a service learns from another one is held until a deadline and dropped unless renewed.

Pure logic, time passed in: the NATS side (:mod:`brixmesh.common.pod_watch`, the router's replica sync)
renews a key on every announcement it hears and asks for the expired keys on a timer.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterator
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)


class LeaseTable(Generic[K]):
    def __init__(self) -> None:
        self._leases: dict[K, tuple[float, float]] = {}
        """key -> (deadline, lease duration)"""

    def hold(self, key: K, now: float, lease_s: float) -> None:
        """Hold ``key`` until ``now + lease_s``; a lease of 0 never expires (a holder that cannot renew)."""
        self._leases[key] = (now + lease_s if lease_s > 0 else math.inf, lease_s)

    def renew(self, key: K, now: float, default_lease_s: float) -> None:
        """Hold ``key`` for its own lease again (``default_lease_s`` if it has none yet)."""
        found = self._leases.get(key)
        self.hold(key, now, found[1] if found is not None else default_lease_s)

    def renew_all(self, now: float) -> None:
        """Every key gets a full lease from ``now``: while the renewals cannot reach us (the bus is down),
        silence says nothing about the holders."""
        for key, (_deadline, lease_s) in self._leases.items():
            self._leases[key] = (now + lease_s if lease_s > 0 else math.inf, lease_s)

    def release(self, key: K) -> None:
        self._leases.pop(key, None)

    def expire(self, now: float) -> list[K]:
        """Drop and return the keys whose deadline has passed."""
        expired = [key for key, (deadline, _lease) in self._leases.items() if deadline <= now]
        for key in expired:
            del self._leases[key]
        return expired

    def deadline(self, key: K) -> float | None:
        found = self._leases.get(key)
        return found[0] if found is not None else None

    def next_deadline(self) -> float:
        """The earliest deadline (``inf`` when nothing can expire)."""
        return min((deadline for deadline, _lease in self._leases.values()), default=math.inf)

    def __contains__(self, key: object) -> bool:
        return key in self._leases

    def __len__(self) -> int:
        return len(self._leases)

    def __iter__(self) -> Iterator[K]:
        return iter(list(self._leases))
