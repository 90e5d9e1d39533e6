"""Pure routing logic: registry parsing, scorers, load guard, picker, in-flight expiry, prefix index."""

from __future__ import annotations

import random
import time

import pytest

from brixmesh.common.messages import PodMetrics
from brixmesh.router.routing import (
    Endpoint,
    NoEndpoint,
    RequestContext,
    Router,
    UnknownStrategy,
    Usage,
    default_registry,
)
from brixmesh.router.routing.load import LoadTracker
from brixmesh.router.routing.picker import LoadGuard
from brixmesh.router.routing.prefix_index import PrefixIndex, prefix_hashes
from brixmesh.router.routing.registry import RoutingEnv


def pods(*names: str, model: str = "m") -> list[Endpoint]:
    return [Endpoint(name=n, url=f"http://{n}", model=model) for n in names]


def ctx(text: str = "hello", **kw: object) -> RequestContext:
    return RequestContext(
        request_id=kw.pop("request_id", "r"), api="completions", model="m", body={}, prompt_text=text, **kw
    )  # type: ignore[arg-type]


def metrics(pod: str, **values: float) -> PodMetrics:
    return PodMetrics(pod=pod, model="m", deployment="d", ts=0.0, stale=False, **values)


def make_router(seed: int = 1) -> Router:
    return Router(default_registry(RoutingEnv(rng=random.Random(seed))))


def test_composition_parsing_and_errors() -> None:
    registry = default_registry()
    strategy = registry.strategy("prefix-cache:3, least-request:2,least-kv-cache:0")
    assert [(s.name, w) for s, w in strategy.parts] == [("prefix-cache", 3.0), ("least-request", 2.0)]
    assert strategy.has_affinity
    for bad in ("nope", "least-request:x", "least-request:-1", "random:0", ",", "random,"):
        with pytest.raises(UnknownStrategy):
            registry.strategy(bad)
    with pytest.raises(ValueError):
        registry.register_scorer("random", lambda env: registry.scorer("random"))


async def test_filters_drop_wrong_model_draining_unhealthy_and_prefill() -> None:
    router = make_router()
    a, b, c, d, e = pods("a", "b", "c", "d", "e")
    b.state = "draining"
    c.unhealthy_until = 1e18
    d.role = "prefill"
    e.model = "other"
    decision = await router.route(ctx(), [a, b, c, d, e], router.registry.strategy("random"))
    assert [p.name for p in decision.ranked] == ["a"]
    with pytest.raises(NoEndpoint):
        await router.route(ctx(), [b, c, d, e], router.registry.strategy("random"))


async def test_adapter_is_served_only_by_pods_that_have_it() -> None:
    router = make_router()
    a, b = pods("a", "b")
    b.adapters = frozenset({"lora"})
    request = RequestContext(request_id="r", api="chat", model="lora", body={}, messages=[])
    decision = await router.route(request, [a, b], router.registry.strategy("least-request"))
    assert [p.name for p in decision.ranked] == ["b"]


async def test_least_request_uses_shared_in_flight_counts() -> None:
    router = make_router()
    endpoints = pods("a", "b", "c")
    router.env.load.start("other-router", "x1", "a", 0.0)
    router.env.load.start("other-router", "x2", "b", 0.0)
    decision = await router.route(ctx(), endpoints, router.registry.strategy("least-request"))
    assert decision.ranked[0].name == "c"


async def test_random_tie_break_reaches_every_pod() -> None:
    router = make_router()
    endpoints = pods("a", "b", "c")
    seen = {
        (await router.route(ctx(), endpoints, router.registry.strategy("random"))).ranked[0].name
        for _ in range(60)
    }
    assert seen == {"a", "b", "c"}


async def test_round_robin_cycles() -> None:
    router = make_router()
    endpoints = pods("b", "a", "c")
    picks = [
        (await router.route(ctx(), endpoints, router.registry.strategy("round-robin"))).ranked[0].name
        for _ in range(6)
    ]
    assert picks == ["a", "b", "c", "a", "b", "c"]


