"""API keys and RPM/TPM limits in real Redis; fail-open and fail-closed when Redis is unreachable."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from brixmesh.common.ports import free_port
from brixmesh.common.servers import NatsServer, RedisServer
from tests.engine_sim.sim_engine import SimEngine
from tests.router.harness import MODEL, endpoints_file, metric_value, router_process
from tests.service_proc import ServiceProcess

BODY = {"model": MODEL, "prompt": "hello", "max_tokens": 3, "ignore_eos": True}


@pytest.fixture
def endpoints(sims: SimEngine, tmp_path: Path) -> Path:
    return endpoints_file(tmp_path, sims.urls)


@pytest.fixture
def keyed_router(
    nats_server: NatsServer, redis_server: RedisServer, endpoints: Path
) -> Iterator[ServiceProcess]:
    with router_process(
        nats_server.url, endpoints=endpoints, api_keys="k-one,k-two", redis_url=redis_server.url, rpm_limit=3
    ) as router:
        yield router


def test_api_key_required_and_checked(keyed_router: ServiceProcess) -> None:
    missing = httpx.post(f"{keyed_router.url}/v1/completions", json=BODY)
    assert missing.status_code == 401 and missing.json()["error"]["code"] == "invalid_api_key"
    wrong = httpx.post(
        f"{keyed_router.url}/v1/completions", json=BODY, headers={"authorization": "Bearer nope"}
    )
    assert wrong.status_code == 401
    assert httpx.get(f"{keyed_router.url}/v1/models").status_code == 401
    client = openai.OpenAI(base_url=f"{keyed_router.url}/v1", api_key="k-two", max_retries=0)
    assert (
        client.completions.create(
            model=MODEL, prompt="hi", max_tokens=3, extra_body={"ignore_eos": True}
        ).usage.completion_tokens
        == 3
    )
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{keyed_router.url}/v1", api_key="bad", max_retries=0).completions.create(
            model=MODEL, prompt="hi"
        )


def test_rpm_limit_per_key_gives_429_with_retry_after(keyed_router: ServiceProcess) -> None:
    headers = {"authorization": "Bearer k-one"}
    statuses = [
        httpx.post(f"{keyed_router.url}/v1/completions", json=BODY, headers=headers) for _ in range(4)
    ]
    assert [r.status_code for r in statuses[:3]] == [200, 200, 200]
    limited = statuses[3]
    assert limited.status_code == 429 and 1 <= int(limited.headers["retry-after"]) <= 60
    assert limited.json()["error"]["code"] == "rate_limit_exceeded"
    other_key = httpx.post(
        f"{keyed_router.url}/v1/completions", json=BODY, headers={"authorization": "Bearer k-two"}
    )
    assert other_key.status_code == 200


def test_tpm_counts_usage_of_streams_too(
    nats_server: NatsServer, redis_server: RedisServer, endpoints: Path
) -> None:
    with router_process(
        nats_server.url, endpoints=endpoints, redis_url=redis_server.url, tpm_limit=30
    ) as router:
        user = {"user": f"u-{free_port()}"}
        stream = httpx.post(
            f"{router.url}/v1/completions", json={**BODY, "max_tokens": 40, "stream": True}, headers=user
        )
        assert stream.status_code == 200  # under the limit when it started; its usage counts afterwards
        deadline_checks = [
            httpx.post(f"{router.url}/v1/completions", json=BODY, headers=user) for _ in range(2)
        ]
        assert deadline_checks[-1].status_code == 429
        assert "tokens per minute" in deadline_checks[-1].json()["error"]["message"]
        assert (
            httpx.post(
                f"{router.url}/v1/completions", json=BODY, headers={"user": "someone-else"}
            ).status_code
            == 200
        )


@pytest.mark.parametrize(("policy", "status"), [("fail-open", 200), ("fail-closed", 503)])
def test_redis_down_applies_policy_visibly(
    nats_server: NatsServer, endpoints: Path, policy: str, status: int
) -> None:
    unreachable = f"redis://127.0.0.1:{free_port()}/0"
    with router_process(
        nats_server.url, endpoints=endpoints, redis_url=unreachable, rpm_limit=100, limits_policy=policy
    ) as router:
        response = httpx.post(f"{router.url}/v1/completions", json=BODY, headers={"user": "u"})
        assert response.status_code == status
        if status == 503:
            assert response.headers["retry-after"] == "1"
        metrics = httpx.get(f"{router.url}/metrics").text
        assert metric_value(metrics, "brixmesh_router_limits_backend_errors_total", policy=policy) >= 1


@pytest.mark.parametrize("limit", ["BRIXMESH_RPM_LIMIT", "BRIXMESH_TPM_LIMIT"])
def test_limits_without_redis_are_a_one_line_startup_error(limit: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "brixmesh.router"],
        env={limit: "10", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines == [
        "brixmesh-router: invalid setting BRIXMESH_RPM_LIMIT/BRIXMESH_TPM_LIMIT are counted in Redis: "
        "set BRIXMESH_REDIS_URL too (or set the limits to 0)"
    ], result.stderr


async def test_fail_closed_serves_every_request_once_redis_is_back(
    nats_server: NatsServer, endpoints: Path, tmp_path: Path
) -> None:
    """Connections pooled before a Redis restart are dead afterwards; a request must not pay for one."""
    redis = RedisServer(tmp_path / "redis").start()
    try:
        with router_process(
            nats_server.url,
            endpoints=endpoints,
            redis_url=redis.url,
            rpm_limit=1000,
            limits_policy="fail-closed",
        ) as router:
            async with httpx.AsyncClient(timeout=30) as client:

                async def burst() -> list[int]:
                    responses = await asyncio.gather(*(
                        client.post(f"{router.url}/v1/completions", json=BODY, headers={"user": "u"})
                        for _ in range(8)
                    ))  # fmt: skip
                    return [r.status_code for r in responses]

                assert await burst() == [200] * 8  # the pool now holds several connections
                redis.stop()
                redis = RedisServer(redis.data_dir, port=redis.port).start()
                assert await burst() == [200] * 8
                metrics = (await client.get(f"{router.url}/metrics")).text
                name = "brixmesh_router_limits_backend_errors_total"
                assert metric_value(metrics, name, policy="fail-closed") == 0
    finally:
        redis.stop()
