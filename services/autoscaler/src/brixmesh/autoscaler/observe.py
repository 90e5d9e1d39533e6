"""Aggregates pod metrics and router stats into one :class:`Observation` per autoscaler per evaluation."""

from __future__ import annotations

import msgspec
from brixmesh.autoscaler.fleet import Fleet, RouterSignals
from brixmesh.autoscaler.policy import Observation
from brixmesh.autoscaler.spec import PodAutoscalerSpec
from brixmesh.common.messages import DeploymentStatus, PodMetrics, RouterStats


def pod_value(metrics: PodMetrics, metric: str) -> float:
    if metric == "demand":
        return metrics.running + metrics.waiting
    return float(getattr(metrics, metric))


def router_value(stats: RouterStats, metric: str) -> float:
    window = stats.window_s if stats.window_s > 0 else 1.0
    if metric == "demand":
        return float(stats.in_flight + stats.queued)
    if metric == "arrival_rate":
        return stats.arrivals / window
    if metric == "prompt_token_rate":
        return stats.prompt_tokens / window
    if metric == "completion_token_rate":
        return stats.completion_tokens / window
    return float(getattr(stats, metric))


def target_status(status: DeploymentStatus | None, role: str | None) -> DeploymentStatus | None:
    """The orchestrator's status as one autoscaler sees its target: for a role of a pool-mode role-set
    deployment, that role's desired pods and last decision (the deployment's counts are role sets); None
    when no single role of the deployment has that function (the orchestrator refuses such decisions)."""
    if status is None or role is None or status.mode != "pool":
        return status
    matching = [entry for entry in status.roles if entry.role == role]
    if len(matching) != 1:
        return None
    (entry,) = matching
    return msgspec.structs.replace(
        status, role=entry.role, desired_replicas=entry.desired_replicas, ready_replicas=entry.ready_replicas,
        pods=entry.pods, last_decision_ts=entry.last_decision_ts,
    )  # fmt: skip


def observe(
    spec: PodAutoscalerSpec,
    fleet: Fleet,
    routers: RouterSignals,
    now: float,
    *,
    max_metrics_age_s: float,
    status: DeploymentStatus | None = None,
) -> Observation:
    """Sums each metric source over fresh data only: stale or too old pod metrics are left out, and a
    source with no fresh data at all is absent (not zero), so the policy never decides on missing data."""
    entries = fleet.targeted(spec)
    live = sum(1 for e in entries if e.state in ("added", "ready"))
    ready = [e for e in entries if e.state == "ready"]
    fresh = []
    for entry in ready:
        metrics = fleet.metrics.get(entry.info.pod)
        if metrics is not None and not metrics.stale and now - metrics.ts <= max_metrics_age_s:
            fresh.append(metrics)
    model = fleet.model_of(spec)
    router_stats = routers.fresh(model, now) if model else []
    totals: dict[str, float] = {}
    for source in spec.metrics:
        if source.source == "pod" and fresh:
            totals[source.key] = sum(pod_value(m, source.metric) for m in fresh)
        elif source.source == "router" and router_stats:
            totals[source.key] = sum(router_value(s, source.metric) for s in router_stats)
    demand = float(sum(s.arrivals + s.in_flight + s.queued for s in router_stats))
    return Observation(
        ts=now, live_pods=live, ready_pods=len(ready), totals=totals, router_demand=demand,
        desired_replicas=status.desired_replicas if status is not None else None,
    )  # fmt: skip
