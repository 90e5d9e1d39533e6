"""Router-side KV pieces without processes: the kv-aware scorer in the routing pipeline, the admin API,
settings errors."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from brixmesh.common.messages import KvBlockStored, KvEventBatch
from brixmesh.common.settings import SettingsError, load_settings
from brixmesh.router.kv.admin import add_admin_routes
from brixmesh.router.kv.index import PrefixIndex
from brixmesh.router.kv.settings import KvSettings
from brixmesh.router.kv.tokenizer import LocalTokenizer, PromptTokenizer
from brixmesh.router.routing import Endpoint, RequestContext, Router, default_registry
from brixmesh.router.routing.scorers.kv_aware import KvAware
from tests.engine_sim.sim_engine import ASSETS

MODEL = "tiny-llama"
BLOCK = 4
PROMPT = "The quick brown fox jumps over the lazy dog, again and again, until the dog finally gets up."


def held_by(index: PrefixIndex, pod: str, tokens: list[int], blocks: int) -> None:
    hashes = list(range(hash(pod) & 0xFFFF, (hash(pod) & 0xFFFF) + blocks))
    index.apply(KvEventBatch(pod, MODEL, 0, 0.0, [KvBlockStored(hashes, None, tokens[: blocks * BLOCK], BLOCK)]))


def kv_router(index: PrefixIndex, speculative: bool = True) -> Router:
    """A router with ``kv-aware`` on ``index``, tokenizing completion prompts with the simulator's tokenizer."""
    registry = default_registry()
    registry.register_scorer("kv-aware", lambda env: KvAware(index, speculative=speculative))
    tokenizer = LocalTokenizer(ASSETS)

    async def tokenize(ctx: RequestContext) -> list[int] | None:
        return tokenizer.encode_prompt(ctx.prompt_text or "")

    registry.env.tokenizer = tokenize
    return Router(registry)


@pytest.fixture
def tokens() -> list[int]:
    return LocalTokenizer(ASSETS).encode_prompt(PROMPT).tolist()


async def test_kv_aware_picks_the_longest_prefix_and_speculates_on_routing(tokens: list[int]) -> None:
    index = PrefixIndex()
    held_by(index, "a", tokens, 2)
    held_by(index, "b", tokens, 5)
    router = kv_router(index)
    registry = router.registry
    pods = [Endpoint(name=name, url=f"http://{name}", model=MODEL, block_size=BLOCK) for name in ("a", "b", "c")]

    def request(rid: str, text: str) -> RequestContext:
        return RequestContext(request_id=rid, api="completions", model=MODEL, body={}, base_model=MODEL,
                              prompt_text=text)  # fmt: skip

    ctx = request("r1", PROMPT)
    decision = await router.route(ctx, pods, registry.strategy("kv-aware"))
    total = len(tokens) // BLOCK
    assert decision.ranked[0].name == "b"
    assert decision.scores == {"a": 2 / total, "b": 5 / total, "c": 0.0}

    other = "Completely unrelated words about storage arrays and their many disks that fail."
    ctx = request("r2", other)
    decision = await router.route(ctx, pods, registry.strategy("kv-aware"))
    router.routed(ctx, decision, pods[2])  # sent to c: c holds it speculatively right away
    again = await router.route(request("r3", other), pods, registry.strategy("kv-aware"))
    assert again.ranked[0].name == "c" and again.scores["c"] == 1.0


async def test_a_match_that_ends_where_others_ended_is_a_shared_prefix(tokens: list[int]) -> None:
    """Requests leaving a prefix held on a pod at the same block share it (a system prompt); a conversation's
    turns match further each time, so they never do; a prompt no pod holds any of is free to go anywhere."""
    index = PrefixIndex()
    held_by(index, "a", tokens, 5)
    router = kv_router(index)
    registry = router.registry
    pods = [Endpoint(name=name, url=f"http://{name}", model=MODEL, block_size=BLOCK) for name in ("a", "b")]
    strategy = registry.strategy("kv-aware:3,least-request:2")

    async def shared_only(rid: str, text: str, send_to: Endpoint | None = None) -> bool:
        ctx = RequestContext(request_id=rid, api="completions", model=MODEL, body={}, base_model=MODEL,
                             prompt_text=text)  # fmt: skip
        decision = await router.route(ctx, pods, strategy)
        router.routed(ctx, decision, send_to or decision.ranked[0])
        return ctx.matches_only_shared_prefix

    assert not await shared_only("q1", PROMPT + " Who wrote this sentence first?")  # a holds 5 blocks
    # a now holds q1's blocks too (speculatively), so q2 matches all of PROMPT's: the first to leave there
    assert not await shared_only("q2", PROMPT + " Which animal is the quick one here?")
    assert await shared_only("q3", PROMPT + " How many dogs are there in it?")
    talk = "Completely unrelated words about storage arrays and their many disks that fail."
    assert await shared_only("t1", talk, send_to=pods[1])
    talk += " Which disks fail most often, and why do they fail?"
    assert not await shared_only("t2", talk)
    talk += " And how would you replace them without losing any data?"
    assert not await shared_only("t3", talk)


