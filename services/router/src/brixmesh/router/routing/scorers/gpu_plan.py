"""``gpu-plan``: send each request to the GPU type the autoscaler's optimizer planned for its length bucket.

The optimizer publishes, per model, the share of each (input, output) length bucket every GPU type should
serve (:class:`GpuPlan` on ``gpu.plans.<model>``). For a request, this scorer estimates its bucket (prompt
tokens at 4 characters each, ``max_tokens``), draws a GPU type with the plan's shares, and scores the pods
of that type (label ``brixmesh.io/gpu``) 1, the others 0; combine it with a load scorer
(``gpu-plan:3,least-request:1``) to spread requests within the type. Without a fresh plan for the model, or
for a bucket the plan does not route, every pod scores the same.
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence

from brixmesh.common.messages import GpuPlan
from brixmesh.common.shapes import GPU_LABEL, length_bucket

from brixmesh.router.routing.context import RequestContext
from brixmesh.router.routing.endpoint import Endpoint
from brixmesh.router.routing.scorer import Category

PLAN_MAX_AGE_S = 30.0
"""A plan not renewed for this long is the plan of an optimizer that stopped: no longer followed."""


class GpuPlanScorer:
    name = "gpu-plan"
    category: Category = "distribution"

    def __init__(self, rng: random.Random | None = None) -> None:
        self.rng = rng or random.Random()
        self._plans: dict[str, tuple[GpuPlan, dict[tuple[int, int], dict[str, float]]]] = {}

    def on_plan(self, _subject: str, plan: GpuPlan) -> None:
        routes = {(r.input_bucket, r.output_bucket): r.shares for r in plan.routes}
        self._plans[plan.model] = (plan, routes)

    def score(self, ctx: RequestContext, pods: Sequence[Endpoint]) -> dict[str, float]:
        found = self._plans.get(ctx.base_model or ctx.model)
        if found is None or time.time() - found[0].ts > PLAN_MAX_AGE_S:
            return {pod.name: 1.0 for pod in pods}
        cell = (length_bucket(ctx.estimated_prompt_tokens()), length_bucket(ctx.max_output_tokens()))
        shares = found[1].get(cell)
        present = {pod.labels.get(GPU_LABEL) for pod in pods}
        candidates = {gpu: share for gpu, share in (shares or {}).items() if gpu in present and share > 0}
        if not candidates:
            return {pod.name: 1.0 for pod in pods}
        gpu = self.rng.choices(list(candidates), weights=list(candidates.values()))[0]
        return {pod.name: 1.0 if pod.labels.get(GPU_LABEL) == gpu else 0.0 for pod in pods}
