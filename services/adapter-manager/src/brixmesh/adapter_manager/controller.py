"""The placement loop: registered adapters vs what each engine holds, converged level-triggered.

Every pass: ask every ready pod what it holds (``GET /v1/models``), validate new specs (artifact, base model,
rank), plan (:mod:`.planner`), unload what no longer belongs, load what is missing (verified through
``/v1/models``; failed loads are retried with backoff, and after ``load_attempts`` the pod is skipped for a
while so the planner moves the adapter elsewhere), then publish the placements. A restarted engine holds
nothing, so the next pass loads its adapters again; a restarted manager reads its records and adopts what
the engines hold.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from brixmesh.common.messages import AdapterPlacement, AdapterPlacements, PodEvent, PodInfo, PodMetrics
from prometheus_client import CollectorRegistry, Counter, Gauge

from brixmesh.adapter_manager.artifacts import Artifact, ArtifactError, ArtifactStore, base_model_matches
from brixmesh.adapter_manager.demand import DemandTracker
from brixmesh.adapter_manager.engine import EngineCallError, EngineClient
from brixmesh.adapter_manager.planner import PodView, Want, demand_replicas, place
from brixmesh.adapter_manager.settings import AdapterManagerSettings
from brixmesh.adapter_manager.spec import AdapterSpec
from brixmesh.adapter_manager.state import AdapterRecord, AdapterStore, Origin

log = logging.getLogger(__name__)

Publish = Callable[[AdapterPlacements], Awaitable[None]]


@dataclass
class LoadFailures:
    attempts: int
    retry_at: float
    message: str


class AdapterController:
    def __init__(
        self,
        settings: AdapterManagerSettings,
        store: AdapterStore,
        artifacts: ArtifactStore,
        engine: EngineClient,
        publish: Publish,
        *,
        manager: str,
        registry: CollectorRegistry | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.store = store
        self.artifacts = artifacts
        self.engine = engine
        self._publish = publish
        self.manager = manager
        self._clock = clock
        self.records: dict[str, AdapterRecord] = store.load_all()
        self.specs: dict[str, AdapterSpec] = {
            name: AdapterSpec.model_validate(record.spec) for name, record in self.records.items()
        }
        self.pods: dict[str, PodInfo] = {}
        """Ready pods (leases from pod_watch)."""
        self.observed: dict[str, set[str]] = {}
        """pod -> adapters it reported holding in the last pass."""
        self.pod_load: dict[str, float] = {}
        self.demand = DemandTracker(settings.demand_window_s, clock())
        self._artifacts: dict[str, Artifact] = {}
        self._failures: dict[tuple[str, str], LoadFailures] = {}
        self._refused: dict[tuple[str, str], tuple[float, str]] = {}
        """(adapter, pod) -> (until, the engine's last message)."""
        self._retired: set[str] = store.load_retired() - self.records.keys()
        """Removed adapters still to unload wherever they are."""
        self._wake = asyncio.Event()
        self._last_published: list[AdapterPlacement] | None = None
        self._loads = Counter(
            "brixmesh_adapter_loads",
            "Adapter loads on engines by result (ok, failed, refused: pod given up)",
            ["result"], registry=registry,
        )  # fmt: skip
        self._unloads = Counter("brixmesh_adapter_unloads", "Adapter unloads on engines", registry=registry)
        phases = Gauge("brixmesh_adapters", "Registered adapters by phase", ["phase"], registry=registry)
        for phase in ("Pending", "Placed", "Loading", "Running", "Failed"):
            phases.labels(phase).set_function(
                lambda phase=phase: sum(record.phase == phase for record in self.records.values())
            )

    # --- inputs -------------------------------------------------------------------------------------------

    def register(self, spec: AdapterSpec, origin: Origin) -> AdapterRecord:
        """Add or replace an adapter; a changed spec starts over (Pending, validated again)."""
        now = time.time()
        previous = self.records.get(spec.name)
        if previous is not None and previous.spec == spec.model_dump() and previous.phase != "Failed":
            return previous
        record = AdapterRecord(
            spec=spec.model_dump(), origin=origin, created_at=previous.created_at if previous else now,
            updated_at=now, pods=previous.pods if previous else [],
            desired=previous.desired if previous else [],
        )  # fmt: skip
        self.records[spec.name] = record
        self.specs[spec.name] = spec
        self._artifacts.pop(spec.name, None)
        self._forget_failures(spec.name)
        if spec.name in self._retired:
            self._retired.discard(spec.name)
            self.store.save_retired(self._retired)
        self.store.save(spec.name, record)
        self._wake.set()
        return record

    def remove(self, name: str) -> bool:
        if self.records.pop(name, None) is None:
            return False
        self.specs.pop(name, None)
        self._artifacts.pop(name, None)
        self._forget_failures(name)
        self.demand.forget(name)
        self._retired.add(name)
        self.store.save_retired(self._retired)
        self.store.drop(name)
        self._wake.set()
        return True

    def on_pod_event(self, event: PodEvent) -> None:
        name = event.pod.pod
        if event.kind == "ready":
            self.pods[name] = event.pod
        else:
            self.pods.pop(name, None)
            self.observed.pop(name, None)
            self.pod_load.pop(name, None)
        self._wake.set()

    def on_metrics(self, metrics: PodMetrics) -> None:
        if metrics.pod in self.pods and not metrics.stale:
            self.pod_load[metrics.pod] = metrics.running + metrics.waiting

    def on_router_stats(self, model: str, router: str, arrivals: int, queued: int) -> None:
        if model in self.records:
            self.demand.observe(model, router, self._clock(), arrivals, queued)
            if queued and not self.records[model].pods:
                self._wake.set()

    # --- the loop -----------------------------------------------------------------------------------------

    async def run_forever(self) -> None:
        last_publish = 0.0
        while True:
            self._wake.clear()
            try:
                changed = await self.reconcile()
            except Exception:
                log.exception("adapter reconcile pass failed")
                changed = False
            now = self._clock()
            if changed or now - last_publish >= self.settings.announce_interval_s:
                await self._publish(self.placements())
                last_publish = now
            try:
                await asyncio.wait_for(self._wake.wait(), self.settings.reconcile_interval_s)
            except asyncio.TimeoutError:
                pass

    async def reconcile(self) -> bool:
        """One pass; True when the published placements changed."""
        now = self._clock()
        await self._observe()
        await self._validate()
        plan = place(self._wants(now), self._pod_views(), self._current(), self._refused_pods(now))
        for name, record in self.records.items():
            desired = plan.pods.get(name, [])
            if record.phase != "Failed" and desired != record.desired:
                record.desired = desired
                self.store.save(name, record)
        self._update_phases(plan.short, loading=self._pending_loads(now))
        if self._changed():
            await self._publish(self.placements())
        await asyncio.gather(*(self._converge_pod(pod, now) for pod in list(self.pods)))
        unloaded = {
            name for name in self._retired if not any(name in held for held in self.observed.values())
        }
        if unloaded:
            self._retired -= unloaded
            self.store.save_retired(self._retired)
        self._update_phases(plan.short, loading=self._pending_loads(self._clock()))
        return self._changed()

    async def _observe(self) -> None:
        async def ask(pod: str, info: PodInfo) -> None:
            try:
                self.observed[pod] = await self.engine.loaded(info.endpoint.rstrip("/"))
            except EngineCallError as exc:
                log.warning("cannot list adapters of pod %s: %s", pod, exc)
                self.observed.pop(pod, None)

        await asyncio.gather(*(ask(pod, info) for pod, info in list(self.pods.items())))

    async def _validate(self) -> None:
        for name, spec in list(self.specs.items()):
            record = self.records[name]
            if record.phase == "Failed" or name in self._artifacts:
                continue
            try:
                artifact = await asyncio.to_thread(self.artifacts.fetch, spec.artifact, spec.credentials)
            except ArtifactError as exc:
                if self.specs.get(name) is spec:  # not replaced or removed meanwhile
                    self._fail(name, f"artifact: {exc}")
                continue
            if self.specs.get(name) is not spec:
                continue
            if not base_model_matches(artifact.base_model, spec.base_model):
                self._fail(
                    name,
                    f"wrong base model: adapter_config.json says {artifact.base_model!r}, the spec and its "
                    f"pods serve {spec.base_model!r}",
                )
                continue
            ranks = [info.max_lora_rank for info in self.pods.values() if info.model == spec.base_model]
            if ranks and all(ranks) and artifact.rank > max(ranks):
                self._fail(
                    name, f"bad rank: rank {artifact.rank} exceeds the engines' --max-lora-rank {max(ranks)}"
                )
                continue
            self._artifacts[name] = artifact

    def _fail(self, name: str, reason: str) -> None:
        record = self.records[name]
        record.phase, record.reason, record.desired = "Failed", reason, []
        record.updated_at = time.time()
        self.store.save(name, record)
        log.warning("adapter failed", extra={"adapter": name, "reason": reason})

    def _wants(self, now: float) -> list[Want]:
        wants = []
        known = self.demand.known(now)
        for name, spec in self.specs.items():
            artifact = self._artifacts.get(name)
            if artifact is None:
                continue
            rate = self.demand.rate(name, now)
            needed: int | None = (
                demand_replicas(rate, self.settings.replica_requests_per_s) if known else None
            )
            if self.demand.waiting(name, now):
                needed = max(needed or 0, 1)
            wants.append(Want(
                name=name, base_model=spec.base_model, replicas=spec.replicas, min_replicas=spec.min_replicas,
                policy=spec.policy, rank=artifact.rank, demand_replicas=needed, demand=rate,
            ))  # fmt: skip
        return wants

    def _pod_views(self) -> list[PodView]:
        views = []
        for name, info in self.pods.items():
            if name not in self.observed:
                continue  # unreachable now: nothing is placed there until it answers
            capacity = info.max_cpu_loras or info.max_loras or self.settings.default_max_loras
            unmanaged = len(self.observed[name] - self.records.keys() - self._retired)
            views.append(PodView(
                name=name, model=info.model, capacity=capacity, max_rank=info.max_lora_rank,
                load=self.pod_load.get(name, 0.0), unmanaged=unmanaged,
            ))  # fmt: skip
        return views

    def _current(self) -> dict[str, list[str]]:
        current = {}
        for name, record in self.records.items():
            holders = [pod for pod, held in self.observed.items() if name in held]
            current[name] = list(dict.fromkeys([*record.desired, *holders]))
        return current

    def _refused_pods(self, now: float) -> dict[str, set[str]]:
        refused: dict[str, set[str]] = {}
        for (adapter, pod), (until, _message) in list(self._refused.items()):
            if until <= now:
                del self._refused[(adapter, pod)]
                continue
            refused.setdefault(adapter, set()).add(pod)
        return refused

    def _pending_loads(self, now: float) -> set[str]:
        return {
            name
            for name, record in self.records.items()
            for pod in record.desired
            if name not in self.observed.get(pod, set()) and (name, pod) not in self._refused
        }

    async def _converge_pod(self, pod: str, now: float) -> None:
        info = self.pods.get(pod)
        held = self.observed.get(pod)
        if info is None or held is None:
            return
        url = info.endpoint.rstrip("/")
        for name in sorted(held):
            record = self.records.get(name)
            unwanted = name in self._retired or (record is not None and pod not in record.desired)
            if not unwanted:
                continue
            try:
                await self.engine.unload(url, name)
                held.discard(name)
                self._unloads.inc()
            except EngineCallError as exc:
                log.warning("unloading %s from %s failed: %s", name, pod, exc)
        for name, record in list(self.records.items()):
            if pod not in record.desired or name in held:
                continue
            failures = self._failures.get((name, pod))
            if failures is not None and failures.retry_at > now:
                continue
            await self._load(pod, url, name, held)

    async def _load(self, pod: str, url: str, name: str, held: set[str]) -> None:
        artifact = self._artifacts.get(name)
        if artifact is None:
            return
        try:
            await self.engine.load(url, name, str(artifact.path))
            if name not in await self.engine.loaded(url):
                raise EngineCallError("the engine answered the load but /v1/models does not list the adapter")
        except EngineCallError as exc:
            self._load_failed(name, pod, str(exc))
            return
        held.add(name)
        self._failures.pop((name, pod), None)
        self._loads.labels("ok").inc()

    def _load_failed(self, name: str, pod: str, message: str) -> None:
        previous = self._failures.get((name, pod))
        attempts = (previous.attempts if previous else 0) + 1
        now = self._clock()
        if attempts >= self.settings.load_attempts:
            self._failures.pop((name, pod), None)
            self._refused[(name, pod)] = (now + self.settings.refused_pod_s, message)
            self._loads.labels("refused").inc()
            log.warning(
                "pod refused adapter; placing it elsewhere",
                extra={"adapter": name, "pod": pod, "attempts": attempts, "error": message},
            )
            self._wake.set()
            return
        backoff = self.settings.load_backoff_s * 2 ** (attempts - 1)
        self._failures[(name, pod)] = LoadFailures(attempts, now + backoff, message)
        self._loads.labels("failed").inc()

    def _forget_failures(self, name: str) -> None:
        for table in (self._failures, self._refused):
            for key in [key for key in table if key[0] == name]:
                del table[key]

    def _update_phases(self, short: dict[str, str], loading: set[str]) -> None:
        for name, record in self.records.items():
            if record.phase == "Failed":
                continue
            holders = sorted(pod for pod, held in self.observed.items() if name in held and pod in self.pods)
            refusals = [
                f"pod {pod} refused it: {msg}" for (a, pod), (_u, msg) in self._refused.items() if a == name
            ]
            retrying = [
                f"retrying on {pod} ({f.message})" for (a, pod), f in self._failures.items() if a == name
            ]
            if holders:
                phase = "Running"
            elif name in loading:
                phase = "Loading"
            elif record.desired:
                phase = "Placed"
            else:
                phase = "Pending"
            notes = [*refusals, *retrying]
            if name in short:
                notes.insert(0, short[name])
            elif not record.desired and not holders:
                notes.insert(0, "idle: unloaded until requested")
            reason = "; ".join(notes)
            if (phase, reason, holders) != (record.phase, record.reason, record.pods):
                record.phase, record.reason, record.pods = phase, reason, holders
                record.updated_at = time.time()
                self.store.save(name, record)

    # --- outputs ------------------------------------------------------------------------------------------

    def placements(self) -> AdapterPlacements:
        return AdapterPlacements(manager=self.manager, ts=time.time(), adapters=self._placement_list())

    def _placement_list(self) -> list[AdapterPlacement]:
        return [
            AdapterPlacement(
                name=name,
                base_model=self.specs[name].base_model,
                phase=record.phase,
                pods=list(record.pods),
                desired=list(record.desired),
                reason=record.reason,
            )  # fmt: skip
            for name, record in sorted(self.records.items())
        ]

    def _changed(self) -> bool:
        current = self._placement_list()
        changed = current != self._last_published
        self._last_published = current
        return changed