async def test_a_shared_prefix_stays_on_the_pod_it_was_last_sent_to(tokens: list[int]) -> None:
    """Both pods hold the shared prefix: the tie goes to the pod that got it last, not to each in turn."""
    index = PrefixIndex()
    held_by(index, "a", tokens, 5)
    held_by(index, "b", tokens, 5)
    router = kv_router(index, speculative=False)
    pods = [Endpoint(name=name, url=f"http://{name}", model=MODEL, block_size=BLOCK) for name in ("a", "b")]
    strategy = router.registry.strategy("kv-aware:3,least-request:2")

    async def route(rid: str, send_to: str | None = None) -> str:
        ctx = RequestContext(request_id=rid, api="completions", model=MODEL, body={}, base_model=MODEL,
                             prompt_text=f"{PROMPT} Question {rid} about the fox?")  # fmt: skip
        decision = await router.route(ctx, pods, strategy)
        pod = next(pod for pod in pods if pod.name == (send_to or decision.ranked[0].name))
        router.routed(ctx, decision, pod)
        return decision.ranked[0].name

    await route("q1")  # the first to leave the prefix there: not known to be shared yet
    await route("q2", send_to="b")
    assert [await route(f"q{i}") for i in range(3, 9)] == ["b"] * 6
    await route("q9", send_to="a")  # moved (as a lead would move it): it stays there
    assert [await route(f"q{i}") for i in range(10, 16)] == ["a"] * 6


async def test_admin_lookup_and_errors(tokens: list[int]) -> None:
    index = PrefixIndex()
    held_by(index, "a", tokens, 3)
    app = FastAPI()
    add_admin_routes(app, index, PromptTokenizer({MODEL: ASSETS}, lambda model: None), lambda model: MODEL)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://admin") as client:
        found = (await client.post("/admin/kv/lookup", json={"model": MODEL, "prompt": PROMPT})).json()
        assert found["prompt_tokens"] == len(tokens)
        assert found["pods"] == [{"pod": "a", "blocks": 3, "tokens": 12, "block_size": BLOCK, "weighted": 3.0,
                                  "share": round(3 / (len(tokens) // BLOCK), 4)}]  # fmt: skip
        by_ids = (await client.post("/admin/kv/lookup", json={"model": MODEL, "prompt_token_ids": tokens})).json()
        assert by_ids["pods"] == found["pods"]
        bad = await client.post("/admin/kv/lookup", content=b"{")
        assert bad.status_code == 400 and bad.json()["error"]["type"] == "invalid_request_error"
        pods = (await client.get("/admin/kv/pods")).json()
        assert pods["pods"] == [{"pod": "a", "model": MODEL, "block_size": BLOCK, "blocks": 3}]
        one = (await client.get("/admin/kv/pods/a")).json()
        assert one["media"] == {"GPU": sorted(index.engine_hashes("a"))} and len(one["media"]["GPU"]) == 3
        missing = await client.get("/admin/kv/pods/nobody")
        assert missing.status_code == 404 and missing.json()["error"]["param"] == "pod"


def test_settings_name_a_bad_tokenizer_directory(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="BRIXMESH_KV_TOKENIZER_DIRS"):
        load_settings(KvSettings, tokenizer_dirs={MODEL: str(tmp_path)})
    assert load_settings(KvSettings, tokenizer_dirs={MODEL: str(ASSETS)}).tokenizer_dirs[MODEL] == ASSETS
