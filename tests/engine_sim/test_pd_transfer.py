"""P/D KV transfer between two simulated engines (``--kv-transfer-config`` NixlConnector, ``kv_both``): the
prefill answers vLLM 0.32's pull parameters, the decode pulls the blocks over TCP and skips their prefill;
pulled, unknown or expired parameters mean recompute, counted; unpulled blocks are freed when the lease
ends."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
from brixmesh.engine_sim.kv_transfer import KvTransfer, parse_kv_transfer_config

from tests.engine_sim.prom import metric_value
from tests.engine_sim.sim_engine import MODEL_NAME, SimEngine, sim_engine
from tests.waiting import eventually

LEASE_S = 2
PROMPT = list(range(100, 170))  # 70 tokens: 2 full blocks of 32 and a partial one
CAPTURE = Path(__file__).resolve().parents[1] / "fixtures/vllm-0.32-cpu/pd_nixl_exchange.json"


@pytest.fixture(scope="module")
def pair() -> Iterator[SimEngine]:
    config = {
        "kv_connector": "NixlConnector",
        "kv_role": "kv_both",
        "kv_connector_extra_config": {"sim_transfer": "tcp", "kv_lease_duration": LEASE_S},
    }
    with sim_engine(["--kv-transfer-config", json.dumps(config)], replicas=2, kv_events=False) as sim:
        yield sim


def _body(**extra: object) -> dict[str, object]:
    return {"model": MODEL_NAME, "prompt": PROMPT, "max_tokens": 6, "ignore_eos": True, **extra}


async def _metric(client: httpx.AsyncClient, url: str, name: str) -> float:
    return metric_value((await client.get(f"{url}/metrics")).text, name)


async def _external(client: httpx.AsyncClient, url: str) -> float:
    text = (await client.get(f"{url}/metrics")).text
    return sum(
        value
        for line in text.splitlines()
        if line.startswith("vllm:prompt_tokens_by_source_total") and "external_kv_transfer" in line
        for value in [float(line.rpartition(" ")[2])]
    )


async def _prefill(client: httpx.AsyncClient, url: str) -> dict[str, object]:
    body = _body(kv_transfer_params={"do_remote_decode": True})
    response = await client.post(f"{url}/v1/completions", json=body)
    assert response.status_code == 200, response.text
    assert response.json()["usage"]["completion_tokens"] == 1
    return response.json()["kv_transfer_params"]


async def test_prefill_answers_vllm_pull_parameters_and_decode_pulls_the_blocks(pair: SimEngine) -> None:
    prefill, decode = pair.urls
    async with httpx.AsyncClient(timeout=30) as client:
        params = await _prefill(client, prefill)
        real = json.loads(CAPTURE.read_text())["prefill_response"]["kv_transfer_params"]
        assert {k: type(v) for k, v in params.items()} == {k: type(v) for k, v in real.items()}
        assert [type(block) for block in params["remote_block_ids"][0]] == [int] * 3
        assert params["do_remote_prefill"] is True and params["transfer_mode"] == "pull"
        assert params["remote_num_tokens"] == len(PROMPT) and len(params["remote_block_ids"][0]) == 3
        assert await _metric(client, prefill, "vllm:kv_cache_usage_perc") > 0  # held for the decode
        before = await _external(client, decode)
        answer = await client.post(f"{decode}/v1/completions", json=_body(kv_transfer_params=params))
        assert answer.status_code == 200 and answer.json()["usage"]["completion_tokens"] == 6
        assert answer.json()["usage"]["prompt_tokens"] == len(PROMPT)
        assert await _external(client, decode) - before == len(PROMPT) - 1
        # pulled: the prefill engine's blocks are free again
        assert await _metric(client, prefill, "vllm:kv_cache_usage_perc") == 0

        failed = await _metric(client, decode, "vllm:nixl_num_failed_transfers_total")
        again = await client.post(f"{decode}/v1/completions", json=_body(kv_transfer_params=params))
        assert again.status_code == 200 and again.json()["usage"]["completion_tokens"] == 6
        assert await _metric(client, decode, "vllm:nixl_num_failed_transfers_total") == failed + 1
        assert await _external(client, decode) - before == len(PROMPT) - 1  # recomputed, not transferred


async def test_blocks_never_pulled_are_freed_when_the_lease_ends(pair: SimEngine) -> None:
    prefill, decode = pair.urls
    async with httpx.AsyncClient(timeout=30) as client:
        expired = await _metric(client, prefill, "vllm:nixl_num_kv_expired_reqs_total")
        params = await _prefill(client, prefill)

        async def lease_ended() -> bool:
            return await _metric(client, prefill, "vllm:nixl_num_kv_expired_reqs_total") == expired + 1

        await eventually(lease_ended, timeout_s=LEASE_S + 10)
        assert await _metric(client, prefill, "vllm:kv_cache_usage_perc") == 0
        before = await _external(client, decode)
        answer = await client.post(f"{decode}/v1/completions", json=_body(kv_transfer_params=params))
        assert answer.status_code == 200 and answer.json()["usage"]["completion_tokens"] == 6
        assert await _external(client, decode) == before


def test_unknown_connector_is_a_one_line_startup_error() -> None:
    config = json.dumps({"kv_connector": "MooncakeConnector", "kv_role": "kv_both"})
    with pytest.raises(RuntimeError, match="MooncakeConnector.*is not simulated"):
        with sim_engine(["--kv-transfer-config", config], kv_events=False):
            pass


@pytest.mark.parametrize(("prompt_len", "found"), [(70, 64), (65, 0), (31, 0)])
def test_shared_storage_finds_full_blocks_as_vllm_example_connector(
    tmp_path: Path, prompt_len: int, found: int
) -> None:
    """Stored: (n-1)//32 blocks; looked up: (n-2)//32 blocks; k blocks + 1 token never match (real vLLM)."""
    config = parse_kv_transfer_config(
        json.dumps(
            {
                "kv_connector": "ExampleConnector",
                "kv_role": "kv_both",
                "kv_connector_extra_config": {"shared_storage_path": str(tmp_path)},
            }
        )
    )
    transfer = KvTransfer(
        config, host="127.0.0.1", block_size=32, kv_bytes_per_token=512, link_bytes_per_s=1e9,
        overhead_s=0.0, time_scale=1.0, release=lambda _: None, on_failed=lambda: None,
        on_expired=lambda: None,
    )  # fmt: skip
    prompt = list(range(100, 100 + prompt_len))
    transfer.record_stored_prompt(SimpleNamespace(prompt_token_ids=prompt, num_prompt_tokens=prompt_len,
                                                  cache_salt=None))  # type: ignore[arg-type]  # fmt: skip
    assert transfer.stored_tokens(prompt, None) == found
    assert transfer.stored_tokens(prompt, "other-salt") == 0
