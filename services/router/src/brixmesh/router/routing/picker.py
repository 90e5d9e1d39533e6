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
      by more than ``lead_tolerance`` of it plus ``lead_slack`` requests. Its total is lowered in proportion
      to the lead: ``lead_gain`` x the strategy's affinity weight x the excess over that allowance (relative
      to it), at most the affinity weight. In-flight counts cannot see this imbalance at low load, where
      every pod is idle between requests and affinity alone decides: conversations sharing a system prompt
      all follow the first pod that cached it. The penalty moves the requests that gain least from their
      cache first (a conversation's first turn, which matches only the shared prompt), and once another pod
      holds the shared prompt, those requests are ties the penalty settles.
    """

    abs_threshold: float = 8.0
    rel_threshold: float = 1.5
    lead_tolerance: float = 0.05
    lead_slack: float = 4.0
    lead_gain: float = 7.0

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


def rank(totals: dict[str, float], rng: random.Random) -> list[str]:
    """Pod names, best first; equal totals in random order."""
    names = list(totals)
    rng.shuffle(names)
    names.sort(key=totals.__getitem__, reverse=True)  # stable sort keeps the shuffle among ties
    return names
