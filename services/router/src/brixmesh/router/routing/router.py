"""The routing pipeline: filters -> scorers -> load guard -> picker, plus the lifecycle hooks."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from brixmesh.router.routing.context import RequestContext, Usage
from brixmesh.router.routing.endpoint import Endpoint
from brixmesh.router.routing.filters import PREFILL_ROLES, candidates
from brixmesh.router.routing.pd import PdPlan
from brixmesh.router.routing.picker import rank
from brixmesh.router.routing.registry import Strategy, StrategyRegistry


class NoEndpoint(LookupError):
    """No ready endpoint can serve the request right now."""


@dataclass(slots=True)
class RoutingDecision:
    ranked: list[Endpoint]
    """Candidates best first: the first is the target, the rest are retry targets in order."""
    strategy: Strategy
    scores: dict[str, float]
    decision_s: float
    pd: PdPlan | None = None
    """Prefill/decode pairs when the strategy is ``pd`` (empty without ready prefill pods)."""


class Router:
    def __init__(self, registry: StrategyRegistry) -> None:
        self.registry = registry
        self.env = registry.env

    async def route(
        self, ctx: RequestContext, pods: Sequence[Endpoint], strategy: Strategy, now: float | None = None
    ) -> RoutingDecision:
        started = time.perf_counter()
        now = time.monotonic() if now is None else now
        if ctx.tokenizer is None:
            ctx.tokenizer = self.env.tokenizer
        found = candidates(ctx, pods, now)
        if not found:
            raise NoEndpoint(ctx.model)
        load = self.env.load
        for pod in found:
            pod.in_flight = load.count(pod.name)
            pod.recent = load.recent(pod.name, now)
        for scorer, _weight in strategy.parts:
            prepare = getattr(scorer, "prepare", None)
            if prepare is not None:
                await prepare(ctx)
        totals = dict.fromkeys((pod.name for pod in found), 0.0)
        guard = self.env.guard
        overloaded = guard.overloaded(found) if strategy.has_affinity else set()
        affinity_scores: list[tuple[float, dict[str, float]]] = []
        for scorer, weight in strategy.parts:
            scores = scorer.score(ctx, found)
            restrain = False
            if scorer.category == "affinity":
                affinity_scores.append((weight, scores))
                restrain = bool(overloaded)
            for name, value in scores.items():
                if name in totals and not (restrain and name in overloaded):
                    totals[name] += weight * value
        by_name = {pod.name: pod for pod in found}
        recent = None
        if strategy.has_affinity and ctx.matches_only_shared_prefix:
            penalties = guard.lead_penalties(found, strategy.affinity_weight)
            if penalties:
                affinity = _affinity(totals, affinity_scores, overloaded)
                # a leading pod keeps the affinity the best other pod has: the lead settles what affinity
                # would, never a difference in load
                parity = max((value for name, value in affinity.items() if name not in penalties), default=0.0)
                for name, penalty in penalties.items():
                    totals[name] -= min(penalty, max(affinity[name] - parity, 0.0))
            recent = {pod.name: pod.recent for pod in found}
        ranked = [by_name[name] for name in rank(totals, self.env.rng, recent)]
        decision = RoutingDecision(ranked, strategy, totals, 0.0)
        if strategy.pairing is not None:
            prefills = candidates(ctx, pods, now, PREFILL_ROLES)
            for pod in prefills:
                pod.in_flight = load.count(pod.name)
            decodes = [pod for pod in found if pod.role == "decode"]
            decision.pd = strategy.pairing.plan(ctx, prefills, decodes, totals)
        decision.decision_s = time.perf_counter() - started
        return decision

    def routed(self, ctx: RequestContext, decision: RoutingDecision, pod: Endpoint) -> None:
        for scorer, _weight in decision.strategy.parts:
            hook = getattr(scorer, "on_routed", None)
            if hook is not None:
                hook(ctx, pod)

    def first_byte(self, ctx: RequestContext, decision: RoutingDecision, pod: Endpoint) -> None:
        for scorer, _weight in decision.strategy.parts:
            hook = getattr(scorer, "on_first_byte", None)
            if hook is not None:
                hook(ctx, pod)

    def completed(
        self, ctx: RequestContext, decision: RoutingDecision, pod: Endpoint, usage: Usage | None
    ) -> None:
        for scorer, _weight in decision.strategy.parts:
            hook = getattr(scorer, "on_completed", None)
            if hook is not None:
                hook(ctx, pod, usage)


def _affinity(
    totals: dict[str, float], affinity_scores: list[tuple[float, dict[str, float]]], overloaded: set[str]
) -> dict[str, float]:
    """What the affinity scorers added to each pod's total (overloaded pods got none)."""
    affinity = dict.fromkeys(totals, 0.0)
    for weight, scores in affinity_scores:
        for name, value in scores.items():
            if name in affinity and name not in overloaded:
                affinity[name] += weight * value
    return affinity
