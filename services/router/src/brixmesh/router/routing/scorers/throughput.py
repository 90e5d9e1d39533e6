"""``throughput``: the pod doing the least token work now, 2 x prompt tok/s + generation tok/s (prefill
tokens weigh double, as in AIBrix). Pods without fresh metrics are treated as idle."""

from __future__ import annotations

from collections.abc import Sequence

from brixmesh.router.routing.context import RequestContext
from brixmesh.router.routing.endpoint import Endpoint
from brixmesh.router.routing.scorer import Category
from brixmesh.router.routing.scorers.normalize import lower_is_better


class Throughput:
    name = "throughput"
    category: Category = "distribution"

    def score(self, ctx: RequestContext, pods: Sequence[Endpoint]) -> dict[str, float]:
        work = {}
        for pod in pods:
            m = pod.metrics
            fresh = m is not None and not m.stale
            work[pod.name] = 2 * m.prompt_tokens_per_s + m.generation_tokens_per_s if fresh else 0.0
        return lower_is_better(work)
