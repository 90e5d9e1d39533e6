"""Which pods to start and which to drain so that a deployment converges on its desired replicas. Pure.

Scale-down removes pods that are not ready first (they serve nobody), then the newest (the oldest have the
warmest caches). After a template change, new pods are started at once and an outdated pod is drained only
while enough up-to-date pods are ready to take its place (a surge rollout: capacity never dips).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class PodView:
    name: str
    generation: int
    ready: bool
    created_at: float
    draining: bool = False


@dataclass(frozen=True)
class ScalePlan:
    create: int
    drain: tuple[str, ...]

    @property
    def empty(self) -> bool:
        return not self.create and not self.drain


def removal_order(pod: PodView) -> tuple[bool, float]:
    """Sort key: not-ready pods first, then the newest."""
    return (pod.ready, -pod.created_at)


def plan_scale(desired: int, generation: int, pods: Sequence[PodView]) -> ScalePlan:
    if desired < 0:
        raise ValueError(f"desired replicas must be >= 0, got {desired}")
    active = [pod for pod in pods if not pod.draining]
    current = sorted((pod for pod in active if pod.generation == generation), key=removal_order)
    outdated = sorted((pod for pod in active if pod.generation != generation), key=removal_order)
    surplus = current[: max(0, len(current) - desired)]
    kept = current[len(surplus):]
    ready_kept = sum(pod.ready for pod in kept)
    keep_outdated = max(0, desired - ready_kept)
    retire = outdated[: max(0, len(outdated) - keep_outdated)]
    return ScalePlan(create=max(0, desired - len(current)), drain=tuple(pod.name for pod in surplus + retire))
