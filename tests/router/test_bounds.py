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

from brixmesh.common.bus import Bus
from brixmesh.common.messages import RoutingEvent, RoutingEventBatch
from brixmesh.common.servers import NatsServer
from brixmesh.common.subjects import ROUTER_ROUTING
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


async def test_requests_sharing_a_client_request_id_are_counted_apart(router: ServiceProcess, bus: Bus) -> None:
    """Four requests under one client id: each is its own entry in the load accounting every replica mirrors
    (``router.routing.*``), so none replaces another's; each answer echoes the client's id."""
    routed: list[RoutingEvent] = []
    await bus.subscribe(
        ROUTER_ROUTING.pattern(), RoutingEventBatch, lambda _s, batch: routed.extend(batch.events)
    )
    async with httpx.AsyncClient(timeout=30) as client:
        responses = await asyncio.gather(
            *(
                client.post(f"{router.url}/v1/completions", json=BODY, headers={"x-request-id": "same-id"})
                for _ in range(4)
            )
        )
    assert all(r.status_code == 200 and r.headers["x-request-id"] == "same-id" for r in responses)

    def both_ends_of_four() -> bool:
        return len([e for e in routed if e.kind == "done"]) == 4

    await eventually(both_ends_of_four)
    ids = {e.request_id for e in routed if e.kind == "routed"}
    assert len(ids) == 4 and "same-id" not in ids
    assert {e.request_id for e in routed if e.kind == "done"} == ids


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


def test_a_stream_is_out_of_the_in_flight_count_once_its_end_is_relayed(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    """The engine keeps the connection 3 s after ``[DONE]``: a client has its whole answer, and may send the
    conversation's next turn, before the router sees the upstream close. That turn must not find the pod
    still busy with the turn before."""
    with fake_engine() as engine:
        path = endpoints_file(tmp_path, [engine])
        with router_process(nats_server.url, endpoints=path) as router:
            messages = [{"role": "user", "content": "hi"}]
            body = {"model": MODEL, "messages": messages, "stream": True, "linger_s": 3}
            with httpx.stream("POST", f"{router.url}/v1/chat/completions", json=body, timeout=20) as response:
                lines = response.iter_lines()
                assert any(line == "data: [DONE]" for line in lines)
                metrics = httpx.get(f"{router.url}/metrics").text
                assert metric_value(metrics, "brixmesh_router_in_flight") == 0
                assert "".join(lines) == ""  # nothing after [DONE]; the stream ends when the engine's does


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
