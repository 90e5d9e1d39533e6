"""What a client sends cannot grow the router's state or hold it forever, against a real router process:
metric labels of client-chosen strategies, clients reusing one request id, the number of requests held for
scale from zero, and the overall deadline of a request (non-streamed and streamed)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from brixmesh.common.servers import NatsServer
from tests.engine_sim.sim_engine import SimEngine, sim_engine
from tests.router.fake_engine import fake_engine
from tests.router.harness import MODEL, endpoints_file, metric_value, router_process
from tests.service_proc import ServiceProcess
from tests.waiting import eventually

CONFIGURED = "least-request"
BODY = {"model": MODEL, "prompt": "hello there", "max_tokens": 2, "ignore_eos": True}


@pytest.fixture(scope="module")
def router(
    nats_server: NatsServer, sims: SimEngine, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServiceProcess]:
    path = endpoints_file(tmp_path_factory.mktemp("bounds"), sims.urls)
    with router_process(
        nats_server.url,
        endpoints=path,
        default_strategy=CONFIGURED,
        model_strategies={"lora-a": "round-robin"},
    ) as process:
        yield process


def _strategy_labels(metrics: str) -> set[str]:
    return {
        line.split('strategy="')[1].split('"')[0]
        for line in metrics.splitlines()
        if line.startswith("brixmesh_router_requests_total{")
    }


def test_client_chosen_strategies_are_served_but_labelled_other(router: ServiceProcess) -> None:
    for weight in range(1, 6):
        spec = f"round-robin:{weight}"
        response = httpx.post(f"{router.url}/v1/completions", json=BODY, headers={"routing-strategy": spec})
        assert response.status_code == 200 and response.headers["x-brixmesh-strategy"] == spec
    configured = httpx.post(
        f"{router.url}/v1/completions", json=BODY, headers={"routing-strategy": "round-robin"}
    )
    assert configured.status_code == 200
    metrics = httpx.get(f"{router.url}/metrics").text
    assert _strategy_labels(metrics) <= {CONFIGURED, "round-robin", "other"}
    assert metric_value(metrics, "brixmesh_router_requests_total", strategy="other") == 5
    assert metric_value(metrics, "brixmesh_router_requests_total", strategy="round-robin") >= 1


async def test_requests_sharing_a_client_request_id_are_counted_apart(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    """Four streams in flight under one client id: each counts in the pods' load; each answer echoes it."""
    body = {**BODY, "max_tokens": 100, "stream": True}
    headers = {"x-request-id": "same-id"}
    # streams stall after their first token for longer than the test runs: all four stay in flight until the
    # test closes them, however slow the machine
    stall = ["--fault-stall-after-tokens", "1", "--fault-stall-seconds", "600"]
    with (
        sim_engine(stall, replicas=2, kv_events=False) as engines,
        router_process(
            nats_server.url, endpoints=endpoints_file(tmp_path, engines.urls), default_strategy=CONFIGURED
        ) as router,
    ):
        async with httpx.AsyncClient(timeout=30) as client:

            async def in_flight() -> float:
                return metric_value((await client.get(f"{router.url}/metrics")).text, "brixmesh_router_in_flight")

            requests = [
                client.build_request("POST", f"{router.url}/v1/completions", json=body, headers=headers)
                for _ in range(4)
            ]
            responses = await asyncio.gather(*(client.send(request, stream=True) for request in requests))
            try:
                for response in responses:
                    assert response.status_code == 200 and response.headers["x-request-id"] == "same-id"
                    await anext(response.aiter_raw())

                async def four_in_flight() -> bool:
                    return await in_flight() == 4

                await eventually(four_in_flight, 5)  # a shared id would count as one, never four
            finally:
                for response in responses:
                    await response.aclose()

            async def none_in_flight() -> bool:
                return await in_flight() == 0

            await eventually(none_in_flight)


async def test_held_requests_are_capped(nats_server: NatsServer) -> None:
    with router_process(
        nats_server.url, models=[MODEL], cold_start_wait_s=30, max_held_requests=2, retry_after_s=3
    ) as router:
        async with httpx.AsyncClient(timeout=10) as client:
            url = f"{router.url}/v1/completions"
            held = [asyncio.create_task(client.post(url, json=BODY)) for _ in range(2)]

            async def both_held() -> bool:
                text = (await client.get(f"{router.url}/metrics")).text
                return metric_value(text, "brixmesh_router_held_requests") == 2

            await eventually(both_held)
            refused = await client.post(url, json=BODY)
            assert refused.status_code == 503 and refused.headers["retry-after"] == "3"
            assert refused.json()["error"]["code"] == "too_many_held_requests"
            assert not any(task.done() for task in held)
            for task in held:
                task.cancel()
            await asyncio.gather(*held, return_exceptions=True)


def test_overall_deadline_of_a_trickled_non_streamed_answer(nats_server: NatsServer, tmp_path: Path) -> None:
    """The engine sends a byte every 0.1 s for 10 s: never idle past the 2 s read timeout, yet past the 1 s
    request deadline -> 504 after about a second."""
    with fake_engine() as engine:
        path = endpoints_file(tmp_path, [engine])
        with router_process(
            nats_server.url, endpoints=path, upstream_timeout_s=2, request_timeout_s=1
        ) as router:
            started = time.monotonic()
            body = {**BODY, "max_tokens": 100}
            response = httpx.post(f"{router.url}/v1/completions", json=body, timeout=20)
            assert response.status_code == 504, response.text
            assert response.json()["error"]["type"] == "timeout"
            assert time.monotonic() - started < 5


def test_overall_deadline_ends_a_stream_with_an_error_event(nats_server: NatsServer, tmp_path: Path) -> None:
    with sim_engine(["--inter-token-latency", "50"], kv_events=False) as slow:
        path = endpoints_file(tmp_path, [slow.base_url])
        with router_process(nats_server.url, endpoints=path, request_timeout_s=1) as router:
            started = time.monotonic()
            response = httpx.post(
                f"{router.url}/v1/completions", json={**BODY, "max_tokens": 200, "stream": True}, timeout=20
            )
            assert response.status_code == 200
            events = [line for line in response.text.splitlines() if line.startswith("data: ")]
            assert '"type":"timeout"' in events[-1] and "deadline" in events[-1]
            assert time.monotonic() - started < 5
