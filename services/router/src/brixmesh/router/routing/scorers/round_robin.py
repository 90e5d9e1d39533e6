"""``round-robin``: candidates in name order, one after the other (per router replica)."""

from __future__ import annotations

from collections.abc import Sequence

from brixmesh.router.routing.context import RequestContext
from brixmesh.router.routing.endpoint import Endpoint
from brixmesh.router.routing.scorer import Category


class RoundRobin:
    name = "round-robin"
    category: Category = "distribution"

    def __init__(self) -> None:
        self._turn = 0

    def score(self, ctx: RequestContext, pods: Sequence[Endpoint]) -> dict[str, float]:
        names = sorted(pod.name for pod in pods)
        chosen = names[self._turn % len(names)]
        self._turn += 1
        return {name: 1.0 if name == chosen else 0.0 for name in names}
