"""Wiring of the adapter-manager: pods (leases), router stats and pod metrics in; specs from a file, the
registry API and ModelAdapter resources (:mod:`resources`); the placement loop; placements out on
``adapters.placements``."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from brixmesh.common.messages import AdapterPlacements, AdapterPlacementsRequest, PodMetrics, RouterStats
from brixmesh.common.pod_watch import watch_pods
from brixmesh.common.service import Service
from brixmesh.common.subjects import ADAPTERS_LIST, ADAPTERS_PLACEMENTS, METRICS_PODS, ROUTER_STATS

from brixmesh.adapter_manager.artifacts import ArtifactStore
from brixmesh.adapter_manager.controller import AdapterController
from brixmesh.adapter_manager.engine import EngineClient
from brixmesh.adapter_manager.http_api import add_routes
from brixmesh.adapter_manager.settings import AdapterManagerSettings
from brixmesh.adapter_manager.spec import SpecError, load_spec_files
from brixmesh.adapter_manager.state import AdapterStore

if TYPE_CHECKING:
    from brixmesh.common.kube.specs import ResourceSpecs

    from brixmesh.adapter_manager.spec import AdapterSpec


def build_service(settings: AdapterManagerSettings) -> Service:
    service = Service("adapter-manager", settings)
    try:
        file_specs = load_spec_files(settings.adapters_file) if settings.adapters_file else []
    except SpecError as exc:
        print(f"brixmesh-adapter-manager: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    engine = EngineClient(settings.engine_timeout_s)
    artifacts = ArtifactStore(
        settings.state_dir / "adapter-cache",
        hf_cache_dir=settings.hf_cache_dir,
        credentials_dir=settings.credentials_dir,
        s3_endpoint_url=settings.s3_endpoint_url,
    )

    async def publish(placements: AdapterPlacements) -> None:
        if service.bus.connected:
            await service.bus.publish(ADAPTERS_PLACEMENTS.template, placements)

    controller = AdapterController(
        settings, AdapterStore(settings.state_dir), artifacts, engine, publish,
        manager=service.instance_id, registry=service.registry,
    )  # fmt: skip
    for spec in file_specs:
        controller.register(spec, "file")
    add_routes(service.app, controller)
    resources: ResourceSpecs[AdapterSpec] | None = None
    if settings.k8s_modeladapters:  # imports the Kubernetes client (a second or so): only when used
        from brixmesh.adapter_manager.resources import model_adapter_resources

        api, namespace = settings.resource_api("brixmesh-adapter-manager")
        resources = model_adapter_resources(api, namespace, controller)

    async def start(svc: Service) -> None:
        if resources is not None:
            await resources.api.open()
            svc.spawn(resources.run(), "modeladapters")
        await svc.bus.serve(
            ADAPTERS_LIST.template, AdapterPlacementsRequest, lambda _s, _r: controller.placements()
        )
        await svc.bus.subscribe(
            ROUTER_STATS.pattern(), RouterStats,
            lambda _s, s: controller.on_router_stats(s.model, s.router, s.arrivals, s.queued),
        )  # fmt: skip
        await svc.bus.subscribe(METRICS_PODS.pattern(), PodMetrics, lambda _s, m: controller.on_metrics(m))
        watch = await watch_pods(svc.bus, controller.on_pod_event, registry=svc.registry)
        svc.spawn(watch.expire_forever(), "pod-leases")
        svc.spawn(controller.run_forever(), "placement")

    async def stop(_svc: Service) -> None:
        await engine.close()
        if resources is not None:
            await resources.api.close()

    service.on_start(start)
    service.on_stop(stop)
    return service
