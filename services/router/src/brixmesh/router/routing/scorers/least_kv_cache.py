"""``least-kv-cache``: lowest engine KV-cache usage (``kv_usage`` from ``metrics.pods``); pods without
fresh metrics score 0."""

from __future__ import annotations

from collections.abc import Sequence

from brixmesh.router.routing.context import RequestContext
from brixmesh.router.routing.endpoint import Endpoint
from brixmesh.router.routing.scorer import Category


class LeastKvCache:
    name = "least-kv-cache"
    category: Category = "distribution"

    def score(self, ctx: RequestContext, pods: Sequence[Endpoint]) -> dict[str, float]:
        return {
            pod.name: min(1.0, max(0.0, 1.0 - pod.metrics.kv_usage))
            for pod in pods
            if pod.metrics is not None and not pod.metrics.stale
        }
