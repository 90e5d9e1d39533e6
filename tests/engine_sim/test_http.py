"""Simulator-only HTTP behaviour: saturation, faults, P/D fields, prompt-token details, metric flavors, replicas."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time

import httpx
import pytest

from tests.engine_sim.prom import metric_samples, metric_value, peak_load
from tests.engine_sim.sim_engine import MODEL_NAME, sim_engine


async def _complete(c: httpx.AsyncClient, prompt, max_tokens: int, **extra) -> httpx.Response:
    return await c.post(
        "/v1/completions",
        json={"model": MODEL_NAME, "prompt": prompt, "max_tokens": max_tokens, "ignore_eos": True, **extra},
    )


async def test_saturated_engine_queues_fills_cache_and_preempts() -> None:
    with sim_engine(["--inter-token-latency", "8"], kv_events=False) as sim:
        async with httpx.AsyncClient(base_url=sim.base_url, timeout=120) as c:
            prompts = [[10 + i] * 400 for i in range(24)]
            tasks = [asyncio.create_task(_complete(c, p, 120)) for p in prompts]
            waiting_seen, usage_seen = await peak_load(c, tasks)
            responses = await asyncio.gather(*tasks)
            assert all(r.status_code == 200 for r in responses)
            assert all(r.json()["usage"]["completion_tokens"] == 120 for r in responses)
            text = (await c.get("/metrics")).text
    assert waiting_seen >= 10
    assert usage_seen > 0.9
    assert metric_value(text, "vllm:num_preemptions_total") > 0
    assert metric_value(text, "vllm:request_queue_time_seconds_sum") > 0
    assert metric_value(text, "vllm:kv_cache_usage_perc") == 0.0
    success = dict(metric_samples(text)["vllm:request_success_total"])
    assert success['engine="0",finished_reason="length",model_name="tiny-llama"'] == 24


@pytest.fixture(scope="module")
def sim():
    with sim_engine(
        ["--enable-prompt-tokens-details", "--legacy-metrics", "--enable-scale-out"], kv_events=False
    ) as engine:
        yield engine


async def test_cached_tokens_in_usage_details(sim) -> None:
    prompt = [9] * 100
    async with httpx.AsyncClient(base_url=sim.base_url) as c:
        first = (await _complete(c, prompt, 1)).json()
        second = (await _complete(c, prompt, 1)).json()
    assert first["usage"]["prompt_tokens_details"] == {"cached_tokens": 0}
    assert second["usage"]["prompt_tokens_details"] == {"cached_tokens": 96}


async def test_legacy_gpu_cache_usage_metric(sim) -> None:
    async with httpx.AsyncClient(base_url=sim.base_url) as c:
        text = (await c.get("/metrics")).text
    samples = metric_samples(text)
    assert "vllm:gpu_cache_usage_perc" in samples and "vllm:num_requests_swapped" in samples


async def test_fault_injection_runtime_knobs(sim) -> None:
    async with httpx.AsyncClient(base_url=sim.base_url) as c:
        assert (await c.get("/admin/faults")).json()["error_rate"] == 0.0
        bad = await c.post("/admin/faults", json={"error_rate": 2})
        assert bad.status_code == 400 and "error_rate" in bad.json()["error"]["message"]
        unknown = await c.post("/admin/faults", json={"nope": 1})
        assert unknown.status_code == 400 and "nope" in unknown.json()["error"]["message"]
        ok = await c.post("/admin/faults", json={"error_rate": 1.0, "error_types": ["rate_limit"]})
        assert ok.status_code == 200 and ok.json()["error_rate"] == 1.0
        failed = await _complete(c, "x", 1)
        assert failed.status_code == 429 and failed.json()["error"]["code"] == 429
        await c.post("/admin/faults", json={"error_rate": 0.0, "error_types": None})
        forced = await c.post(
            "/v1/completions", json={"prompt": "x", "max_tokens": 1}, headers={"X-Return-Error": "503"}
        )
        assert forced.status_code == 503
        # a straggler: the same request costs 5x the modelled GPU time (host noise does not enter busy time)
        busy = (await c.get("/admin/stats")).json()["busy_seconds"]
        assert (await _complete(c, "y", 20)).status_code == 200
        normal = (await c.get("/admin/stats")).json()["busy_seconds"] - busy
        await c.post("/admin/faults", json={"slowdown": 5.0})
        busy = (await c.get("/admin/stats")).json()["busy_seconds"]
        assert (await _complete(c, "y", 20)).status_code == 200
        slow = (await c.get("/admin/stats")).json()["busy_seconds"] - busy
        await c.post("/admin/faults", json={"slowdown": 1.0})
        assert slow == pytest.approx(5 * normal, rel=0.01)
        # silent data corruption: the same greedy request answers differently, and again once it is healed
        healthy = (await _complete(c, "z", 6)).json()["choices"][0]["text"]
        await c.post("/admin/faults", json={"corrupt_output": True})
        corrupted = (await _complete(c, "z", 6)).json()["choices"][0]["text"]
        await c.post("/admin/faults", json={"corrupt_output": False})
        assert corrupted != healthy == (await _complete(c, "z", 6)).json()["choices"][0]["text"]
        # mid-stream disconnect after 3 tokens: the stream ends without [DONE]
        await c.post("/admin/faults", json={"disconnect_after_tokens": 3})
        lines = []
        async with c.stream(
            "POST",
            "/v1/completions",
            json={"prompt": "z", "max_tokens": 10, "stream": True, "ignore_eos": True},
        ) as response:
            async for line in response.aiter_lines():
                if line.startswith("data: "):
                    lines.append(line)
        await c.post("/admin/faults", json={"disconnect_after_tokens": None})
        assert len(lines) == 3 and "[DONE]" not in lines[-1]


async def test_slow_lora_load_fault(sim) -> None:
    async with httpx.AsyncClient(base_url=sim.base_url) as c:
        await c.post("/admin/faults", json={"lora_load_delay_s": 0.3})
        started = time.monotonic()
        loaded = await c.post(
            "/v1/load_lora_adapter", json={"lora_name": "slow", "lora_path": str(sim.lora_dirs["lora-b"])}
        )
        elapsed = time.monotonic() - started
        await c.post("/admin/faults", json={"lora_load_delay_s": 0.0, "lora_load_fail": True})
        failed = await c.post(
            "/v1/load_lora_adapter", json={"lora_name": "fails", "lora_path": str(sim.lora_dirs["lora-b"])}
        )
        await c.post("/admin/faults", json={"lora_load_fail": False})
    assert loaded.status_code == 200 and elapsed >= 0.3
    assert failed.status_code == 500 and failed.json()["error"]["type"] == "InternalServerError"


async def test_render_endpoints_return_token_ids(sim) -> None:
    async with httpx.AsyncClient(base_url=sim.base_url) as c:
        tokens = (await c.post("/tokenize", json={"messages": [{"role": "user", "content": "hi"}]})).json()[
            "tokens"
        ]
        chat = await c.post(
            "/v1/chat/completions/render",
            json={"model": MODEL_NAME, "messages": [{"role": "user", "content": "hi"}]},
        )
        completion = await c.post("/v1/completions/render", json={"model": MODEL_NAME, "prompt": [1, 2, 3]})
    assert chat.json()["token_ids"] == tokens
    assert completion.json()[0]["token_ids"] == [1, 2, 3]


def test_replicas_are_independent_engines() -> None:
    with sim_engine(["--metrics-flavor", "sglang"], replicas=3) as sim:
        assert len(sim.urls) == 3
        with httpx.Client() as c:
            c.post(f"{sim.urls[1]}/v1/completions", json={"prompt": "only on one", "max_tokens": 3})
            texts = [c.get(f"{url}/metrics").text for url in sim.urls]
    generated = [metric_value(t, "sglang:generation_tokens_total") for t in texts]
    assert generated == [0.0, 3.0, 0.0]
    assert all("sglang:token_usage" in t and "vllm:" not in t for t in texts)


def test_cli_rejects_bad_flags_with_one_line() -> None:
    for args, needle in (
        (["serve"], "a model is required"),
        (["serve", "m", "--lora-modules", "a=/nonexistent/x", "--enable-lora"], "no adapter directory"),
        (["serve", "m", "--kv-events-config", "{nope"], "not valid JSON"),
        (["serve", "m", "--fault-slowdown", "0"], "slowdown"),
    ):
        done = subprocess.run(
            [sys.executable, "-m", "brixmesh.engine_sim", *args], capture_output=True, text=True, timeout=30
        )
        assert done.returncode == 2, args
        assert needle in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_crash_fault_kills_a_lone_engine() -> None:
    with sim_engine(kv_events=False) as sim:
        # armed at runtime: a start-up-relative CLI deadline could pass before a slow CI host is healthy
        assert httpx.post(f"{sim.base_url}/admin/faults", json={"crash_after_s": 0}).status_code == 200
        process_gone = False
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not process_gone:
            try:
                httpx.get(f"{sim.base_url}/health", timeout=1)
                time.sleep(0.1)
            except httpx.TransportError:
                process_gone = True
    assert process_gone


async def test_hang_fault_blocks_requests_until_cleared(sim) -> None:
    async with httpx.AsyncClient(base_url=sim.base_url) as c:
        await c.post("/admin/faults", json={"hang": True})
        try:
            with pytest.raises(httpx.ReadTimeout):
                await c.post("/v1/completions", json={"prompt": "x", "max_tokens": 1}, timeout=0.5)
        finally:
            await c.post("/admin/faults", json={"hang": False})
        assert (await _complete(c, "x", 1)).status_code == 200


def test_time_scale_slows_the_clock_but_metrics_stay_in_model_time() -> None:
    with sim_engine(["--time-scale", "10"], kv_events=False) as sim:
        with httpx.Client(base_url=sim.base_url, timeout=30) as c:
            started = time.monotonic()
            response = c.post(
                "/v1/completions", json={"prompt": "slow", "max_tokens": 50, "ignore_eos": True}
            )
            wall = time.monotonic() - started
            text = c.get("/metrics").text
    assert response.status_code == 200
    modelled = metric_value(text, "vllm:e2e_request_latency_seconds_sum")
    # constant mode: 5 ms to the first token, then 2 ms per token = ~0.103 s of model time
    assert 0.09 < modelled < 0.5  # ~10x below the wall time; the margin is for host stalls
    assert wall > 0.9


def _recv_batches(sub, wait_s: float, expect: int | None = None) -> list[int]:
    """Sequence numbers received within ``wait_s`` (early return once ``expect`` batches arrived)."""
    seqs: list[int] = []
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline and (expect is None or len(seqs) < expect):
        if sub.poll(50):
            frames = sub.recv_multipart()
            seqs.append(int.from_bytes(frames[1], "big"))
    return seqs


def test_replicas_publish_on_their_own_endpoints_and_drop_fault() -> None:
    import zmq

    with sim_engine(replicas=2) as sim:
        ctx = zmq.Context()
        subs = []
        for i in range(2):
            sub = ctx.socket(zmq.SUB)
            sub.setsockopt(zmq.LINGER, 0)
            sub.setsockopt_string(zmq.SUBSCRIBE, "")
            sub.connect(sim.kv_events_endpoint if i == 0 else f"{sim.kv_events_endpoint}-1")
            subs.append(sub)
        time.sleep(0.3)
        try:
            with httpx.Client(timeout=30) as c:
                c.post(f"{sim.urls[1]}/v1/completions", json={"prompt": [20] * 70, "max_tokens": 1})
                assert _recv_batches(subs[1], 5.0, expect=1) == [0]
                assert _recv_batches(subs[0], 0.1) == []
                faults = c.post(f"{sim.urls[1]}/admin/faults", json={"kv_events_drop_prob": 1.0})
                assert faults.status_code == 200
                c.post(f"{sim.urls[1]}/v1/completions", json={"prompt": [21] * 70, "max_tokens": 1})
                assert _recv_batches(subs[1], 0.5) == []  # dropped on the wire: a seq gap for consumers
                c.post(f"{sim.urls[1]}/admin/faults", json={"kv_events_drop_prob": 0.0})
                c.post(f"{sim.urls[1]}/v1/completions", json={"prompt": [22] * 70, "max_tokens": 1})
                assert _recv_batches(subs[1], 5.0, expect=1) == [2]
        finally:
            for sub in subs:
                sub.close()
            ctx.term()


async def test_stall_fault_pauses_a_stream(sim) -> None:
    async with httpx.AsyncClient(base_url=sim.base_url, timeout=30) as c:
        await c.post("/admin/faults", json={"stall_after_tokens": 2, "stall_seconds": 0.5})
        try:
            arrivals = []
            started = time.monotonic()
            async with c.stream(
                "POST",
                "/v1/completions",
                json={"prompt": "s", "max_tokens": 4, "stream": True, "ignore_eos": True},
            ) as response:
                async for line in response.aiter_lines():
                    if line.startswith("data: {"):
                        arrivals.append(time.monotonic() - started)
        finally:
            await c.post("/admin/faults", json={"stall_after_tokens": None, "stall_seconds": 0.0})
    assert len(arrivals) == 4
    assert arrivals[2] - arrivals[1] >= 0.45


def test_api_key_guards_v1_routes_only() -> None:
    with sim_engine(["--api-key", "s3cret"], kv_events=False) as sim:
        with httpx.Client(base_url=sim.base_url) as c:
            denied = c.get("/v1/models")
            allowed = c.get("/v1/models", headers={"Authorization": "Bearer s3cret"})
            health = c.get("/health")
    assert denied.status_code == 401 and denied.json() == {"error": "Unauthorized"}
    assert allowed.status_code == 200 and health.status_code == 200


async def test_adapter_route_aliases(sim) -> None:
    path = str(sim.lora_dirs["lora-a"])
    async with httpx.AsyncClient(base_url=sim.base_url) as c:
        assert (
            await c.post("/adapters", json={"lora_name": "alias-a", "lora_path": path})
        ).status_code == 200
        assert (await c.delete("/adapters/alias-a")).status_code == 200
        assert (await c.delete("/adapters/alias-a")).status_code == 404
        assert (
            await c.post("/load_lora_adapter", json={"lora_name": "sg", "lora_path": path})
        ).status_code == 200
        assert (await c.post("/unload_lora_adapter", json={"lora_name": "sg"})).status_code == 200


def test_startup_duration_keeps_the_port_closed() -> None:
    started = time.monotonic()
    # sim_engine returns once /health answers: only after the simulated start-up
    with sim_engine(["--startup-duration", "1.0"], kv_events=False) as sim:
        assert time.monotonic() - started >= 1.0
        assert httpx.get(f"{sim.base_url}/health").status_code == 200


async def test_admin_stats_report_steps_and_lag(sim) -> None:
    async with httpx.AsyncClient(base_url=sim.base_url) as c:
        before = (await c.get("/admin/stats")).json()
        await _complete(c, "stats", 5)
        after = (await c.get("/admin/stats")).json()
    assert after["steps"] >= before["steps"] + 5
    assert after["busy_seconds"] > before["busy_seconds"]
    assert after["lag_seconds"] >= 0 and after["num_gpu_blocks"] == 64


def test_failure_injection_from_cli_flags() -> None:
    flags = ["--failure-injection-rate", "100", "--failure-types", "server_error", "--fault-slowdown", "2"]
    with sim_engine(flags, kv_events=False) as sim:
        with httpx.Client(base_url=sim.base_url) as c:
            failed = c.post("/v1/completions", json={"prompt": "x", "max_tokens": 1})
            faults = c.get("/admin/faults").json()
    assert failed.status_code == 503 and failed.json()["error"]["type"] == "ServiceUnavailableError"
    assert (
        faults["error_rate"] == 1.0
        and faults["error_types"] == ["server_error"]
        and faults["slowdown"] == 2.0
    )


async def test_chat_stream_begins_with_the_first_token_as_vllm_does() -> None:
    """vLLM sends the role chunk with the first output, after the prefill: a router timing the first byte
    sees the prefill (the simulator used to send it at once)."""
    with sim_engine(["--time-to-first-token", "400"], kv_events=False) as engine:
        async with httpx.AsyncClient(base_url=engine.base_url, timeout=30) as c:
            body = {"model": MODEL_NAME, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2,
                    "stream": True}  # fmt: skip
            started = time.monotonic()
            async with c.stream("POST", "/v1/chat/completions", json=body) as response:
                first = await anext(response.aiter_raw())
                first_byte_s = time.monotonic() - started
    assert b'"role":"assistant"' in first.replace(b" ", b"")
    assert first_byte_s >= 0.35
