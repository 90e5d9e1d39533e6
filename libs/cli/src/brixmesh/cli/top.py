"""``brixmesh top``: a live terminal view of the fleet, from what the services publish on the bus.

Pods (``metrics.pods.*``, scraped from the engines by the autoscaler, and ``pods.*`` events): requests
running and queued, KV usage, prefix hit rate, tokens/s. Deployments (``deployments.status.*``): desired vs
ready. Routers (``router.stats.*``): requests per second per model. The latest scale decisions
(``scale.decisions.*``). :class:`FleetView` holds the state and draws it; :func:`top` feeds and refreshes it.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import Any

import msgspec
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

from brixmesh.common import messages as m
from brixmesh.common.bus import Bus, NatsAuth
from brixmesh.common.pod_watch import watch_pods
from brixmesh.common.subjects import DEPLOYMENTS_STATUS, METRICS_PODS, ROUTER_STATS, SCALE_DECISIONS

DECISIONS_SHOWN = 5
ROUTER_STATS_TTL_S = 10.0
"""A router replica silent this long is left out of the request rates."""

WATCHED: dict[str, type[msgspec.Struct]] = {
    METRICS_PODS.pattern(): m.PodMetrics,
    DEPLOYMENTS_STATUS.pattern(): m.DeploymentStatus,
    SCALE_DECISIONS.pattern(): m.ScaleDecision,
    ROUTER_STATS.pattern(): m.RouterStats,
}


class FleetView:
    def __init__(self) -> None:
        self.pod_state: dict[str, str] = {}
        self.pod_metrics: dict[str, m.PodMetrics] = {}
        self.deployments: dict[str, m.DeploymentStatus] = {}
        self.router_stats: dict[tuple[str, str], tuple[float, m.RouterStats]] = {}
        self.decisions: deque[m.ScaleDecision] = deque(maxlen=DECISIONS_SHOWN)

    def apply(self, message: Any, now: float) -> None:
        if isinstance(message, m.PodEvent):
            if message.kind == "removed":
                self.pod_state.pop(message.pod.pod, None)
                self.pod_metrics.pop(message.pod.pod, None)
            else:
                self.pod_state[message.pod.pod] = message.kind
        elif isinstance(message, m.PodMetrics):
            self.pod_metrics[message.pod] = message
        elif isinstance(message, m.DeploymentStatus):
            if message.deleted:
                self.deployments.pop(message.deployment, None)
            else:
                self.deployments[message.deployment] = message
        elif isinstance(message, m.ScaleDecision):
            self.decisions.appendleft(message)
        elif isinstance(message, m.RouterStats):
            self.router_stats[(message.router, message.model)] = (now, message)

    def render(self, now: float) -> Group:
        pods = Table(title="pods", title_justify="left", expand=False)
        for column in ("pod", "deployment", "state"):
            pods.add_column(column)
        for column in ("running", "queued", "KV usage", "hit rate", "gen tok/s"):
            pods.add_column(column, justify="right")
        for name in sorted(self.pod_state.keys() | self.pod_metrics.keys()):
            metrics = self.pod_metrics.get(name)
            state = self.pod_state.get(name, "?")
            if metrics is None:
                pods.add_row(name, "", state, "", "", "", "", "")
                continue
            pods.add_row(
                name, metrics.deployment, state + (" (stale)" if metrics.stale else ""),
                f"{metrics.running:.0f}", f"{metrics.waiting:.0f}", f"{metrics.kv_usage:.0%}",
                f"{metrics.prefix_hit_rate:.0%}", f"{metrics.generation_tokens_per_s:.1f}",
            )  # fmt: skip
        deployments = Table(title="deployments", title_justify="left")
        for column in ("deployment", "desired", "ready", "pods", "last decision"):
            deployments.add_column(column)
        for name, status in sorted(self.deployments.items()):
            last = _clock(status.last_decision_ts) if status.last_decision_ts else "-"
            colour = "green" if status.ready_replicas >= status.desired_replicas else "yellow"
            ready = f"[{colour}]{status.ready_replicas}[/]"
            deployments.add_row(name, str(status.desired_replicas), ready, str(status.pods), last)
        routers = Table(title="requests (all routers)", title_justify="left")
        for column in ("model", "req/s", "in flight", "queued", "failures/s"):
            routers.add_column(column)
        for model, (rate, in_flight, queued, failures) in sorted(self._per_model(now).items()):
            routers.add_row(model, f"{rate:.1f}", str(in_flight), str(queued), f"{failures:.1f}")
        decisions = Table(title="latest scale decisions", title_justify="left")
        for column in ("time", "deployment", "from", "to", "algorithm", "reason"):
            decisions.add_column(column)
        for decision in self.decisions:
            decisions.add_row(
                _clock(decision.ts), decision.deployment, str(decision.current_replicas),
                str(decision.desired_replicas), decision.algorithm, decision.reason,
            )  # fmt: skip
        return Group(pods, deployments, routers, decisions)

    def _per_model(self, now: float) -> dict[str, tuple[float, int, int, float]]:
        totals: dict[str, tuple[float, int, int, float]] = {}
        for seen, stats in self.router_stats.values():
            if now - seen > ROUTER_STATS_TTL_S or stats.window_s <= 0:
                continue
            rate, in_flight, queued, failures = totals.get(stats.model, (0.0, 0, 0, 0.0))
            totals[stats.model] = (
                rate + stats.arrivals / stats.window_s, in_flight + stats.in_flight, queued + stats.queued,
                failures + stats.failures / stats.window_s,
            )  # fmt: skip
        return totals


def _clock(ts: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(ts))


async def top(nats_url: str, auth: NatsAuth, console: Console, refresh_s: float) -> None:
    """Until cancelled (Ctrl-C): follow the bus, redraw every ``refresh_s``. Pods come through the shared pod
    watch (the orchestrator's listing at start, leases that expire), the rest straight from their subjects."""
    bus = await Bus.connect(nats_url, name="brixmesh-top", setting="--nats-url", auth=auth)
    view = FleetView()

    def apply(_subject: str, message: Any) -> None:
        view.apply(message, time.monotonic())

    try:
        for pattern, schema in WATCHED.items():
            await bus.subscribe(pattern, schema, apply)
        watch = await watch_pods(bus, lambda event: view.apply(event, time.monotonic()))
        expiring = asyncio.ensure_future(watch.expire_forever())
        try:
            with Live(view.render(time.monotonic()), console=console, auto_refresh=False) as live:
                while True:
                    await asyncio.sleep(refresh_s)
                    live.update(view.render(time.monotonic()), refresh=True)
        finally:
            expiring.cancel()
    finally:
        await bus.close()
