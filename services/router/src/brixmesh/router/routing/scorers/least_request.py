"""``least-request``: fewest requests in flight, counted by every router replica together."""

from __future__ import annotations

from collections.abc import Sequence

from brixmesh.router.routing.context import RequestContext
from brixmesh.router.routing.endpoint import Endpoint
from brixmesh.router.routing.scorer import Category
from brixmesh.router.routing.scorers.normalize import lower_is_better


class LeastRequest:
    name = "least-request"
    category: Category = "distribution"

    def score(self, ctx: RequestContext, pods: Sequence[Endpoint]) -> dict[str, float]:
        return lower_is_better({pod.name: float(pod.in_flight) for pod in pods})
