"""One PodAutoscaler's decision state: windows, panic mode, cooldowns, and the count it last asked for.

Pure: :meth:`AutoscalerPolicy.evaluate` takes an :class:`Observation` (already aggregated from pod
metrics and router stats) and returns a :class:`ScaleDecision` only when the desired count changes, so
every new decision is a real change and counting them measures flapping.

The loop is closed on the orchestrator's ``deployments.status``: until the first decision the policy
starts from the desired replicas the orchestrator reports (the count a restarted autoscaler finds in
force), and :meth:`AutoscalerPolicy.enforce` keeps the decision in force: it is sent again (``resent``)
when the orchestrator has not taken it by the next evaluation (a lost message, an orchestrator restart),
when the orchestrator's desired replicas differ from it (changed by hand: the autoscaler owns ``replicas``,
as Kubernetes' HPA does), and every ``refresh_s`` so the orchestrator can show the deployment as autoscaled.

No decision is made from a window that does not yet cover its span (after a start or restart the windows
refill first): scaling up needs a full panic window, scaling down a full stable window. Scale from zero on
router demand is the exception: it needs no window.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import msgspec
from brixmesh.autoscaler import algorithms
from brixmesh.autoscaler.spec import PodAutoscalerSpec
from brixmesh.autoscaler.window import SlidingWindow
from brixmesh.common.messages import DeploymentStatus, ScaleDecision


@dataclass(frozen=True, slots=True)
class Observation:
    ts: float
    live_pods: int
    """Pods the orchestrator runs for the target (starting or ready, not draining)."""
    ready_pods: int
    totals: dict[str, float] = field(default_factory=dict)
    """Metric-source key (``pod:running``) -> sum over pods or routers; absent when there is no fresh data."""
    router_demand: float = 0.0
    """Requests the routers see for the model (arrivals + in flight + queued): the scale-from-zero trigger."""
    desired_replicas: int | None = None
    """The orchestrator's desired replicas for the target (``deployments.status``); None while unknown."""


