"""Combine weighted scores, restrain affinity with the load guard, rank with a random tie-break."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from brixmesh.router.routing.endpoint import Endpoint


@dataclass(frozen=True, slots=True)
class LoadGuard:
    """A pod is *overloaded* when it carries more than ``abs_threshold`` requests above the least-loaded
    candidate and more than ``rel_threshold`` times its load; affinity scores do not count for such pods."""

    abs_threshold: float = 8.0
    rel_threshold: float = 1.5

    def overloaded(self, pods: Sequence[Endpoint]) -> set[str]:
        if len(pods) < 2:
            return set()
        loads = {pod.name: pod.queue_load for pod in pods}
        least = min(loads.values())
        return {
            name
            for name, load in loads.items()
            if load - least > self.abs_threshold and load > self.rel_threshold * least
        }


def rank(totals: dict[str, float], rng: random.Random) -> list[str]:
    """Pod names, best first; equal totals in random order."""
    names = list(totals)
    rng.shuffle(names)
    names.sort(key=totals.__getitem__, reverse=True)  # stable sort keeps the shuffle among ties
    return names
