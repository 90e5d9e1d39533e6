"""The autoscaler's loops: pod events, router stats and the orchestrator's ``deployments.status`` in;
scrape -> ``metrics.pods``; evaluate -> ``scale.decisions`` (new decisions, and the decisions in force sent
again until the orchestrator's status shows them applied). Decisions are made by the pure :mod:`policy`;
this module only moves data."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from brixmesh.autoscaler.fleet import Fleet, RouterSignals
from brixmesh.autoscaler.observe import observe, target_status
from brixmesh.autoscaler.registry import Autoscalers
from brixmesh.autoscaler.scraper import Scraper
from brixmesh.common.bus import Bus
from brixmesh.common.messages import DeploymentStatus, RouterStats, ScaleDecision
from brixmesh.common.pod_watch import PodWatch, watch_pods
from brixmesh.common.subjects import DEPLOYMENTS_STATUS, METRICS_PODS, ROUTER_STATS, SCALE_DECISIONS
from prometheus_client import CollectorRegistry

log = logging.getLogger(__name__)


class AutoscalerController:
    def __init__(
        self,
        scraper: Scraper,
        autoscalers: Autoscalers,
        *,
        max_metrics_age_s: float = 2.0,
        decision_refresh_s: float = 10.0,
    ) -> None:
        self.scraper = scraper
        self.autoscalers = autoscalers
        self.fleet = Fleet()
        self.routers = RouterSignals()
        self.deployments: dict[str, DeploymentStatus] = {}
        """The orchestrator's latest status per deployment."""
        self.max_metrics_age_s = max_metrics_age_s
        self.decision_refresh_s = decision_refresh_s
        self.decisions_published = 0
        self.decisions_resent = 0

    async def attach(self, bus: Bus, registry: CollectorRegistry | None = None) -> PodWatch:
        """Subscribe the inputs; the caller runs the returned pod watch's ``expire_forever()``."""
        await bus.subscribe(ROUTER_STATS.pattern(), RouterStats, self._on_router_stats)
        await bus.subscribe(DEPLOYMENTS_STATUS.pattern(), DeploymentStatus, self._on_deployment_status)
        return await watch_pods(bus, self.fleet.apply, registry=registry)

    def _on_deployment_status(self, _subject: str, status: DeploymentStatus) -> None:
        if status.deleted:
            self.deployments.pop(status.deployment, None)
        else:
            self.deployments[status.deployment] = status

    def _on_router_stats(self, _subject: str, stats: RouterStats) -> None:
        self.routers.record(stats)

    async def scrape_once(self, bus: Bus | None) -> None:
        for metrics in await self.scraper.scrape_all(self.fleet.scrape_targets()):
            self.fleet.record(metrics)
            if bus is not None:
                await bus.publish(METRICS_PODS.format(pod=metrics.pod), metrics)

    def evaluate_once(self, now: float) -> list[ScaleDecision]:
        """New decisions, and the decisions in force that must be sent again."""
        decisions = []
        for policy in self.autoscalers:
            status = target_status(self.deployments.get(policy.spec.deployment), policy.spec.role)
            obs = observe(
                policy.spec, self.fleet, self.routers, now,
                max_metrics_age_s=self.max_metrics_age_s, status=status,
            )  # fmt: skip
            decision = policy.evaluate(obs) or policy.enforce(status, now, refresh_s=self.decision_refresh_s)
            if decision is not None:
                decisions.append(decision)
        return decisions

    async def publish(self, bus: Bus, decisions: list[ScaleDecision]) -> None:
        for decision in decisions:
            if decision.resent:
                self.decisions_resent += 1
            else:
                extra = {"deployment": decision.deployment, "reason": decision.reason}
                log.info("scale decision", extra=extra)
                self.decisions_published += 1
            await bus.publish(SCALE_DECISIONS.format(deployment=decision.deployment), decision)

    async def run_scraping(self, bus: Bus, interval_s: float) -> None:
        await every(interval_s, lambda: self.scrape_once(bus))

    async def run_evaluation(self, bus: Bus, interval_s: float) -> None:
        async def tick() -> None:
            await self.publish(bus, self.evaluate_once(time.time()))

        await every(interval_s, tick)


async def every(interval_s: float, step: Callable[[], Awaitable[None]]) -> None:
    """Run ``step`` at a fixed cadence; a slow step delays the next one instead of stacking them."""
    loop = asyncio.get_running_loop()
    next_at = loop.time()
    while True:
        await step()
        next_at += interval_s
        delay = next_at - loop.time()
        if delay < 0:
            next_at = loop.time()
            delay = 0
        await asyncio.sleep(delay)