async def test_least_kv_cache_least_latency_throughput_read_metrics() -> None:
    router = make_router()
    a, b = pods("a", "b")
    a.metrics = metrics("a", kv_usage=0.9, waiting=5, ttft_p50_s=0.2, itl_p50_s=0.02, prompt_tokens_per_s=900)
    b.metrics = metrics("b", kv_usage=0.1, waiting=0, ttft_p50_s=0.2, itl_p50_s=0.02, prompt_tokens_per_s=100)
    for name in ("least-kv-cache", "least-latency", "throughput"):
        decision = await router.route(ctx(), [a, b], router.registry.strategy(name))
        assert decision.ranked[0].name == "b", name
    b.metrics = PodMetrics(pod="b", model="m", deployment="d", ts=0, stale=True)
    assert router.registry.scorer("least-kv-cache").score(ctx(), [a, b]) == {"a": pytest.approx(0.1)}


async def test_prefix_cache_follows_routed_prefix_and_load_guard_overrides() -> None:
    router = make_router()
    endpoints = pods("a", "b", "c")
    strategy = router.registry.strategy("prefix-cache:3,least-request:2")
    shared = "system prompt " * 40
    first = ctx(shared + "question one")
    decision = await router.route(first, endpoints, strategy)
    target = decision.ranked[0]
    router.routed(first, decision, target)
    for i in range(3):
        follow = await router.route(ctx(shared + f"question {i}"), endpoints, strategy)
        assert follow.ranked[0] is target
    for i in range(10):  # the affinity target is now far busier than the others
        router.env.load.start("r", f"busy{i}", target.name, 0.0)
    guarded = await router.route(ctx(shared + "question 9"), endpoints, strategy)
    assert guarded.ranked[0] is not target


async def test_shared_prefix_affinity_yields_to_pods_sent_fewer_requests_lately() -> None:
    """Every pod idle: in-flight counts tie; only recent counts keep a shared prefix from taking all. (The
    ``kv-aware`` scorer tells which requests match only a shared prefix; here the test says so.)"""
    router = make_router()
    endpoints = pods("a", "b")
    strategy = router.registry.strategy("prefix-cache:3,least-request:2")
    shared = "system prompt " * 40
    first = ctx(shared + "question one")
    decision = await router.route(first, endpoints, strategy)
    target, other = decision.ranked
    router.routed(first, decision, target)
    load, now = router.env.load, time.monotonic()

    def served(pod: Endpoint, count: int) -> None:
        for i in range(count):
            load.start("r", f"{pod.name}{i}", pod.name, now)
            load.finish("r", f"{pod.name}{i}")

    served(target, 12)
    served(other, 10)  # a lead within the tolerance keeps the cache's pull
    def shared_only(text: str) -> RequestContext:
        return ctx(text, matches_only_shared_prefix=True)

    follow = await router.route(shared_only(shared + "question two"), endpoints, strategy, now=now)
    assert follow.ranked[0] is target
    served(target, 20)
    moved = await router.route(shared_only(shared + "question three"), endpoints, strategy, now=now)
    assert moved.ranked[0] is other
    own = await router.route(ctx(shared + "question three"), endpoints, strategy, now=now)
    assert own.ranked[0] is target  # a request continuing its own history stays
    later = now + 20 * load.recent_half_life_s  # the lead decays: affinity decides again
    back = await router.route(shared_only(shared + "question four"), endpoints, strategy, now=later)
    assert back.ranked[0] is target


def test_lead_penalty_grows_with_the_lead_up_to_the_affinity_weight() -> None:
    guard = LoadGuard(lead_tolerance=0.05, lead_slack=4.0, lead_gain=7.0)
    a, b = pods("a", "b")
    cases = [(10, 10, {}), (17.5, 12.5, {}), (24, 12, {"a": 1.0087}), (40, 0, {"a": 3.0})]
    for recent_a, recent_b, expected in cases:
        a.recent, b.recent = recent_a, recent_b
        penalties = guard.lead_penalties([a, b], affinity_weight=3.0)
        assert penalties == pytest.approx(expected, rel=0.02)
    assert guard.lead_penalties([a], affinity_weight=3.0) == {}


