"""Wiring of the orchestrator service.

Inputs: deployment specs (YAML files at start, HTTP API), ``scale.decisions.*`` (autoscaler),
``gpu.decisions.<node>`` (this node's gpu-doctor: drain, replace, cordon), pod process states (local
backend). State: :class:`~brixmesh.orchestrator.controller.Orchestrator` (deployments, desired
replicas, drains in progress), durable in the state directory, and the pods it adopts at start. Outputs: pods
started/drained/stopped, ``pods.*`` lifecycle events, ``pods.list`` answers, ``deployments.status.*``, the
HTTP API.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import TYPE_CHECKING

from brixmesh.common.messages import GpuDecision, PodListRequest, ScaleDecision
from brixmesh.common.service import Service
from brixmesh.common.settings import SettingsError, load_settings
from brixmesh.common.subjects import GPU_DECISIONS, PODS_LIST, SCALE_DECISIONS
from prometheus_client import Counter

from brixmesh.orchestrator.announcer import Announcer
from brixmesh.orchestrator.backend import PodBackend
from brixmesh.orchestrator.controller import Orchestrator
from brixmesh.orchestrator.http_api import add_routes
from brixmesh.orchestrator.local_backend import LocalBackend
from brixmesh.orchestrator.metrics import OrchestratorCollector
from brixmesh.orchestrator.settings import OrchestratorSettings
from brixmesh.orchestrator.spec import DeploymentSpec, SpecError, load_path, unique
from brixmesh.orchestrator.state import deployment_records
from brixmesh.orchestrator.status import StatusPublisher

if TYPE_CHECKING:
    from brixmesh.orchestrator.kubernetes.cluster import Cluster

log = logging.getLogger(__name__)

DEFAULT_DEPLOYMENT = "default"


def initial_specs(settings: OrchestratorSettings) -> list[DeploymentSpec]:
    """Specs from ``deployments_file``, then ``deployments_dir``, then the ``default`` deployment of
    ``brixmesh up --engines N`` (N > 0) unless a file already defines one by that name."""
    specs: list[DeploymentSpec] = []
    for path in (settings.deployments_file, settings.deployments_dir):
        if path is not None:
            specs += load_path(path)
    specs = unique(specs, "deployment files")
    if settings.default_engines > 0 and all(spec.name != DEFAULT_DEPLOYMENT for spec in specs):
        specs.append(
            DeploymentSpec(
                name=DEFAULT_DEPLOYMENT,
                model=settings.default_model,
                engine=settings.default_engine,
                replicas=settings.default_engines,
            )
        )
    return specs


def build_service(settings: OrchestratorSettings) -> Service:
    service = Service("orchestrator", settings)
    backend: PodBackend
    cluster: Cluster | None = None
    if settings.backend == "kubernetes":
        # desired state lives in the ModelDeployment resources: nothing kept in the state directory; imported
        # here because the Kubernetes client takes seconds to import
        from brixmesh.orchestrator.kubernetes.cluster import Cluster, KubernetesSettings

        try:
            kubernetes = load_settings(KubernetesSettings)
            cluster = Cluster(kubernetes, identity=service.instance_id)
        except (SettingsError, ValueError) as exc:
            print(f"brixmesh-orchestrator: {exc}", file=sys.stderr)
            raise SystemExit(2) from None
        backend, store = cluster.backend, None
    else:
        if settings.backend == "ray":
            if not settings.ray_address:
                # a local cluster: Ray then keeps node addresses (so the engines' endpoints) on 127.0.0.1,
                # not on the interface routing towards 8.8.8.8; read when ray is imported (despite its name,
                # it is what turns that lookup off on Linux too)
                os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
            from brixmesh.orchestrator.ray_backend import RayBackend  # imports ray (seconds): only when used

            backend = RayBackend(
                settings.state_dir, address=settings.ray_address, namespace=settings.ray_namespace,
                cpus_per_rank=settings.ray_cpus_per_rank, node_name=settings.node_name,
            )  # fmt: skip
        else:
            backend = LocalBackend(settings.state_dir, node_name=settings.node_name, gpus=settings.local_gpus)
        store = deployment_records(settings.state_dir.resolve())
        try:
            store.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            print(f"brixmesh-orchestrator: cannot keep state in {settings.state_dir} "
                  f"(set BRIXMESH_STATE_DIR): {exc.strerror}", file=sys.stderr)
            raise SystemExit(2) from None
    orchestrator = Orchestrator(
        backend,
        reconcile_interval_s=settings.reconcile_interval_s,
        drain_poll_interval_s=settings.drain_poll_interval_s,
        decision_max_age_s=settings.decision_max_age_s,
        store=store,
    )
    if cluster is not None:
        cluster.attach(orchestrator)
    try:
        startup_specs = initial_specs(settings)
        if cluster is not None and startup_specs:
            raise SpecError("on Kubernetes, deployments are ModelDeployment resources: unset "
                            "BRIXMESH_DEPLOYMENTS_* and BRIXMESH_DEFAULT_ENGINES")
        for spec in startup_specs:
            backend.validate(spec)
    except SpecError as exc:
        print(f"brixmesh-orchestrator: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    add_routes(service.app, orchestrator)
    service.registry.register(OrchestratorCollector(orchestrator))
    decisions = Counter(
        "brixmesh_orchestrator_scale_decisions", "Scale decisions received, by outcome", ["outcome"],
        registry=service.registry,
    )
    gpu_decisions = Counter(
        "brixmesh_orchestrator_gpu_decisions", "gpu-doctor decisions received, by action and outcome",
        ["action", "outcome"], registry=service.registry,
    )
    announcer: Announcer | None = None

    def on_gpu_decision(_subject: str, decision: GpuDecision) -> None:
        gpu_decisions.labels(decision.action, orchestrator.apply_gpu_decision(decision)).inc()

    def on_decision(_subject: str, decision: ScaleDecision) -> None:
        outcome = orchestrator.apply_decision(decision)
        decisions.labels(outcome).inc()
        if outcome == "applied" and cluster is not None:
            cluster.persist_replicas(decision.deployment)
        if outcome not in ("applied", "unchanged"):
            log.debug("ignored scale decision for %s: %s", decision.deployment, outcome)

    async def start(service: Service) -> None:
        if cluster is None:
            await backend.recover()
            await lead(service)
            return
        await cluster.api.open()
        service.spawn(cluster.lead(lambda: lead(service), service.spawn), "leader-election")

    async def lead(service: Service) -> None:
        nonlocal announcer
        orchestrator.restore()
        orchestrator.apply_startup(startup_specs)
        announcer = Announcer(
            service.bus, backend, service.registry,
            interval_s=settings.announce_interval_s, instance_id=service.instance_id,
            lease_s=settings.announce_interval_s * settings.lease_intervals,
        )
        await service.bus.serve(PODS_LIST.template, PodListRequest, announcer.pod_list)
        await service.bus.subscribe(SCALE_DECISIONS.pattern(), ScaleDecision, on_decision)
        own_node = GPU_DECISIONS.format(node=settings.node_name)
        nodes = GPU_DECISIONS.pattern() if backend.spans_nodes else own_node
        await service.bus.subscribe(nodes, GpuDecision, on_gpu_decision)
        service.spawn(announcer.publish_changes(), "pod-events")
        service.spawn(announcer.reannounce_forever(), "pod-reannounce")
        status = StatusPublisher(service.bus, orchestrator, instance_id=service.instance_id)
        orchestrator.on_reconciled = status.publish_changes
        if cluster is not None:  # the ModelDeployments' status subresources too
            orchestrator.on_reconciled = cluster.sync.after_reconcile(status.publish_changes)
        service.spawn(status.publish_forever(settings.announce_interval_s), "deployment-status")
        service.spawn(orchestrator.run(), "reconcile")

    async def stop(_service: Service) -> None:
        await orchestrator.close(stop_pods=settings.stop_pods_on_exit)
        if announcer is not None:
            await announcer.flush()
        if cluster is not None:
            await cluster.close()

    service.on_start(start)
    service.on_stop(stop)
    return service