class AutoscalerPolicy:
    def __init__(self, spec: PodAutoscalerSpec) -> None:
        self.spec = spec
        self.stable = SlidingWindow(spec.stable_window_s)
        self.panic = SlidingWindow(spec.panic_window_s)
        self.kpa_state = algorithms.KpaState()
        self.current: int | None = None
        """The count last asked for; until the first decision, the orchestrator's desired replicas (or the
        live pod count while those are unknown)."""
        self.decided = False
        self.last_change_ts = -math.inf
        self.decisions = 0
        self.in_force: ScaleDecision | None = None
        """The last decision as last sent (its ``ts`` is that of the last send)."""
        self.reason_in_force = ""
        """Why the decision in force was made (re-sent copies say so, then repeat it)."""

    def evaluate(self, obs: Observation) -> ScaleDecision | None:
        spec = self.spec
        if not self.decided:
            self.current = obs.desired_replicas if obs.desired_replicas is not None else obs.live_pods
        current = self.current or 0
        raws = {m.key: obs.totals[m.key] / m.target for m in spec.metrics if m.key in obs.totals}
        from_zero = current == 0 and obs.router_demand > 0
        if not raws and not from_zero:
            return None  # no fresh signal: never decide on missing data
        raw = max(raws.values(), default=0.0)
        if raws:
            self.stable.add(obs.ts, raw)
            self.panic.add(obs.ts, raw)
        stable_mean = self.stable.mean(obs.ts) or 0.0
        panic_mean = self.panic.mean(obs.ts) or 0.0
        desired, basis = self._algorithm(current, raw, stable_mean, panic_mean, obs.ts)
        if from_zero:
            desired = max(desired, 1)
        desired = algorithms.bound(current, desired, spec.bounds)
        if desired == current:
            return None
        since_change = obs.ts - self.last_change_ts
        if not from_zero:
            if not (self.panic if desired > current else self.stable).filled(obs.ts):
                return None  # the window is still refilling: too little history to act on
            if desired > current and since_change < spec.scale_up_cooldown_s:
                return None
            if desired < current and since_change < spec.scale_down_cooldown_s:
                return None
        self.current = desired
        self.decided = True
        self.last_change_ts = obs.ts
        self.decisions += 1
        metrics = {key: round(value, 4) for key, value in obs.totals.items()}
        metrics.update(
            raw_desired=round(raw, 4), stable_mean=round(stable_mean, 4), panic_mean=round(panic_mean, 4),
            ready_pods=float(obs.ready_pods), live_pods=float(obs.live_pods), router_demand=obs.router_demand,
        )  # fmt: skip
        self.reason_in_force = self._reason(current, desired, raws, basis, from_zero)
        self.in_force = ScaleDecision(
            deployment=spec.deployment,
            role=spec.role or "both",
            current_replicas=current,
            desired_replicas=desired,
            algorithm=spec.strategy,
            reason=self.reason_in_force,
            metrics=metrics,
            window_state=self._window_state(obs.ts),
            ts=obs.ts,
        )
        return self.in_force

    def enforce(
        self, status: DeploymentStatus | None, now: float, *, refresh_s: float
    ) -> ScaleDecision | None:
        """The decision in force, to send again (with ``ts`` now), or None when the orchestrator's status
        shows it in effect and it was sent less than ``refresh_s`` ago. Without a status nothing is sent:
        no orchestrator has reported the deployment."""
        sent = self.in_force
        if sent is None or status is None or status.fixed_size:
            return None
        if status.last_decision_ts < sent.ts:
            why = "not acknowledged by the orchestrator"
        elif status.desired_replicas != sent.desired_replicas:
            why = f"the orchestrator's desired replicas were changed to {status.desired_replicas}"
        elif now - sent.ts >= refresh_s:
            why = "refresh"
        else:
            return None
        self.in_force = msgspec.structs.replace(
            sent, ts=now, resent=True, reason=f"re-sent ({why}): {self.reason_in_force}"
        )
        return self.in_force

    def _algorithm(
        self, current: int, raw: float, stable_mean: float, panic_mean: float, now: float
    ) -> tuple[int, str]:
        """The desired count and the signal it was read from (for the reason)."""
        spec = self.spec
        if spec.strategy == "hpa":
            return algorithms.hpa(
                current, raw, self.stable.max(now) or 0.0, spec.tolerance
            ), f"latest {raw:.2f}"
        if spec.strategy == "kpa":
            desired = algorithms.kpa(
                current, stable_mean, panic_mean, now, self.kpa_state,
                panic_threshold=spec.panic_threshold, stable_window_s=spec.stable_window_s, tolerance=spec.tolerance,
            )  # fmt: skip
            if self.kpa_state.panicking:
                return desired, f"panic mean {panic_mean:.2f}"
            return desired, f"stable mean {stable_mean:.2f}"
        return algorithms.apa(current, panic_mean, spec.tolerance), f"window mean {panic_mean:.2f}"

    def _reason(self, current: int, desired: int, raws: dict[str, float], basis: str, from_zero: bool) -> str:
        if from_zero:
            return f"scale from zero: routers hold requests for {self.spec.model or self.spec.deployment}"
        direction = "up" if desired > current else "down"
        mode = " (panic)" if self.spec.strategy == "kpa" and self.kpa_state.panicking else ""
        if not raws:
            return f"scale {direction} {current}->{desired} by {self.spec.strategy}{mode}: no load"
        key, value = max(raws.items(), key=lambda kv: kv[1])
        target = next(m.target for m in self.spec.metrics if m.key == key)
        return (
            f"scale {direction} {current}->{desired} by {self.spec.strategy}{mode}: {basis} replicas; "
            f"now {key} {value * target:.3g} / target {target:g} = {value:.2f}"
        )

    def _window_state(self, now: float) -> str:
        parts = [
            f"stable={len(self.stable)}/{self.spec.stable_window_s:g}s",
            f"panic={len(self.panic)}/{self.spec.panic_window_s:g}s",
        ]
        if self.spec.strategy == "kpa":
            since = self.kpa_state.panic_since
            parts.append("mode=stable" if since is None else f"mode=panic for {now - since:.1f}s")
        return " ".join(parts)
