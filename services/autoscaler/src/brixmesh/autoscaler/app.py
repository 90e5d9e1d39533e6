"""Wiring of the autoscaler service.

Inputs: ``pods.*`` (pod discovery), ``router.stats.*`` (leading demand signal), ``deployments.status.*``
(the orchestrator's observed fleet: closes the loop), engines' ``/metrics`` (scraped), specs from YAML
files, the HTTP API and PodAutoscaler resources (:mod:`resources`), ``gpu.profiles.*``
(optimizer). State: :class:`Fleet`, :class:`RouterSignals`, :class:`Autoscalers`, :class:`GpuOptimizers`.
Decisions: :mod:`policy`, :mod:`gpu_optimizer`. Outputs: ``metrics.pods.<pod>``,
``scale.decisions.<deployment>``, ``gpu.plans.<model>``.
"""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING

import httpx
from brixmesh.autoscaler.api import add_routes
from brixmesh.autoscaler.controller import AutoscalerController, every
from brixmesh.autoscaler.gpu_optimizer import FleetView, GpuOptimizers
from brixmesh.autoscaler.registry import Autoscalers
from brixmesh.autoscaler.scraper import Scraper
from brixmesh.autoscaler.settings import AutoscalerSettings, spec_paths
from brixmesh.autoscaler.spec import PodAutoscalerSpec, SpecError, load_spec_file
from brixmesh.common.service import Service
from prometheus_client import Gauge

if TYPE_CHECKING:
    from brixmesh.common.kube.specs import ResourceSpecs


def build_service(settings: AutoscalerSettings) -> Service:
    service = Service("autoscaler", settings)
    autoscalers = Autoscalers()
    try:
        for path in settings.spec_files:
            for spec in load_spec_file(path):
                autoscalers.put(spec)
    except SpecError as exc:
        print(f"brixmesh-autoscaler: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    resources: ResourceSpecs[PodAutoscalerSpec] | None = None
    if settings.k8s_podautoscalers:  # imports the Kubernetes client (a second or so): only when used
        from brixmesh.autoscaler.resources import pod_autoscaler_resources

        api, namespace = settings.resource_api("brixmesh-autoscaler")
        resources = pod_autoscaler_resources(api, namespace, autoscalers)
    client = httpx.AsyncClient(limits=httpx.Limits(max_keepalive_connections=256, max_connections=512))
    scraper = Scraper(
        client,
        timeout_s=settings.scrape_timeout_s,
        rate_window_s=settings.rate_window_s,
        quantile_window_s=settings.quantile_window_s,
    )
    controller = AutoscalerController(
        scraper, autoscalers, max_metrics_age_s=settings.max_metrics_age_s,
        decision_refresh_s=settings.decision_refresh_s,
    )  # fmt: skip
    add_routes(service.app, autoscalers, lambda: set(controller.fleet.models))
    optimizers = GpuOptimizers.from_files(
        spec_paths(settings.gpu_optimizer_specs),
        FleetView(controller.fleet.live_count, controller.deployments.get, settings.decision_refresh_s),
    )
    optimizers.add_routes(service.app)
    service.add_known_pods_route(lambda: controller.fleet.pods)

    registry = service.registry
    Gauge("brixmesh_autoscaler_pods", "Pods known from pods.* events", registry=registry).set_function(
        lambda: len(controller.fleet.pods)
    )
    Gauge("brixmesh_autoscaler_autoscalers", "PodAutoscalers in force", registry=registry).set_function(
        lambda: len(autoscalers)
    )
    if resources is not None:
        Gauge(
            "brixmesh_autoscaler_resources_refused",
            "PodAutoscaler resources whose spec was refused (see the log)",
            registry=registry,
        ).set_function(lambda: len(resources.refused))
    Gauge("brixmesh_autoscaler_scrapes", "Engine /metrics scrapes so far", registry=registry).set_function(
        lambda: scraper.scrapes
    )
    Gauge(
        "brixmesh_autoscaler_scrape_failures",
        "Failed engine scrapes so far (published stale)",
        registry=registry,
    ).set_function(lambda: scraper.failures)
    Gauge(
        "brixmesh_autoscaler_decisions", "Scale decisions published so far", registry=registry
    ).set_function(lambda: controller.decisions_published)
    Gauge(
        "brixmesh_autoscaler_decisions_resent",
        "Decisions in force sent again (unacknowledged, overridden by hand, or refreshed)",
        registry=registry,
    ).set_function(lambda: controller.decisions_resent)

    async def start(svc: Service) -> None:
        if resources is not None:
            await resources.api.open()
            svc.spawn(resources.run(), "podautoscalers")
        watch = await controller.attach(svc.bus, svc.registry)
        svc.spawn(watch.expire_forever(), "pod-leases")
        svc.spawn(controller.run_scraping(svc.bus, settings.scrape_interval_s), "scrape")
        svc.spawn(controller.run_evaluation(svc.bus, settings.evaluate_interval_s), "evaluate")
        if optimizers.optimizers:
            await optimizers.attach(svc.bus)
            svc.spawn(every(settings.evaluate_interval_s, lambda: optimizers.run_once(svc.bus, time.time())),
                      "gpu-optimizer")

    async def stop(_svc: Service) -> None:
        await client.aclose()
        if resources is not None:
            await resources.api.close()

    service.on_start(start)
    service.on_stop(stop)
    return service
