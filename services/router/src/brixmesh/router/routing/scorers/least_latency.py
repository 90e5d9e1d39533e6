"""``least-latency``: lowest estimated completion time = queue wait + prefill + decode.

queue wait = waiting requests x TTFT p50; prefill = TTFT p50 (already includes this prompt's usual size);
decode = expected output tokens x ITL p50. The router's own in-flight count adds to the queue so that a burst
between two metric scrapes still spreads. Pods without metrics are estimated from the fleet median.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence

from brixmesh.router.routing.context import RequestContext
from brixmesh.router.routing.endpoint import Endpoint
from brixmesh.router.routing.scorer import Category
from brixmesh.router.routing.scorers.normalize import lower_is_better


class LeastLatency:
    name = "least-latency"
    category: Category = "distribution"

    def score(self, ctx: RequestContext, pods: Sequence[Endpoint]) -> dict[str, float]:
        fresh = [pod.metrics for pod in pods if pod.metrics is not None and not pod.metrics.stale]
        ttft_default = statistics.median([m.ttft_p50_s for m in fresh]) if fresh else 0.1
        itl_default = statistics.median([m.itl_p50_s for m in fresh]) if fresh else 0.02
        output = ctx.max_output_tokens()
        estimates = {}
        for pod in pods:
            m = pod.metrics if pod.metrics is not None and not pod.metrics.stale else None
            ttft = m.ttft_p50_s if m is not None and m.ttft_p50_s > 0 else ttft_default
            itl = m.itl_p50_s if m is not None and m.itl_p50_s > 0 else itl_default
            waiting = (m.waiting if m is not None else 0.0) + pod.in_flight
            estimates[pod.name] = waiting * ttft + ttft + output * itl
        return lower_is_better(estimates)
