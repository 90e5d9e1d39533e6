"""Failures: dead and failing pods, an engine killed under load, mid-stream death, timeouts, client
disconnects, and requests held while no pod is ready (scale from zero)."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import httpx
import msgspec
import openai
import pytest

from brixmesh.common.bus import Bus
from brixmesh.common.messages import PodEvent, PodInfo, RouterStats
from brixmesh.common.ports import free_port
from brixmesh.common.servers import NatsServer
from brixmesh.common.subjects import PODS, ROUTER_STATS
from tests.engine_sim.sim_engine import SimEngine, sim_engine
from tests.router.harness import MODEL, endpoints_file, metric_value, router_process
from tests.waiting import eventually

BODY = {"model": MODEL, "prompt": "hello there", "max_tokens": 4, "ignore_eos": True}


def test_dead_pod_is_skipped_by_retry(nats_server: NatsServer, sims: SimEngine, tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    path = endpoints_file(tmp_path, [dead, sims.urls[0]], names=["dead", "alive"])
    with router_process(nats_server.url, endpoints=path, default_strategy="round-robin") as router:
        pods = []
        for _ in range(6):
            response = httpx.post(f"{router.url}/v1/completions", json=BODY)
            assert response.status_code == 200
            pods.append(response.headers["x-brixmesh-pod"])
        assert set(pods) == {"alive"}
        metrics = httpx.get(f"{router.url}/metrics").text
        assert metric_value(metrics, "brixmesh_router_retries_total") >= 1


def test_5xx_before_first_byte_retries_on_next_pod(
    nats_server: NatsServer, sims: SimEngine, tmp_path: Path
) -> None:
    with sim_engine(
        ["--failure-injection-rate", "100", "--failure-types", "server_error"], kv_events=False
    ) as bad:
        path = endpoints_file(tmp_path, [bad.base_url, sims.urls[0]], names=["failing", "good"])
        with router_process(nats_server.url, endpoints=path, default_strategy="round-robin") as router:
            for _ in range(4):
                response = httpx.post(f"{router.url}/v1/completions", json={**BODY, "stream": True})
                assert response.status_code == 200 and response.headers["x-brixmesh-pod"] == "good"
                assert response.text.endswith("data: [DONE]\n\n")
            metrics = httpx.get(f"{router.url}/metrics").text
            assert metric_value(metrics, "brixmesh_router_retries_total", reason="http_503") >= 2


def test_only_failing_pods_gives_502(nats_server: NatsServer, tmp_path: Path) -> None:
    path = endpoints_file(tmp_path, [f"http://127.0.0.1:{free_port()}"], names=["dead"])
    with router_process(nats_server.url, endpoints=path, cold_start_wait_s=0.3) as router:
        response = httpx.post(f"{router.url}/v1/completions", json=BODY)
        assert response.status_code == 502 and response.json()["error"]["type"] == "upstream_error"
        # the pod is now marked unhealthy: with no healthy pod left the request is held, then 503
        again = httpx.post(f"{router.url}/v1/completions", json=BODY)
        assert again.status_code == 503 and int(again.headers["retry-after"]) >= 1


def test_upstream_timeout_gives_504(nats_server: NatsServer, tmp_path: Path) -> None:
    with sim_engine(["--time-to-first-token", "3000"], kv_events=False) as slow:
        path = endpoints_file(tmp_path, [slow.base_url])
        with router_process(nats_server.url, endpoints=path, upstream_timeout_s=0.5) as router:
            response = httpx.post(f"{router.url}/v1/completions", json=BODY, timeout=10)
            assert response.status_code == 504 and response.json()["error"]["type"] == "timeout"


def test_mid_stream_death_sends_sse_error_then_ends(nats_server: NatsServer, tmp_path: Path) -> None:
    with sim_engine(["--fault-disconnect-after-tokens", "3"], kv_events=False) as dying:
        path = endpoints_file(tmp_path, [dying.base_url])
        with router_process(nats_server.url, endpoints=path) as router:
            response = httpx.post(
                f"{router.url}/v1/completions", json={**BODY, "max_tokens": 20, "stream": True}
            )
            assert response.status_code == 200
            events = [line for line in response.text.split("\n\n") if line]
            assert events[-1].startswith('data: {"error"')
            error = msgspec.json.decode(events[-1][len("data: ") :])["error"]
            assert error["type"] == "upstream_error" and "mid-stream" in error["message"]
            client = openai.OpenAI(base_url=f"{router.url}/v1", api_key="x", max_retries=0)
            with pytest.raises(openai.APIError):
                list(client.completions.create(model=MODEL, prompt="hi", max_tokens=20, stream=True))


async def test_engine_killed_mid_stream_sends_sse_error(nats_server: NatsServer, tmp_path: Path) -> None:
    with sim_engine(["--inter-token-latency", "100"], kv_events=False) as victim:
        path = endpoints_file(tmp_path, [victim.base_url])
        with router_process(nats_server.url, endpoints=path) as router:
            async with httpx.AsyncClient(timeout=30) as client:
                async with client.stream(
                    "POST", f"{router.url}/v1/completions", json={**BODY, "max_tokens": 100, "stream": True}
                ) as response:
                    received = b""
                    async for chunk in response.aiter_bytes():
                        if not received:
                            os.killpg(victim.pid, signal.SIGKILL)
                        received += chunk
            last = [event for event in received.split(b"\n\n") if event][-1]
            assert last.startswith(b'data: {"error"') and b"lost its connection" in last


async def test_client_disconnect_cancels_upstream(nats_server: NatsServer, tmp_path: Path) -> None:
    with sim_engine(["--inter-token-latency", "200"], kv_events=False) as slow:
        path = endpoints_file(tmp_path, [slow.base_url])
        with router_process(nats_server.url, endpoints=path) as router:
            async with httpx.AsyncClient() as client:
                async with client.stream(
                    "POST", f"{router.url}/v1/completions", json={**BODY, "max_tokens": 200, "stream": True}
                ) as response:
                    async for _chunk in response.aiter_bytes():
                        break
                    assert await _running(client, slow.base_url) == 1
                await eventually(
                    lambda: _idle(client, slow.base_url),
                    5.0,
                    describe=lambda: "upstream request still running after client left",
                )
                metrics = (await client.get(f"{router.url}/metrics")).text
                assert metric_value(metrics, "brixmesh_router_client_disconnects_total") == 1


async def _running(client: httpx.AsyncClient, engine: str) -> float:
    return metric_value((await client.get(f"{engine}/metrics")).text, "vllm:num_requests_running")


async def _idle(client: httpx.AsyncClient, engine: str) -> bool:
    return await _running(client, engine) == 0


async def test_engine_killed_under_load_loses_no_request(nats_server: NatsServer, tmp_path: Path) -> None:
    slow = ["--time-to-first-token", "400", "--inter-token-latency", "20"]
    with sim_engine(slow, kv_events=False) as victim, sim_engine(slow, kv_events=False) as survivor:
        path = endpoints_file(tmp_path, [victim.base_url, survivor.base_url], names=["victim", "survivor"])
        with router_process(nats_server.url, endpoints=path, default_strategy="round-robin") as router:
            async with httpx.AsyncClient(timeout=30) as client:

                async def one(i: int) -> tuple[int, str, str]:
                    stream = i % 2 == 0
                    response = await client.post(
                        f"{router.url}/v1/completions", json={**BODY, "max_tokens": 8, "stream": stream}
                    )
                    return response.status_code, response.headers.get("x-brixmesh-pod", ""), response.text

                tasks = [asyncio.create_task(one(i)) for i in range(24)]
                await asyncio.sleep(0.2)  # every request is routed, none has its first byte yet
                os.killpg(victim.pid, signal.SIGKILL)
                results = await asyncio.gather(*tasks)
    assert len(results) == 24
    for status, pod, text in results:
        assert status == 200, text
        assert pod == "survivor"
        assert '"error"' not in text
        assert text.endswith("data: [DONE]\n\n") or '"finish_reason":"length"' in text


async def test_request_held_until_a_pod_becomes_ready(
    nats_server: NatsServer, sims: SimEngine, bus: Bus
) -> None:
    stats: list[RouterStats] = []
    await bus.subscribe(
        ROUTER_STATS.pattern(model=MODEL), RouterStats, lambda _s, record: stats.append(record)
    )
    with router_process(
        nats_server.url, models=[MODEL], cold_start_wait_s=20, stats_interval_s=0.2
    ) as router:
        async with httpx.AsyncClient(timeout=30) as client:
            held = asyncio.create_task(client.post(f"{router.url}/v1/completions", json=BODY))
            deadline = time.monotonic() + 10
            while not any(record.queued > 0 for record in stats):
                assert time.monotonic() < deadline and not held.done()
                await asyncio.sleep(0.05)
            info = PodInfo(pod="late-pod", deployment="d", model=MODEL, engine="sim", endpoint=sims.urls[0])
            await bus.publish(
                PODS.format(kind="engine", deployment="d", pod="late-pod"),
                PodEvent(kind="ready", pod=info, ts=time.time()),
            )
            response = await held
            assert response.status_code == 200 and response.headers["x-brixmesh-pod"] == "late-pod"
            unknown = await client.post(f"{router.url}/v1/completions", json={**BODY, "model": "other"})
            assert unknown.status_code == 404


def test_no_ready_pod_gives_503_with_retry_after(nats_server: NatsServer) -> None:
    with router_process(nats_server.url, models=[MODEL], cold_start_wait_s=0.2, retry_after_s=7) as router:
        started = time.monotonic()
        response = httpx.post(
            f"{router.url}/v1/chat/completions",
            json={"model": MODEL, "messages": [{"role": "user", "content": "x"}]},
        )
        assert response.status_code == 503 and response.headers["retry-after"] == "7"
        assert response.json()["error"]["code"] == "no_ready_pod"
        assert time.monotonic() - started >= 0.2
