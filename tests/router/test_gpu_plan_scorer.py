"""The ``gpu-plan`` scorer: requests go to the GPU type the optimizer planned for their length bucket."""

from __future__ import annotations

import random
import time
from collections import Counter

from brixmesh.common.messages import GpuPlan, PlanRoute
from brixmesh.common.shapes import GPU_LABEL
from brixmesh.router.routing.context import RequestContext
from brixmesh.router.routing.endpoint import Endpoint
from brixmesh.router.routing.scorers.gpu_plan import PLAN_MAX_AGE_S, GpuPlanScorer

PODS = [Endpoint(name=f"{gpu}-{i}", url=f"http://{gpu}-{i}", model="m", labels={GPU_LABEL: gpu})
        for gpu in ("a10", "l20") for i in range(2)]


def request(prompt_chars: int, max_tokens: int) -> RequestContext:
    return RequestContext(request_id="r", api="completions", model="m", base_model="m",
                          body={"max_tokens": max_tokens}, prompt_text="x" * prompt_chars)


def plan(ts: float) -> GpuPlan:
    return GpuPlan(model="m", ts=ts, replicas={"a10": 2, "l20": 2}, cost_per_hour=5.2, routes=[
        PlanRoute(input_bucket=7, output_bucket=6, shares={"a10": 1.0}),  # in<=128, out<=64: a10 only
        PlanRoute(input_bucket=11, output_bucket=8, shares={"a10": 0.25, "l20": 0.75}),
    ])  # fmt: skip


def chosen(scorer: GpuPlanScorer, ctx: RequestContext) -> str:
    scores = scorer.score(ctx, PODS)
    (gpu,) = {pod.labels[GPU_LABEL] for pod in PODS if scores[pod.name] == 1.0}
    assert all(scores[p.name] == 0.0 for p in PODS if p.labels[GPU_LABEL] != gpu)
    return gpu


def test_requests_follow_the_plan_shares_of_their_bucket() -> None:
    scorer = GpuPlanScorer(random.Random(7))
    scorer.on_plan("gpu.plans.m", plan(time.time()))
    assert {chosen(scorer, request(400, 50)) for _ in range(20)} == {"a10"}  # ~100 tokens in, 50 out
    long = Counter(chosen(scorer, request(6000, 200)) for _ in range(400))  # ~1500 tokens in, 200 out
    assert 0.65 < long["l20"] / 400 < 0.85


def test_without_a_fresh_plan_or_a_route_every_pod_scores_the_same() -> None:
    scorer = GpuPlanScorer(random.Random(7))
    assert set(scorer.score(request(400, 50), PODS).values()) == {1.0}
    scorer.on_plan("gpu.plans.m", plan(time.time()))
    assert set(scorer.score(request(400, 1000), PODS).values()) == {1.0}  # bucket the plan does not route
    scorer.on_plan("gpu.plans.m", plan(time.time() - PLAN_MAX_AGE_S - 1))
    assert set(scorer.score(request(400, 50), PODS).values()) == {1.0}
    unlabelled = [Endpoint(name="x", url="http://x", model="m")]
    scorer.on_plan("gpu.plans.m", plan(time.time()))
    assert scorer.score(request(400, 50), unlabelled) == {"x": 1.0}
