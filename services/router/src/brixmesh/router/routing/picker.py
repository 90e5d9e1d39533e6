"""Combine weighted scores, restrain affinity with the load guard, rank with a random tie-break."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from brixmesh.router.routing.endpoint import Endpoint


@dataclass(frozen=True, slots=True)
class LoadGuard:
    """Two checks on what cache affinity may pile onto one pod.

    - A pod is *overloaded* when it carries more than ``abs_threshold`` requests above the least-loaded
      candidate and more than ``rel_threshold`` times its load; affinity scores do not count for such pods.
    - A pod *leads* when it was sent more requests lately (:attr:`Endpoint.recent`) than the candidates' mean,
      by more than ``lead_tolerance`` of it plus ``lead_slack`` requests. For a request whose cache affinity
      is only for a prefix other requests share (``RequestContext.matches_only_shared_prefix``), the totals
      of leading pods are lowered in proportion to the lead (``lead_gain`` x the strategy's affinity weight
      x the excess over that allowance, relative to it), but never below the affinity the best other pod
      has, so the lead never outweighs a difference in load (the router applies it); equal totals then go
      to the pod sent fewer requests lately. In-flight counts cannot see this imbalance at low load, where
      every pod is idle between requests and affinity alone decides: conversations sharing a system prompt
      would all follow the first pod that cached it. Moving a conversation's first turn costs that shared
      prefix once, on the pod that then holds it too; a request continuing its own history is never moved
      by this.
    """

    abs_threshold: float = 8.0
    rel_threshold: float = 1.5
    lead_tolerance: float = 0.1
    lead_slack: float = 4.0
    lead_gain: float = 20.0

    def overloaded(self, pods: Sequence[Endpoint]) -> set[str]:
        if len(pods) < 2:
            return set()
        loads = {pod.name: pod.queue_load for pod in pods}
        least = min(loads.values())
        return {
            name
            for name, load in loads.items()
            if load - least > self.abs_threshold and load > self.rel_threshold * least
        }

    def lead_penalties(self, pods: Sequence[Endpoint], affinity_weight: float) -> dict[str, float]:
        """What to take off the totals of pods that lead (see the class docstring); others are left out."""
        if len(pods) < 2:
            return {}
        mean = sum(pod.recent for pod in pods) / len(pods)
        allowed = mean * (1.0 + self.lead_tolerance) + self.lead_slack
        return {
            pod.name: affinity_weight * min(1.0, self.lead_gain * (pod.recent - allowed) / allowed)
            for pod in pods
            if pod.recent > allowed
        }


def rank(totals: dict[str, float], rng: random.Random, recent: dict[str, float] | None = None) -> list[str]:
    """Pod names, best first; equal totals in random order, or, given ``recent``, the pod sent fewer requests
    lately first."""
    draw = rng.random  # a random last key orders ties as a shuffle would, without the shuffle's Python loop
    if recent is None:
        return sorted(totals, key=lambda name: (-totals[name], draw()))
    return sorted(totals, key=lambda name: (-totals[name], recent[name], draw()))
