"""``cache_salt`` in the KV hash chain, as vLLM does it: an extra key of the request's first block only.

Against the engine simulator (whose hashing is vLLM's): a salted prompt's blocks reach the router's index
under the salted chain, so the router's request-side hashes for the same prompt and salt find every block,
while the unsalted prompt and other salts find none; a snapshot carries the salt to a new router."""

from __future__ import annotations

import httpx
import msgspec
import pytest

from brixmesh.common.messages import KvBlockStored, KvEventBatch
from brixmesh.common.servers import NatsServer
from brixmesh.kv_index.decode import decode_payload, first_block_salt
from brixmesh.router.kv.hashing import block_hashes
from brixmesh.router.kv.index import PrefixIndex
from brixmesh.router.kv.tokenizer import LocalTokenizer
from brixmesh.router.routing.prefix_index import prefix_hashes
from tests.engine_sim.sim_engine import ASSETS, BLOCK_SIZE, MODEL_NAME, SimEngine
from tests.kv.test_bridge import POD, bridge, endpoints, eventually, in_sync, kv_sim, pod_info, router_index

__all__ = ["endpoints"]  # the fixture, shared with test_bridge

PROMPT = " ".join(f"tenant{i} secret{i} record" for i in range(40))


@pytest.mark.parametrize(
    ("extra_keys", "lora", "salt"),
    [
        ([["s1"], None], None, "s1"),
        ([["lora-a", "s1"]], "lora-a", "s1"),
        ([["lora-a"]], "lora-a", None),
        ([None], None, None),
        (None, None, None),
        ([[]], None, None),
    ],
)
def test_first_block_salt_from_untagged_extra_keys(
    extra_keys: list | None, lora: str | None, salt: str | None
) -> None:
    assert first_block_salt(extra_keys, lora) == salt


def test_salt_is_read_only_from_a_request_first_block() -> None:
    def payload(parent: int | None) -> bytes:
        stored = {
            "type": "BlockStored",
            "block_hashes": [7],
            "parent_block_hash": parent,
            "token_ids": [1] * 4,
            "block_size": 4,
            "lora_id": None,
            "medium": "GPU",
            "lora_name": None,
            "extra_keys": [["s1"]],
        }
        return msgspec.msgpack.encode([1.0, [stored], 0])

    first = decode_payload(payload(None)).events[0]
    later = decode_payload(payload(3)).events[0]
    assert isinstance(first, KvBlockStored) and first.cache_salt == "s1"
    assert isinstance(later, KvBlockStored) and later.cache_salt is None


def test_salt_changes_every_block_and_nothing_without_it() -> None:
    tokens = list(range(64))
    plain = block_hashes(tokens, 16, "m")
    salted = block_hashes(tokens, 16, "m", cache_salt="s1")
    assert block_hashes(tokens, 16, "m", cache_salt=None) == plain
    assert not set(plain) & set(salted)
    assert not set(salted) & set(block_hashes(tokens, 16, "m", cache_salt="s2"))
    index = PrefixIndex()
    index.apply(
        KvEventBatch("p", "m", 0, 0.0, [KvBlockStored([1, 2, 3, 4], None, tokens, 16, cache_salt="s1")])
    )
    assert index.match(index.prompt_hashes(tokens, 16, "m", None, "s1"), 16)["p"].blocks == 4
    assert index.match(index.prompt_hashes(tokens, 16, "m", None), 16) == {}
    assert index.match(index.prompt_hashes(tokens, 16, "m", None, "s2"), 16) == {}


def test_approximate_prefix_hashes_are_salted_too() -> None:
    text = "x" * 64 * 3
    assert prefix_hashes(text, "m", cache_salt=None) == prefix_hashes(text, "m")
    assert not set(prefix_hashes(text, "m", cache_salt="s1")) & set(prefix_hashes(text, "m"))


async def _complete(engine: SimEngine, salt: str | None) -> None:
    body = {"model": MODEL_NAME, "prompt": PROMPT, "max_tokens": 2, **({"cache_salt": salt} if salt else {})}
    async with httpx.AsyncClient() as client:
        response = await client.post(f"{engine.base_url}/v1/completions", json=body)
    assert response.status_code == 200, response.text


def _held(index: PrefixIndex, salt: str | None) -> tuple[int, int]:
    """(blocks of PROMPT the pod holds under ``salt``, full blocks of PROMPT)."""
    tokens = LocalTokenizer(ASSETS).encode_prompt(PROMPT)
    hashes = index.prompt_hashes(tokens, BLOCK_SIZE, MODEL_NAME, None, salt)
    found = index.match(hashes, BLOCK_SIZE).get(POD)
    return (found.blocks if found else 0), len(hashes)


async def test_salted_prompts_match_only_their_salt_through_bridge_and_snapshot(
    fresh_nats_server: NatsServer, endpoints: tuple[str, str]
) -> None:
    events, replay = endpoints
    with kv_sim(events, replay) as engine:
        async with bridge(fresh_nats_server, snapshot_interval_s=0.5) as follower:
            async with router_index(fresh_nats_server) as router:
                await follower.follow(pod_info(engine.base_url, events, replay))
                await _complete(engine, "tenant-a")
                await eventually(lambda: _held(router.index, "tenant-a")[0] > 0)
                await eventually(in_sync(follower, router.index))
                held, full = _held(router.index, "tenant-a")
                assert held == full >= 2  # every engine block re-hashed to exactly the router's salted chain
                assert _held(router.index, None)[0] == 0
                assert _held(router.index, "tenant-b")[0] == 0
                await eventually(lambda: follower.stats.snapshots >= 1)

                await _complete(engine, None)  # the engine caches the unsalted prompt apart
                await eventually(lambda: _held(router.index, None)[0] == full)
                assert _held(router.index, "tenant-a")[0] == full
                # the second snapshot purges the salted prompt's batches: only snapshots carry its salt now
                await eventually(lambda: follower.stats.snapshots >= 2)
            async with router_index(fresh_nats_server) as late:
                await eventually(in_sync(follower, late.index))
                assert _held(late.index, "tenant-a") == (full, full) and _held(late.index, None) == (
                    full,
                    full,
                )
                assert _held(late.index, "tenant-b")[0] == 0
