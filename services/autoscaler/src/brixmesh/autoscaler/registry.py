"""The PodAutoscalers in force, by name."""

from __future__ import annotations

from collections.abc import Iterator

from brixmesh.autoscaler.policy import AutoscalerPolicy
from brixmesh.autoscaler.spec import PodAutoscalerSpec


class Autoscalers:
    def __init__(self) -> None:
        self._policies: dict[str, AutoscalerPolicy] = {}

    def put(self, spec: PodAutoscalerSpec) -> bool:
        """Add or replace; returns True when created. A replacement aimed at the same target keeps the
        count it asked for, the decision it keeps in force and its cooldown clock (so an edit does not cause a
        jump), but restarts windows."""
        old = self._policies.get(spec.name)
        policy = AutoscalerPolicy(spec)
        if old is not None and (old.spec.deployment, old.spec.role) == (spec.deployment, spec.role):
            policy.current, policy.decided = old.current, old.decided
            policy.last_change_ts, policy.decisions = old.last_change_ts, old.decisions
            policy.in_force, policy.reason_in_force = old.in_force, old.reason_in_force
        self._policies[spec.name] = policy
        return old is None

    def get(self, name: str) -> AutoscalerPolicy | None:
        return self._policies.get(name)

    def delete(self, name: str) -> bool:
        return self._policies.pop(name, None) is not None

    def __iter__(self) -> Iterator[AutoscalerPolicy]:
        return iter(list(self._policies.values()))

    def __len__(self) -> int:
        return len(self._policies)
