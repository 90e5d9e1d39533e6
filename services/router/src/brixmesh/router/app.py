"""Wiring of the router service.

Inputs: ``pods.*``, ``metrics.pods.*``, ``pods.list`` (discovery), ``router.routing.*`` (other replicas),
``gpu.plans.*`` (the optimizer's GPU-type routing), the static endpoints file, and the OpenAI HTTP routes.
State: the pod table, the routing env (shared in-flight counts, prefix index). Decisions: the routing
pipeline. Outputs: proxied requests, ``router.routing.<me>``, ``router.stats.<model>.<me>`` every second,
Prometheus metrics.
"""

from __future__ import annotations

import asyncio
import sys
import time
from dataclasses import dataclass

from fastapi.responses import JSONResponse

from brixmesh.common.service import Service
from brixmesh.common.messages import GpuPlan
from brixmesh.common.subjects import GPU_PLANS, ROUTER_STATS

from brixmesh.router import kv
from brixmesh.router.discovery.nats_inputs import follow_adapters, follow_pods
from brixmesh.router.discovery.pod_table import PodTable
from brixmesh.router.discovery.static_file import EndpointsFileError, load_endpoints
from brixmesh.router.http.asgi import OpenAIRoutes
from brixmesh.router.http.gateway import Gateway
from brixmesh.router.http.openapi import document_openai_routes
from brixmesh.router.limits import Authenticator, RateLimiter
from brixmesh.router.metrics import InFlightCollector, RouterMetrics, SyncCollector
from brixmesh.router.routing import Router, RoutingEnv, UnknownStrategy, default_registry
from brixmesh.router.routing.load import LoadTracker
from brixmesh.router.routing.picker import LoadGuard
from brixmesh.router.routing.scorers.gpu_plan import GpuPlanScorer
from brixmesh.router.settings import RouterSettings
from brixmesh.router.stats import StatsCollector
from brixmesh.router.sync import RoutingSync
from brixmesh.router.tracing import RequestTracing, traces_endpoint


@dataclass(frozen=True)
class RouterApp:
    service: Service
    gateway: Gateway

    @property
    def asgi(self) -> OpenAIRoutes:
        """What to serve: ``/v1/*`` straight to the gateway, the rest (and the lifespan) to the service app."""
        return OpenAIRoutes(self.service.app, self.gateway)


def build_service(settings: RouterSettings) -> Service:
    return build_router(settings).service


def build_router(settings: RouterSettings) -> RouterApp:
    service = Service("router", settings)
    document_openai_routes(service.app)
    env = RoutingEnv(
        load=LoadTracker(settings.inflight_ttl_s, settings.recent_half_life_s),
        guard=LoadGuard(
            lead_tolerance=settings.lead_tolerance, lead_slack=settings.lead_slack, lead_gain=settings.lead_gain
        ),
        prefix_block_chars=settings.prefix_block_chars,
    )
    registry = default_registry(env)
    pods = PodTable()
    pods.on_removed(env.prefix_index.forget_pod)
    service.add_known_pods_route(lambda: pods.endpoints)
    if settings.endpoints_file is not None:
        try:
            pods.add_static(load_endpoints(settings.endpoints_file))
        except EndpointsFileError as exc:
            _exit(f"{exc} (set BRIXMESH_ENDPOINTS_FILE)")
    gpu_plans = GpuPlanScorer(env.rng)
    registry.register_scorer("gpu-plan", lambda _env: gpu_plans)  # fed by the optimizer's gpu.plans.*
    kv.attach(service, registry, pods)  # extension point of the precise KV-aware routing (brixmesh.router.kv)
    for spec in {settings.default_strategy, *settings.model_strategies.values()}:
        try:
            registry.strategy(spec)
        except UnknownStrategy as exc:
            _exit(f"{exc} (set BRIXMESH_DEFAULT_STRATEGY / BRIXMESH_MODEL_STRATEGIES)")

    service.registry.register(InFlightCollector(env.load))
    sync = RoutingSync(
        env, service.instance_id, replica_lease_s=settings.heartbeat_interval_s * settings.lease_intervals
    )
    service.registry.register(SyncCollector(sync))
    stats = StatsCollector(service.instance_id)
    endpoint = traces_endpoint(settings.otlp_endpoint)
    tracing = RequestTracing(endpoint, service.instance_id) if endpoint else None
    gateway = Gateway(
        settings=settings,
        router=Router(registry),
        pods=pods,
        sync=sync,
        stats=stats,
        metrics=RouterMetrics(service.registry),
        auth=Authenticator(settings.api_keys),
        limiter=RateLimiter(
            settings.redis_url,
            settings.rpm_limit,
            settings.tpm_limit,
            settings.limits_policy,
            service.registry,
        ),
        tracing=tracing,
    )
    # /v1/* also when the service app is served alone (__main__ puts the gateway ahead of it for speed)
    service.app.add_middleware(OpenAIRoutes, gateway=gateway)
    _add_health_route(service, pods)

    async def start(svc: Service) -> None:
        await sync.start(svc.bus)
        watch = await follow_pods(svc.bus, pods, svc.registry)
        await follow_adapters(svc.bus, pods, svc.instance_id)
        svc.spawn(watch.expire_forever(), "pod-leases")
        await svc.bus.subscribe(GPU_PLANS.pattern(), GpuPlan, gpu_plans.on_plan)
        svc.spawn(_publish_stats(svc, stats, sync, settings.stats_interval_s), "router-stats")

    async def stop(_svc: Service) -> None:
        await sync.drain()
        await gateway.stop()
        if tracing is not None:
            await asyncio.to_thread(tracing.shutdown)

    service.on_start(start)
    service.on_stop(stop)
    return RouterApp(service, gateway)


def _add_health_route(service: Service, pods: PodTable) -> None:
    """``/health`` as vLLM and the peer routers serve it, for load balancers: 200 while the router can route
    (a ready pod or a static endpoint), else 503. ``/healthz`` (alive) and ``/readyz`` (started) stay."""

    @service.app.get("/health", include_in_schema=False)
    async def health() -> JSONResponse:
        if pods.any_ready():
            return JSONResponse({"status": "ok"})
        return JSONResponse({"status": "no ready pod"}, status_code=503)


async def _publish_stats(
    service: Service, stats: StatsCollector, sync: RoutingSync, interval_s: float
) -> None:
    while True:
        await asyncio.sleep(interval_s)
        now = time.monotonic()
        sync.expire_replicas(now)
        sync.env.load.expire(now)
        for record in stats.snapshot():
            await service.bus.publish(ROUTER_STATS.format(model=record.model, router=record.router), record)


def _exit(message: str) -> None:
    print(f"brixmesh-router: {message}", file=sys.stderr)
    raise SystemExit(2)