async def test_session_affinity_is_stable_and_falls_back() -> None:
    router = make_router()
    endpoints = pods("a", "b", "c", "d")
    strategy = router.registry.strategy("session")
    picks = {
        (await router.route(ctx(session_id="s-1"), endpoints, strategy)).ranked[0].name for _ in range(10)
    }
    assert len(picks) == 1
    gone = picks.pop()
    rest = [p for p in endpoints if p.name != gone]
    again = {(await router.route(ctx(session_id="s-1"), rest, strategy)).ranked[0].name for _ in range(10)}
    assert len(again) == 1 and gone not in again


async def test_vtc_sends_light_users_to_the_idle_pod() -> None:
    router = make_router()
    idle, busy = pods("idle", "busy")
    router.env.load.start("r", "x", "busy", 0.0)
    strategy = router.registry.strategy("vtc")
    heavy = ctx(user="heavy")
    decision = await router.route(heavy, [idle, busy], strategy)
    router.completed(heavy, decision, busy, Usage(prompt_tokens=1000, completion_tokens=1000))
    router.completed(ctx(user="light"), decision, idle, Usage(prompt_tokens=1, completion_tokens=1))
    light = await router.route(ctx(user="light"), [idle, busy], strategy)
    assert light.ranked[0].name == "idle"
    heavy_scores = router.registry.scorer("vtc").score(ctx(user="heavy"), [idle, busy])
    light_scores = router.registry.scorer("vtc").score(ctx(user="light"), [idle, busy])
    assert heavy_scores["busy"] >= heavy_scores["idle"] and light_scores["idle"] > light_scores["busy"]


def test_vtc_remembers_a_bounded_number_of_users() -> None:
    vtc = default_registry().scorer("vtc")
    pod = pods("p")[0]
    for i in range(10_000):
        vtc.on_completed(ctx(user=f"u{i}"), pod, Usage(prompt_tokens=1, completion_tokens=1))
    vtc.on_completed(ctx(user="u5000"), pod, Usage(prompt_tokens=1, completion_tokens=1))
    assert len(vtc.served) == 4096 and vtc.served["u5000"] == 3  # forgotten, so counted afresh
    assert "u9999" in vtc.served and "u0" not in vtc.served


def test_strategy_cache_is_bounded_and_keeps_recent_specs() -> None:
    registry = default_registry()
    configured = registry.strategy("least-request")
    for i in range(1, 1_000):
        registry.strategy(f"least-request:{i}")
        assert registry.strategy("least-request") is configured  # in use, so never the one evicted
    assert len(registry._parsed) == 256


def test_load_tracker_expires_lost_completions() -> None:
    tracker = LoadTracker(ttl_s=10)
    tracker.start("r1", "a", "pod", now=0)
    tracker.start("r1", "b", "pod", now=5)
    tracker.finish("r1", "b")
    tracker.finish("r1", "b")
    assert tracker.count("pod") == 1
    assert tracker.expire(now=11) == 1 and tracker.count("pod") == 0


def test_recent_counts_halve_per_half_life_and_are_forgotten() -> None:
    tracker = LoadTracker(ttl_s=1000, recent_half_life_s=30)
    tracker.start("r1", "a", "pod", now=0)
    tracker.start("r1", "b", "pod", now=0)
    tracker.finish("r1", "a")
    assert tracker.recent("pod", now=0) == 2 and tracker.recent("pod", now=30) == pytest.approx(1)
    tracker.start("r1", "c", "pod", now=30)
    assert tracker.recent("pod", now=60) == pytest.approx(1)
    assert tracker.recent("other", now=60) == 0
    tracker.expire(now=60 + 30 * 10)
    assert "pod" not in tracker._recent


def test_prefix_index_match_ttl_and_capacity() -> None:
    hashes = prefix_hashes("x" * 64 * 3 + "tail", "m")
    assert len(hashes) == 3 and prefix_hashes("x" * 64 * 3, "other") != hashes
    index = PrefixIndex(capacity_blocks=4, ttl_s=100)
    index.insert(hashes[:2], "a", now=0)
    index.insert(hashes, "b", now=50)
    assert index.match(hashes, ["a", "b", "c"], now=60) == {"a": 2, "b": 3, "c": 0}
    assert index.match(hashes, ["a", "b"], now=120) == {"a": 0, "b": 3}
    index.insert(prefix_hashes("y" * 64 * 3, "m"), "c", now=60)
    assert len(index) == 4
