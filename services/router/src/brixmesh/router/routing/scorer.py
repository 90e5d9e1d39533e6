"""The scorer protocol every routing strategy implements (see the package docstring)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, Protocol, runtime_checkable

from brixmesh.router.routing.context import RequestContext
from brixmesh.router.routing.endpoint import Endpoint

Category = Literal["distribution", "affinity"]
"""``distribution`` scorers spread load; ``affinity`` scorers pull related requests together and are the
ones the load guard restrains."""


@runtime_checkable
class Scorer(Protocol):
    name: str
    category: Category

    def score(self, ctx: RequestContext, pods: Sequence[Endpoint]) -> dict[str, float]:
        """Score each candidate in [0, 1]; higher is better; pods left out score 0."""
