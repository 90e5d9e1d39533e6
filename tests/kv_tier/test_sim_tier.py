"""Simulated engines using the KV tier under vLLM's connector flag: engine B loads what engine A saved."""

from __future__ import annotations

import json

import httpx
import msgspec
import zmq

from tests.engine_sim.prom import metric_samples
from tests.engine_sim.sim_engine import BLOCK_SIZE, MODEL_NAME, sim_engine
from tests.kv_tier.tier_node import tier_node
from tests.waiting import eventually

PROMPT = list(range(100, 100 + 20 * BLOCK_SIZE + 5))
END_SEQ = (-1).to_bytes(8, "big", signed=True)


def tier_flag(address: str) -> list[str]:
    config = {
        "kv_connector": "BrixTierConnector", "kv_role": "kv_both",
        "kv_connector_extra_config": {
            "tier_nodes": [address], "load_timeout_ms": 2000, "lookup_timeout_ms": 500,
        },
    }  # fmt: skip
    return ["--kv-transfer-config", json.dumps(config), "--model-profile", "tiny-llama"]  # 16 KiB blocks


def tokens_by_source(client: httpx.Client, url: str) -> dict[str, float]:
    samples = metric_samples(client.get(f"{url}/metrics").text)["vllm:prompt_tokens_by_source_total"]
    return {labels.split('source="')[1].split('"')[0]: value for labels, value in samples}


def complete(client: httpx.Client, url: str) -> None:
    body = {"model": MODEL_NAME, "prompt": PROMPT, "max_tokens": 4, "temperature": 0}
    assert client.post(f"{url}/v1/completions", json=body).status_code == 200


def replayed_events(endpoint: str) -> list:
    context = zmq.Context()
    dealer = context.socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    dealer.setsockopt(zmq.RCVTIMEO, 5000)
    dealer.connect(endpoint)
    dealer.send_multipart([b"", (0).to_bytes(8, "big")])
    events = []
    while True:
        frames = dealer.recv_multipart()
        if frames[2] == END_SEQ:
            break
        events += msgspec.msgpack.decode(frames[3])[1]
    dealer.close()
    context.term()
    return events


async def test_engine_b_loads_engine_a_blocks_from_the_tier_and_announces_cpu_blocks() -> None:
    with tier_node() as (core, address), sim_engine(tier_flag(address), replicas=2) as sim:
        engine_a, engine_b = sim.urls
        with httpx.Client(timeout=10.0) as client:
            complete(client, engine_a)
            await eventually(lambda: len(core.store) >= 20, timeout_s=10.0)
            assert tokens_by_source(client, engine_a).get("external_kv_transfer", 0) == 0
            complete(client, engine_b)
            by_source = tokens_by_source(client, engine_b)
        # 20 full prompt blocks are in the tier; B computes only the rest of the prompt
        assert by_source["external_kv_transfer"] == 20 * BLOCK_SIZE
        assert by_source["local_compute"] == len(PROMPT) - 20 * BLOCK_SIZE
        assert core.store.counters.hits >= 20
        stored = [e for e in replayed_events(sim.kv_replay_endpoint) if e.get("type") == "BlockStored"]
        cpu = [e for e in stored if e.get("medium") == "CPU"]
        assert sum(len(e["block_hashes"]) for e in cpu) == 20
        assert cpu[0]["parent_block_hash"] is None and len(cpu[0]["token_ids"]) == 20 * BLOCK_SIZE


def test_tier_down_engines_compute_and_keep_serving() -> None:
    with tier_node() as (_core, address):
        pass  # the node is gone: its port refuses connections
    with sim_engine(tier_flag(address), replicas=1) as sim, httpx.Client(timeout=10.0) as client:
        for _ in range(2):
            complete(client, sim.base_url)
        by_source = tokens_by_source(client, sim.base_url)
        assert by_source.get("external_kv_transfer", 0) == 0
        assert by_source["local_compute"] + by_source.get("local_cache_hit", 0) == 2 * len(PROMPT)
