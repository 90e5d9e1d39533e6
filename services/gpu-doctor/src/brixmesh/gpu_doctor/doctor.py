"""The doctor's loop: poll every source, judge the signals (:mod:`~brixmesh.gpu_doctor.policy`), find the
pods each verdict concerns, publish the decision on ``gpu.decisions.<node>``.

Level-triggered: a decision that takes pods out is re-sent every ``resend_interval_s`` while any of its pods
is still announced as serving (the orchestrator acts idempotently), so one lost message delays an action by
one interval at most. The pods of the node come from the orchestrator's ``pods.*`` (leases, via
:mod:`brixmesh.common.pod_watch`); a pod belongs to a GPU by its ``gpu`` label.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import deque
from collections.abc import Callable

import msgspec

from brixmesh.common.bus import Bus
from brixmesh.common.messages import GPU_INDEX_LABEL, NODE_LABEL, GpuDecision, PodEvent, PodInfo
from brixmesh.common.subjects import GPU_DECISIONS
from prometheus_client import CollectorRegistry, Counter

from brixmesh.gpu_doctor.policy import Policy, Verdict
from brixmesh.gpu_doctor.signals import Signal, Source

log = logging.getLogger(__name__)

RECENT_DECISIONS = 200
"""Decisions kept for ``GET /v1/decisions``."""


class Doctor:
    def __init__(
        self,
        bus: Bus,
        *,
        node: str,
        instance_id: str,
        sources: list[Source],
        policy: Policy,
        resend_interval_s: float = 2.0,
        registry: CollectorRegistry | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._bus = bus
        self.node = node
        self._instance_id = instance_id
        self.sources = sources
        self.policy = policy
        self._resend_interval_s = resend_interval_s
        self._clock = clock
        self.pods: dict[str, PodInfo] = {}
        """This node's pods that are not draining (announced added or ready)."""
        self.ready: set[str] = set()
        """Those of them that passed their readiness probe: only they are probed for engine symptoms (a
        starting engine does not answer yet)."""
        self._in_force: dict[str, GpuDecision] = {}
        self.recent: deque[GpuDecision] = deque(maxlen=RECENT_DECISIONS)
        self._subject = GPU_DECISIONS.format(node=node)
        self._signals = Counter(
            "brixmesh_gpu_doctor_signals", "Signals seen, by kind and source", ["kind", "source"],
            registry=registry,
        )
        self._decisions = Counter(
            "brixmesh_gpu_doctor_decisions", "Decisions published (first sending), by action", ["action"],
            registry=registry,
        )

    def on_pod_event(self, event: PodEvent) -> None:
        info = event.pod
        if info.labels.get(NODE_LABEL) != self.node:
            return
        if event.kind in ("added", "ready"):
            self.pods[info.pod] = info
            if event.kind == "ready":
                self.ready.add(info.pod)
            else:
                self.ready.discard(info.pod)
        else:
            self.pods.pop(info.pod, None)
            self.ready.discard(info.pod)

    def serving_pods(self) -> list[PodInfo]:
        return [self.pods[name] for name in self.ready]

    def pods_on(self, gpu: str) -> list[str]:
        return sorted(
            name for name, info in self.pods.items() if gpu in info.labels.get(GPU_INDEX_LABEL, "").split(",")
        )

    async def tick(self) -> list[GpuDecision]:
        now = self._clock()
        polled = await asyncio.gather(*(source.poll(now) for source in self.sources), return_exceptions=True)
        signals: list[Signal] = []
        for source, found in zip(self.sources, polled):
            if isinstance(found, BaseException):
                log.warning("source %s failed: %r", source.name, found)
                continue
            signals += found
        for signal in signals:
            self._signals.labels(signal.kind, signal.source).inc()
        decisions = [self._decision(verdict, now) for verdict in self.policy.evaluate(signals, now)]
        for decision in decisions:
            await self._publish(decision)
            self._decisions.labels(decision.action).inc()
            self.recent.append(decision)
            if decision.action != "observe":
                log.warning(
                    "%s gpu %r pods %s: %s", decision.action, decision.gpu, decision.pods, decision.reason
                )
                self._in_force[decision.decision_id] = decision
        return decisions

    def _decision(self, verdict: Verdict, now: float) -> GpuDecision:
        signal = verdict.signal
        if signal.pod:
            pods = [signal.pod] if signal.pod in self.pods else []
        elif signal.gpu:
            pods = self.pods_on(signal.gpu)
        else:
            pods = []
        evidence = {
            **signal.detail, "source": signal.source, "first_seen": f"{verdict.first_seen:.3f}",
            "observations": str(verdict.count), "catalogue_action": verdict.rule.action,
        }
        if signal.pod:
            evidence["pod"] = signal.pod
        return GpuDecision(
            decision_id=uuid.uuid4().hex[:12], node=self.node, gpu=signal.gpu, pods=pods,
            action=verdict.action, severity=verdict.rule.severity, signal=signal.kind, value=signal.value,
            reason=verdict.reason, evidence=evidence, doctor=self._instance_id, ts=now,
        )  # fmt: skip

    async def resend_in_force(self) -> None:
        """Send again every decision whose pods still serve; forget the others."""
        for decision_id, decision in list(self._in_force.items()):
            serving = [pod for pod in decision.pods if pod in self.pods]
            if not serving:
                del self._in_force[decision_id]
                continue
            await self._publish(msgspec.structs.replace(decision, pods=serving, resent=True, ts=self._clock()))

    async def _publish(self, decision: GpuDecision) -> None:
        await self._bus.publish(self._subject, decision)

    async def run(self, poll_interval_s: float) -> None:
        next_resend = 0.0
        while True:
            started = time.monotonic()
            await self.tick()
            if started >= next_resend:
                await self.resend_in_force()
                next_resend = started + self._resend_interval_s
            await asyncio.sleep(max(0.0, poll_interval_s - (time.monotonic() - started)))

    async def close(self) -> None:
        for source in self.sources:
            await source.close()
