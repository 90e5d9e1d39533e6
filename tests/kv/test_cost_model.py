"""The ``cost-model`` scorer: its pure pieces (speed fit, penalty, queues) and one routing behaviour."""

from __future__ import annotations

import pytest

from brixmesh.common.messages import PodMetrics
from brixmesh.router.kv.index import PrefixIndex
from brixmesh.router.kv.tokenizer import LocalTokenizer
from brixmesh.router.routing import Endpoint, RequestContext, Router, default_registry
from brixmesh.router.routing.scorers.cost_model import (
    FACTOR_HALF_LIFE_S,
    FACTOR_LIMIT,
    PENALTY_CAP_S,
    CostModel,
    Slowness,
    SpeedModel,
    full_cache_penalty,
)
from brixmesh.router.routing.scorers.kv_aware import KvAware
from tests.engine_sim.sim_engine import ASSETS
from tests.kv.test_router_kv import BLOCK, MODEL, PROMPT, held_by


def test_speed_model_learns_a_pods_costs_from_first_byte_times() -> None:
    model = SpeedModel()
    truth = (0.05, 0.4, 0.01)  # 50 ms base, 0.4 s per 1000 prefill tokens, 10 ms per running decode
    for i in range(60):
        tokens, running = (i * 37) % 2000, (i * 5) % 9
        model.observe(tokens, running, truth[0] + truth[1] * tokens / 1000 + truth[2] * running)
    assert model.weights == pytest.approx(truth, rel=0.05)
    assert model.predict(1000, 4) == pytest.approx(0.05 + 0.4 + 0.04, rel=0.05)


def test_speed_model_never_predicts_free_prefill() -> None:
    model = SpeedModel(weights=[0.01, -3.0, 0.0])
    assert model.predict(2000, 0) > model.predict(0, 0)


def test_a_slow_pod_is_found_out_bounded_and_forgiven_while_unobserved() -> None:
    slow = Slowness()
    for _ in range(20):
        slow.observe(1.8, at=0.0)
    assert slow.now(0.0) == pytest.approx(1.8, rel=0.02)
    slow.observe(50.0, at=0.0)  # one pathological answer moves it only up to the limit
    assert slow.now(0.0) <= FACTOR_LIMIT
    before = slow.now(0.0)
    assert slow.now(FACTOR_HALF_LIFE_S) - 1 == pytest.approx((before - 1) / 2)
    assert slow.now(10 * FACTOR_HALF_LIFE_S) == pytest.approx(1.0, abs=0.01)


def test_full_cache_penalty_starts_near_full_and_is_bounded() -> None:
    assert full_cache_penalty(0.001, 500, 0.5) == 0.0
    assert full_cache_penalty(0.001, 500, 1.0) == pytest.approx(0.25)
    assert 0 < full_cache_penalty(0.001, 500, 0.9) < full_cache_penalty(0.001, 500, 1.0)
    assert full_cache_penalty(1.0, 10**6, 1.0) == PENALTY_CAP_S


def request(rid: str, text: str) -> RequestContext:
    return RequestContext(request_id=rid, api="completions", model=MODEL, body={}, base_model=MODEL,
                          prompt_text=text, stream=True)  # fmt: skip


@pytest.fixture
def setup() -> tuple[Router, CostModel, list[Endpoint], list[int]]:
    tokenizer = LocalTokenizer(ASSETS)
    tokens = tokenizer.encode_prompt(PROMPT)
    index = PrefixIndex()
    held_by(index, "a", tokens, 5)
    cost = CostModel(KvAware(index, speculative=False), clock=lambda: 0.0)
    registry = default_registry()
    registry.register_scorer("cost-model", lambda env: cost)

    async def tokenize(ctx: RequestContext) -> list[int] | None:
        return tokenizer.encode_prompt(ctx.prompt_text or "")

    registry.env.tokenizer = tokenize
    pods = [Endpoint(name=name, url=f"http://{name}", model=MODEL, block_size=BLOCK) for name in ("a", "b")]
    return Router(registry), cost, pods, tokens


async def test_cached_pod_wins_until_its_queue_costs_more_than_the_prefill(setup) -> None:
    router, cost, pods, tokens = setup
    strategy = router.registry.strategy("cost-model")
    first = await router.route(request("r1", PROMPT), pods, strategy)
    assert first.ranked[0].name == "a"
    assert first.scores["a"] == 1.0 > first.scores["b"]
    # a's prefill queue grows with requests it has not begun to answer; b (cold) is then cheaper
    for i in range(30):
        ctx = request(f"q{i}", f"unrelated prompt number {i} " * 20)
        await router.route(ctx, pods, strategy)
        router.routed(ctx, first, pods[0])
    assert cost.queues.queued_requests["a"] == 30
    again = await router.route(request("r2", PROMPT), pods, strategy)
    assert again.ranked[0].name == "b"
    # first bytes drain the queue: a wins again
    for i in range(30):
        router.first_byte(request(f"q{i}", ""), first, pods[0])
    assert cost.queues.queued_tokens["a"] == 0.0
    assert cost.speeds[MODEL].observations == 30
    last = await router.route(request("r3", PROMPT), pods, strategy)
    assert last.ranked[0].name == "a"


async def test_a_full_cache_is_penalised_only_when_it_would_store_new_blocks(setup) -> None:
    router, cost, pods, tokens = setup
    strategy = router.registry.strategy("cost-model")
    full = PodMetrics(pod="a", model=MODEL, deployment="d", ts=0.0, stale=False, kv_usage=1.0)
    pods[0].metrics = full
    pods[1].metrics = PodMetrics(pod="b", model=MODEL, deployment="d", ts=0.0, stale=False, kv_usage=0.1)
    fresh_text = "storage arrays and disks " * 40
    plain = cost.predictions(request("x", fresh_text), pods)  # not prepared: length estimated, none cached
    assert plain["a"] > plain["b"]
    assert plain["a"] - plain["b"] <= PENALTY_CAP_S
    cached = await router.route(request("r1", PROMPT), pods, strategy)
    assert cached.ranked[0].name == "a"  # (nearly) all cached on a: little to store, little penalty


def test_speed_model_stays_finite_when_a_feature_never_varies() -> None:
    model = SpeedModel()
    for _ in range(5000):
        model.observe(100, 0, 0.03)
    assert model.predict(100, 0) == pytest.approx(0.03, rel=0.01)


async def test_close_predictions_stay_with_the_pod_holding_the_prefix(setup) -> None:
    router, cost, pods, tokens = setup
    strategy = router.registry.strategy("cost-model")
    model = cost.speed(MODEL)
    model.mean_square_error = 0.05**2  # the fit is typically 50 ms off
    for i in range(2):  # a holds the prefix but runs two more decodes: 2 x 2 ms by the prior
        router.registry.env.load.start("other-router", f"running-{i}", "a", 0.0)
    decision = await router.route(request("r1", PROMPT), pods, strategy)
    assert decision.ranked[0].name == "a"
    model.mean_square_error = 0.0001**2  # a precise fit: the load difference decides
    decision = await router.route(request("r2", PROMPT), pods, strategy)
    assert decision.ranked[0].name == "b"
