"""Strategy ``pd`` end to end: one real router process in front of simulated prefill and decode engines, one
model name per case (the engines answer to all of theirs).

vLLM NIXL two-phase (streamed and not), shared storage, SGLang bootstrap; a dead prefill pod is replaced by
another, all prefill pods dead means a counted colocated fallback, a dead decode pod by another one. Each case
checks from the decode engine's own counters that it took the prompt's KV from the prefill engine."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest

from brixmesh.common.ports import free_port
from brixmesh.common.servers import NatsServer
from tests.engine_sim.sim_engine import sim_engine
from tests.router.harness import metric_value, router_process

PROMPT = "one two three four five six seven eight nine ten " * 12
NIXL_MODELS = ["pd-nixl", "pd-failover", "pd-fallback", "pd-decode-failover", "pd-role-sets"]


def _pd_config(connector: str, **extra: object) -> list[str]:
    config = {"kv_connector": connector, "kv_role": "kv_both", "kv_connector_extra_config": extra}
    return ["--kv-transfer-config", json.dumps(config)]


def _body(model: str, **extra: object) -> dict[str, object]:
    return {"model": model, "prompt": PROMPT, "max_tokens": 5, "ignore_eos": True, **extra}


@dataclass(frozen=True)
class PdFleet:
    router: str
    prefill: str
    decode: str
    storage: tuple[str, str]
    sglang: tuple[str, str]


def _pod(name: str, url: str, model: str, role: str, transfer: str, **extra: object) -> dict[str, object]:
    return {"name": name, "url": url, "model": model, "role": role, "kv_transfer": transfer, **extra}


@pytest.fixture(scope="module")
def fleet(nats_server: NatsServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PdFleet]:
    """NIXL: two engines of one process (prefill pod, decode pod); shared storage: the same; SGLang: a prefill
    and a decode process."""
    tmp = tmp_path_factory.mktemp("pd")
    bootstrap = free_port()
    dead = f"http://127.0.0.1:{free_port()}"
    with (
        sim_engine(
            [*_pd_config("NixlConnector", sim_transfer="tcp"), "--served-model-name", *NIXL_MODELS],
            replicas=2,
            kv_events=False,
        ) as nixl,
        sim_engine(
            [*_pd_config("ExampleConnector", shared_storage_path=str(tmp / "kv")), "--served-model-name",
             "pd-storage"],
            replicas=2,
            kv_events=False,
        ) as storage,
        sim_engine(
            ["--disaggregation-mode", "prefill", "--disaggregation-bootstrap-port", str(bootstrap),
             "--served-model-name", "pd-sglang"],
            kv_events=False,
        ) as sglang_prefill,
        sim_engine(
            ["--disaggregation-mode", "decode", "--served-model-name", "pd-sglang"], kv_events=False
        ) as sglang_decode,
    ):  # fmt: skip
        prefill, decode = nixl.urls
        pods = [
            _pod("p", prefill, "pd-nixl", "prefill", "nixl"),
            _pod("d", decode, "pd-nixl", "decode", "nixl"),
            _pod("f-dead", dead, "pd-failover", "prefill", "nixl"),
            _pod("f-p", prefill, "pd-failover", "prefill", "nixl"),
            _pod("f-d", decode, "pd-failover", "decode", "nixl"),
            _pod("c-dead", dead, "pd-fallback", "prefill", "nixl"),
            _pod("c-d", decode, "pd-fallback", "decode", "nixl"),
            _pod("x-p", prefill, "pd-decode-failover", "prefill", "nixl"),
            _pod("x-dead", dead, "pd-decode-failover", "decode", "nixl"),
            _pod("x-d", decode, "pd-decode-failover", "decode", "nixl"),
            _pod("r-p-a", prefill, "pd-role-sets", "prefill", "nixl", role_set="a"),
            _pod("r-d-b", decode, "pd-role-sets", "decode", "nixl", role_set="b"),
            _pod("r-d-a", decode, "pd-role-sets", "decode", "nixl", role_set="a"),
            _pod("s-p", storage.urls[0], "pd-storage", "prefill", "shared-storage"),
            _pod("s-d", storage.urls[1], "pd-storage", "decode", "shared-storage"),
            _pod("g-p", sglang_prefill.base_url, "pd-sglang", "prefill", "sglang", bootstrap_port=bootstrap),
            _pod("g-d", sglang_decode.base_url, "pd-sglang", "decode", "sglang"),
        ]
        path = tmp / "endpoints.json"
        path.write_text(json.dumps({"endpoints": pods}))
        with router_process(nats_server.url, endpoints=path, default_strategy="pd") as router:
            yield PdFleet(
                router.url,
                prefill,
                decode,
                tuple(storage.urls),
                (sglang_prefill.base_url, sglang_decode.base_url),
            )


def _external(url: str) -> float:
    text = httpx.get(f"{url}/metrics").text
    return metric_value(text, "vllm:prompt_tokens_by_source_total", source="external_kv_transfer")


def _fallbacks(fleet: PdFleet, model: str) -> float:
    text = httpx.get(f"{fleet.router}/metrics").text
    return metric_value(text, "brixmesh_router_pd_fallbacks_total", model=model)


def test_nixl_two_phase_streamed_and_not(fleet: PdFleet) -> None:
    before = _external(fleet.decode)
    answer = httpx.post(f"{fleet.router}/v1/completions", json=_body("pd-nixl"), timeout=30)
    assert answer.status_code == 200, answer.text
    assert answer.headers["x-brixmesh-pod"] == "d"
    assert answer.json()["usage"]["completion_tokens"] == 5  # the decode's usage, not the prefill's 1
    assert answer.json().get("kv_transfer_params") is None
    transferred = _external(fleet.decode) - before
    assert transferred > 0

    client = openai.OpenAI(base_url=f"{fleet.router}/v1", api_key="none")
    stream = client.chat.completions.create(
        model="pd-nixl",
        messages=[{"role": "user", "content": PROMPT}],
        max_tokens=4,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"ignore_eos": True},
    )
    chunks = list(stream)
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 4
    assert _external(fleet.decode) - before > transferred
    assert _fallbacks(fleet, "pd-nixl") == 0


def test_dead_prefill_pod_is_replaced_by_another(fleet: PdFleet) -> None:
    for _ in range(3):  # whichever prefill pod ranks first, every request gets its KV from the live one
        before = _external(fleet.decode)
        answer = httpx.post(f"{fleet.router}/v1/completions", json=_body("pd-failover"), timeout=30)
        assert answer.status_code == 200, answer.text
        assert _external(fleet.decode) > before
    assert _fallbacks(fleet, "pd-failover") == 0


def test_no_live_prefill_pod_means_a_counted_colocated_fallback(fleet: PdFleet) -> None:
    before = _external(fleet.decode)
    answer = httpx.post(f"{fleet.router}/v1/completions", json=_body("pd-fallback"), timeout=30)
    assert answer.status_code == 200 and answer.json()["usage"]["completion_tokens"] == 5
    assert _external(fleet.decode) == before  # computed on the decode pod
    assert _fallbacks(fleet, "pd-fallback") == 1


def test_decode_pod_failing_before_first_byte_is_replaced(fleet: PdFleet) -> None:
    for _ in range(3):
        before = _external(fleet.decode)
        answer = httpx.post(
            f"{fleet.router}/v1/completions", json=_body("pd-decode-failover", stream=True), timeout=30
        )
        assert answer.status_code == 200 and answer.headers["x-brixmesh-pod"] == "x-d"
        assert answer.text.rstrip().endswith("data: [DONE]")
        assert _external(fleet.decode) > before


def test_role_sets_pair_prefill_and_decode_of_the_same_set(fleet: PdFleet) -> None:
    pods = {
        httpx.post(f"{fleet.router}/v1/completions", json=_body("pd-role-sets"), timeout=30).headers[
            "x-brixmesh-pod"
        ]
        for _ in range(4)
    }
    assert pods == {"r-d-a"}


def test_shared_storage_two_phase(fleet: PdFleet) -> None:
    prefill, decode = fleet.storage
    answer = httpx.post(f"{fleet.router}/v1/completions", json=_body("pd-storage"), timeout=30)
    assert answer.status_code == 200 and answer.json()["usage"]["completion_tokens"] == 5
    assert _external(decode) > 0 and _external(prefill) == 0


def test_sglang_bootstrap_both_at_once(fleet: PdFleet) -> None:
    prefill, decode = fleet.sglang
    answer = httpx.post(f"{fleet.router}/v1/completions", json=_body("pd-sglang", stream=True), timeout=30)
    assert answer.status_code == 200 and answer.text.rstrip().endswith("data: [DONE]")
    assert _fallbacks(fleet, "pd-sglang") == 0
    assert _external(decode) > 0
    assert metric_value(httpx.get(f"{prefill}/metrics").text, "vllm:kv_cache_usage_perc") == 0
