"""Prometheus view of the orchestrator's state, computed at scrape time (no bookkeeping on the event path)."""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Iterator

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from brixmesh.orchestrator.controller import Orchestrator


class OrchestratorCollector(Collector):
    def __init__(self, orchestrator: Orchestrator) -> None:
        self._orchestrator = orchestrator

    def collect(self) -> Iterator[GaugeMetricFamily]:
        desired = GaugeMetricFamily(
            "brixmesh_orchestrator_desired_replicas", "Desired replicas per deployment", labels=["deployment"]
        )
        for name, deployment in self._orchestrator.deployments.items():
            desired.add_metric([name], deployment.replicas)
        yield desired
        pods = GaugeMetricFamily(
            "brixmesh_orchestrator_pods", "Pods per deployment and phase", labels=["deployment", "phase"]
        )
        tally = Tally((pod.deployment, pod.phase) for pod in self._orchestrator.backend.list_pods())
        for (deployment, phase), count in sorted(tally.items()):
            pods.add_metric([deployment, phase], count)
        yield pods
        restarts = GaugeMetricFamily(
            "brixmesh_orchestrator_pod_restarts", "Restarts of each current pod", labels=["deployment", "pod"]
        )
        for pod in self._orchestrator.backend.list_pods():
            restarts.add_metric([pod.deployment, pod.name], pod.restarts)
        yield restarts
