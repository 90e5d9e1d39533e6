"""In-flight accounting from engine metrics, and the wait for a draining pod to go idle."""

from __future__ import annotations

from pathlib import Path

import httpx

from brixmesh.orchestrator.drain import in_flight_requests, wait_until_idle

CAPTURE = Path(__file__).resolve().parents[1] / "fixtures/vllm-0.32-cpu/metrics_sample_after_load.txt"


def vllm_metrics(running: float, waiting: float) -> str:
    text = CAPTURE.read_text()
    text = text.replace('vllm:num_requests_running{engine="0",model_name="tiny-llama"} 0.0',
                        f'vllm:num_requests_running{{engine="0",model_name="tiny-llama"}} {running}')
    return text.replace('vllm:num_requests_waiting{engine="0",model_name="tiny-llama"} 0.0',
                        f'vllm:num_requests_waiting{{engine="0",model_name="tiny-llama"}} {waiting}')


def test_real_vllm_exposition_is_read() -> None:
    assert in_flight_requests(CAPTURE.read_text()) == 0.0
    assert in_flight_requests(vllm_metrics(3, 2)) == 5.0


def test_sglang_names_and_engines_are_summed_and_absence_is_none() -> None:
    sglang = "sglang:num_running_reqs{model_name=\"m\"} 2\nsglang:num_queue_reqs{model_name=\"m\"} 1\n"
    assert in_flight_requests(sglang) == 3.0
    two_engines = 'vllm:num_requests_running{engine="0"} 1\nvllm:num_requests_running{engine="1"} 4\n'
    assert in_flight_requests(two_engines) == 5.0
    assert in_flight_requests("process_cpu_seconds_total 3.0\n") is None


def scripted(readings: list[float | None]) -> httpx.AsyncClient:
    """A client whose /metrics answers are the readings in turn (None: connection refused), last one repeated."""
    calls = iter(readings)
    last: list[float | None] = [None]

    def handler(request: httpx.Request) -> httpx.Response:
        value = next(calls, last[0])
        last[0] = value
        if value is None:
            raise httpx.ConnectError("refused", request=request)
        return httpx.Response(200, text=vllm_metrics(value, 0))

    return httpx.AsyncClient(transport=httpx.MockTransport(handler))


async def test_idle_after_in_flight_reaches_zero_and_settles() -> None:
    async with scripted([2, 1, 0, 0, 0, 0]) as client:
        outcome = await wait_until_idle(client, "http://pod/metrics", grace_s=10, poll_interval_s=0.01, settle_s=0.02)
    assert outcome.idle and outcome.in_flight == 0.0
    assert outcome.describe().startswith("drained: idle after")


async def test_a_new_request_resets_the_settle_window() -> None:
    async with scripted([0, 1, 0, 0, 0]) as client:
        outcome = await wait_until_idle(client, "http://pod/metrics", grace_s=10, poll_interval_s=0.01, settle_s=0.015)
    assert outcome.idle


async def test_grace_elapses_with_requests_in_flight() -> None:
    async with scripted([4]) as client:
        outcome = await wait_until_idle(client, "http://pod/metrics", grace_s=0.05, poll_interval_s=0.01)
    assert not outcome.idle and outcome.in_flight == 4.0
    assert "with 4 request(s) in flight" in outcome.describe()


async def test_an_unreachable_engine_ends_the_wait() -> None:
    async with scripted([1, None]) as client:
        outcome = await wait_until_idle(client, "http://pod/metrics", grace_s=10, poll_interval_s=0.01)
    assert outcome.unreachable and not outcome.idle
    assert "stopped answering" in outcome.describe()
