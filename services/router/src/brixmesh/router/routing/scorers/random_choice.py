"""``random``: every candidate scores the same; the picker's random tie-break chooses uniformly."""

from __future__ import annotations

from collections.abc import Sequence

from brixmesh.router.routing.context import RequestContext
from brixmesh.router.routing.endpoint import Endpoint
from brixmesh.router.routing.scorer import Category


class RandomChoice:
    name = "random"
    category: Category = "distribution"

    def score(self, ctx: RequestContext, pods: Sequence[Endpoint]) -> dict[str, float]:
        return dict.fromkeys((pod.name for pod in pods), 1.0)
