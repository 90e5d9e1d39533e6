"""The ``pd`` strategy's pair choice (pure): prefix affinity and load for prefill, load and KV usage for
decode, pairs within a role set, prefill pods in the plan best pair first."""

from __future__ import annotations

import random

from brixmesh.common.messages import PodMetrics
from brixmesh.router.routing import (
    Endpoint,
    RequestContext,
    Router,
    RoutingDecision,
    RoutingEnv,
    default_registry,
)
from brixmesh.router.routing.pd import PdPlan


def pod(name: str, role: str, role_set: str = "", kv_usage: float | None = None) -> Endpoint:
    endpoint = Endpoint(name=name, url=f"http://{name}", model="m", role=role, role_set=role_set)
    if kv_usage is not None:
        endpoint.metrics = PodMetrics(
            pod=name, model="m", deployment="d", ts=0.0, stale=False, kv_usage=kv_usage
        )
    return endpoint


def plan(decision: RoutingDecision) -> PdPlan:
    assert decision.pd is not None
    return decision.pd


def ctx(text: str = "a long shared system prompt " * 20) -> RequestContext:
    return RequestContext(request_id="r", api="completions", model="m", body={}, prompt_text=text)


async def test_decode_pods_rank_by_load_and_kv_usage_and_prefill_by_prefix_affinity() -> None:
    router = Router(default_registry(RoutingEnv(rng=random.Random(1))))
    strategy = router.registry.strategy("pd")
    pairing = strategy.pairing
    assert pairing is not None
    prefills = [pod("p-warm", "prefill"), pod("p-cold", "prefill")]
    decodes = [pod("d-full", "decode", kv_usage=0.9), pod("d-free", "decode", kv_usage=0.1)]
    pairing.prefilled(ctx(), prefills[0])  # the prompt's blocks live on p-warm

    decision = await router.route(ctx(), [*prefills, *decodes], strategy)

    assert [p.name for p in decision.ranked] == ["d-free", "d-full"]
    assert [p.name for p in plan(decision).prefills] == ["p-warm", "p-cold"]
    assert [d.name for d in plan(decision).pairs[0][1]] == ["d-free", "d-full"]


async def test_pairs_stay_within_a_role_set_and_pods_without_one_pair_with_any() -> None:
    router = Router(default_registry(RoutingEnv(rng=random.Random(1))))
    strategy = router.registry.strategy("pd")
    pods = [
        pod("p-a", "prefill", "a"),
        pod("p-b", "prefill", "b"),
        pod("p-pool", "prefill"),
        pod("d-a", "decode", "a", kv_usage=0.9),
        pod("d-pool", "decode"),
    ]
    decision = await router.route(ctx(), pods, strategy)
    partners = {prefill.name: [d.name for d in decodes] for prefill, decodes in plan(decision).pairs}
    assert partners == {"p-a": ["d-pool", "d-a"], "p-b": ["d-pool"], "p-pool": ["d-pool", "d-a"]}


async def test_without_prefill_pods_pd_routes_colocated() -> None:
    router = Router(default_registry(RoutingEnv(rng=random.Random(1))))
    for request in range(4):
        router.env.load.start("router-1", f"r{request}", "busy", 0.0)
    pods = [pod("busy", "both"), pod("idle", "both")]
    decision = await router.route(ctx(), pods, router.registry.strategy("pd"))
    assert decision.pd is not None and not decision.pd.pairs
    assert decision.ranked[0].name == "idle"


async def test_prefill_pods_share_the_load_the_router_tracks() -> None:
    router = Router(default_registry(RoutingEnv(rng=random.Random(1))))
    strategy = router.registry.strategy("pd")
    pods = [pod("p0", "prefill"), pod("p1", "prefill"), pod("d0", "decode")]
    router.env.load.start("router-1", "r0/prefill", "p0", 0.0)
    decision = await router.route(ctx("another prompt"), pods, strategy)
    assert [p.name for p in plan(decision).prefills] == ["p1", "p0"]
    router.env.load.finish("router-1", "r0/prefill")
    router.env.load.start("router-1", "r1/prefill", "p1", 0.0)
    decision = await router.route(ctx("another prompt"), pods, strategy)
    assert [p.name for p in plan(decision).prefills] == ["p0", "p1"]
