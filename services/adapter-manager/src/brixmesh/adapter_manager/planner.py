"""Where each adapter should be loaded: pure logic, no I/O.

Adapters are placed in order of demand (hottest first), so when pods are full the cold ones wait. An adapter
keeps the pods it already has where they still qualify (no churn), then gets more by its policy:

- ``least-adapters``: the pods holding the fewest adapters (spreads adapters out);
- ``bin-pack``: the fullest pods that still have room (packs adapters together, leaves pods free);
- ``latency-aware``: the least loaded pods (running + waiting requests).

A pod qualifies when it serves the adapter's base model, accepts its rank, has a free adapter slot, and has
not refused it recently.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from brixmesh.adapter_manager.spec import Policy, Replicas


@dataclass(frozen=True)
class PodView:
    name: str
    model: str
    capacity: int
    """Adapters it may hold (``--max-cpu-loras``, else ``--max-loras``)."""
    max_rank: int = 0
    """0: unknown (not checked)."""
    load: float = 0.0
    unmanaged: int = 0
    """Adapters loaded that nobody registered (static ``--lora-modules``): they take slots too."""


@dataclass(frozen=True)
class Want:
    name: str
    base_model: str
    replicas: Replicas
    min_replicas: int | None
    policy: Policy
    rank: int = 0
    demand_replicas: int | None = None
    """Replicas its request rate needs; None: demand not known yet (keep what it has)."""
    demand: float = 0.0


@dataclass
class Plan:
    pods: dict[str, list[str]] = field(default_factory=dict)
    """adapter -> pods it should be on."""
    short: dict[str, str] = field(default_factory=dict)
    """adapter -> why it got fewer pods than it wants (none of its pods qualify, all full)."""


def target_replicas(want: Want, candidates: int, current: int) -> int:
    ceiling = candidates if want.replicas == "all" else min(want.replicas, candidates)
    if want.min_replicas is None:
        return ceiling
    if want.demand_replicas is None:
        wanted = max(current, want.min_replicas)
    else:
        wanted = max(want.demand_replicas, want.min_replicas)
    return min(wanted, ceiling)


def demand_replicas(requests_per_s: float, per_replica: float) -> int:
    """Replicas a request rate needs: one per ``per_replica`` requests/s, at least one while it has any."""
    return math.ceil(requests_per_s / per_replica) if requests_per_s > 0 else 0


def place(
    wants: list[Want],
    pods: list[PodView],
    current: dict[str, list[str]],
    refused: dict[str, set[str]],
) -> Plan:
    """The placement of every adapter of ``wants`` on ``pods``; ``current`` is where each one is now,
    ``refused`` the pods that refused it recently."""
    plan = Plan()
    used = {pod.name: pod.unmanaged for pod in pods}
    by_name = {pod.name: pod for pod in pods}
    for want in sorted(wants, key=lambda w: (-w.demand, w.name)):
        skip = refused.get(want.name, set())
        qualified = [
            pod
            for pod in pods
            if pod.model == want.base_model
            and pod.name not in skip
            and (not pod.max_rank or want.rank <= pod.max_rank)
        ]
        have = [name for name in current.get(want.name, []) if name in by_name]
        target = target_replicas(want, len(qualified), len(have))
        chosen = [name for name in have if by_name[name] in qualified and used[name] < by_name[name].capacity]
        chosen = _drop_extra(chosen, target, want.policy, by_name, used)
        for name in chosen:
            used[name] += 1
        while len(chosen) < target:
            room = [pod for pod in qualified if pod.name not in chosen and used[pod.name] < pod.capacity]
            if not room:
                break
            pick = _best(room, want.policy, used)
            chosen.append(pick.name)
            used[pick.name] += 1
        plan.pods[want.name] = sorted(chosen)
        if len(chosen) < target or (target == 0 and want.min_replicas != 0):
            plan.short[want.name] = _shortage(want, qualified, skip)
    return plan


def _best(room: list[PodView], policy: Policy, used: dict[str, int]) -> PodView:
    if policy == "bin-pack":
        return min(room, key=lambda pod: (-used[pod.name], pod.load, pod.name))
    if policy == "latency-aware":
        return min(room, key=lambda pod: (pod.load, used[pod.name], pod.name))
    return min(room, key=lambda pod: (used[pod.name], pod.load, pod.name))


def _drop_extra(
    chosen: list[str], target: int, policy: Policy, by_name: dict[str, PodView], used: dict[str, int]
) -> list[str]:
    """Shrink to ``target``, giving up the pods the policy likes least."""
    if len(chosen) <= target:
        return chosen
    if policy == "bin-pack":
        keep = sorted(chosen, key=lambda name: (-used[name], name))
    elif policy == "latency-aware":
        keep = sorted(chosen, key=lambda name: (by_name[name].load, name))
    else:
        keep = sorted(chosen, key=lambda name: (used[name], name))
    return keep[:target]


def _shortage(want: Want, qualified: list[PodView], refused: set[str]) -> str:
    if qualified:
        return "every pod that could hold it is full (--max-loras / --max-cpu-loras)"
    if refused:
        return f"no pod of base model {want.base_model} left to try: refused by {', '.join(sorted(refused))}"
    return f"no ready pod serves base model {want.base_model}"
