"""``vtc`` (virtual token counter): fair share of tokens across users, blended with load.

Each user's service is counted as prompt + 2 x completion tokens. Users who received little service so far
are steered to the least-loaded pods, heavy users to the busier ones, so light users see the best latency.
The fairness term is blended 50/50 with a least-load term. Requests without ``user`` only see the load term.
Users are client input: the ``max_users`` served most recently are remembered; one forgotten starts again from
zero, like a new user.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from brixmesh.router.routing.context import RequestContext, Usage
from brixmesh.router.routing.endpoint import Endpoint
from brixmesh.router.routing.scorer import Category
from brixmesh.router.routing.scorers.normalize import lower_is_better


class VirtualTokenCounter:
    name = "vtc"
    category: Category = "distribution"

    def __init__(self, max_users: int = 4096) -> None:
        self.max_users = max_users
        self.served: OrderedDict[str, float] = OrderedDict()

    def score(self, ctx: RequestContext, pods: Sequence[Endpoint]) -> dict[str, float]:
        load = lower_is_better({pod.name: pod.queue_load for pod in pods})
        if not ctx.user or len(pods) < 2:
            return load
        counts = self.served.values()
        low, high = min(counts, default=0.0), max(counts, default=0.0)
        share = (self.served.get(ctx.user, low) - low) / (high - low) if high > low else 0.0
        by_load = sorted(pods, key=lambda pod: (pod.queue_load, pod.name))
        last = len(by_load) - 1
        return {
            pod.name: 0.5 * (1.0 - abs(i / last - share)) + 0.5 * load[pod.name]
            for i, pod in enumerate(by_load)
        }

    def on_completed(self, ctx: RequestContext, pod: Endpoint, usage: Usage | None) -> None:
        if ctx.user and usage is not None:
            served = self.served
            served[ctx.user] = served.pop(ctx.user, 0.0) + usage.prompt_tokens + 2 * usage.completion_tokens
            if len(served) > self.max_users:
                served.popitem(last=False)
