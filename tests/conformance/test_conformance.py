"""Same assertions against the simulator and the real vLLM: shapes, streaming, errors, metrics, KV events, LoRA."""

from __future__ import annotations

import asyncio
import json
import os
import time
from typing import Any

import httpx
import msgspec
import pytest
import zmq

from tests.engine_sim.prom import histogram_above, metric_samples, metric_value, peak_load
from tests.plugins.vllm_engine import published_block_hash, vllm_block_digests

REPLAY_END_SEQ = b"\xff" * 8
EVENT_WAIT_S = 15.0

CORE_METRICS = [
    "vllm:num_requests_running",
    "vllm:num_requests_waiting",
    "vllm:num_requests_waiting_by_reason",
    "vllm:kv_cache_usage_perc",
    "vllm:prefix_cache_queries_total",
    "vllm:prefix_cache_hits_total",
    "vllm:num_preemptions_total",
    "vllm:prompt_tokens_total",
    "vllm:generation_tokens_total",
    "vllm:prompt_tokens_by_source_total",
    "vllm:prompt_tokens_cached_total",
    "vllm:request_success_total",
    "vllm:time_to_first_token_seconds_bucket",
    "vllm:inter_token_latency_seconds_bucket",
    "vllm:request_time_per_output_token_seconds_bucket",
    "vllm:e2e_request_latency_seconds_bucket",
    "vllm:request_queue_time_seconds_bucket",
    "vllm:request_prefill_time_seconds_bucket",
    "vllm:request_decode_time_seconds_bucket",
    "vllm:request_inference_time_seconds_bucket",
    "vllm:request_prompt_tokens_bucket",
    "vllm:request_generation_tokens_bucket",
    "vllm:request_params_max_tokens_bucket",
    "vllm:iteration_tokens_total_bucket",
    "vllm:cache_config_info",
    "vllm:engine_sleep_state",
    "vllm:lora_requests_info",
]


def client(engine: Any) -> httpx.Client:
    return httpx.Client(base_url=engine.base_url, timeout=60.0)


def complete(c: httpx.Client, engine: Any, prompt: Any, max_tokens: int = 8, **extra: Any) -> dict[str, Any]:
    body = {
        "model": engine.model,
        "prompt": prompt,
        "max_tokens": max_tokens,
        "temperature": 0,
        "ignore_eos": True,
        **extra,
    }
    response = c.post("/v1/completions", json=body)
    assert response.status_code == 200, response.text
    return response.json()


def tokenize(c: httpx.Client, engine: Any, **body: Any) -> list[int]:
    response = c.post("/tokenize", json={"model": engine.model, **body})
    assert response.status_code == 200, response.text
    return response.json()["tokens"]


def sse_events(c: httpx.Client, path: str, body: dict[str, Any]) -> tuple[httpx.Headers, list[str]]:
    events: list[str] = []
    with c.stream("POST", path, json=body) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("data: "):
                events.append(line.removeprefix("data: "))
        return response.headers, events


def stream_completion(
    c: httpx.Client, engine: Any, prompt: str, max_tokens: int, **extra: Any
) -> tuple[httpx.Headers, list[str]]:
    body = {
        "model": engine.model,
        "prompt": prompt,
        "max_tokens": max_tokens,
        "ignore_eos": True,
        "stream": True,
    }
    return sse_events(c, "/v1/completions", {**body, **extra})


def stream_chat(
    c: httpx.Client, engine: Any, max_tokens: int, **extra: Any
) -> tuple[httpx.Headers, list[str]]:
    """A streamed chat completion of the one-message conversation "hi"."""
    body = {
        "model": engine.model,
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": max_tokens,
        "ignore_eos": True,
        "stream": True,
    }
    return sse_events(c, "/v1/chat/completions", {**body, **extra})


def test_health_version_load(engine) -> None:
    with client(engine) as c:
        health = c.get("/health")
        assert health.status_code == 200 and health.content == b""
        assert c.get("/version").json()["version"].startswith("0.32.0")
        assert isinstance(c.get("/load").json()["server_load"], int)


def test_models_card(engine) -> None:
    with client(engine) as c:
        body = c.get("/v1/models").json()
    assert body["object"] == "list"
    base = next(card for card in body["data"] if card["id"] == engine.model)
    assert base["object"] == "model" and base["owned_by"] == "vllm"
    assert base["parent"] is None and base["max_model_len"] == engine.max_model_len
    assert base["permission"][0]["object"] == "model_permission"


def test_completion_shape_and_usage(engine) -> None:
    with client(engine) as c:
        prompt = "Hello world, this is a test"
        ids = tokenize(c, engine, prompt=prompt)
        body = complete(c, engine, prompt, max_tokens=7)
        assert body["id"].startswith("cmpl-") and body["object"] == "text_completion"
        assert body["model"] == engine.model and isinstance(body["created"], int)
        choice = body["choices"][0]
        assert {"index", "text", "logprobs", "finish_reason", "stop_reason"} <= set(choice)
        assert choice["finish_reason"] == "length"
        assert body["usage"]["prompt_tokens"] == len(ids)
        assert body["usage"]["completion_tokens"] == 7
        assert body["usage"]["total_tokens"] == len(ids) + 7
        assert body["system_fingerprint"] is None or body["system_fingerprint"].startswith("vllm-")
        assert body.get("kv_transfer_params") is None
        # token-id prompts and determinism at temperature 0
        again = complete(c, engine, ids, max_tokens=7)
        assert again["usage"]["prompt_tokens"] == len(ids)
        assert again["choices"][0]["text"] == choice["text"]


def test_chat_shape_and_template(engine) -> None:
    messages = [{"role": "user", "content": "hi"}]
    with client(engine) as c:
        ids = tokenize(c, engine, messages=messages)
        assert ids[:2] == [1, 4]
        response = c.post(
            "/v1/chat/completions",
            json={
                "model": engine.model,
                "messages": messages,
                "max_completion_tokens": 5,
                "ignore_eos": True,
            },
        )
        assert response.status_code == 200, response.text
        body = response.json()
    assert body["id"].startswith("chatcmpl-") and body["object"] == "chat.completion"
    message = body["choices"][0]["message"]
    assert message["role"] == "assistant" and isinstance(message["content"], str)
    assert body["usage"]["prompt_tokens"] == len(ids) and body["usage"]["completion_tokens"] == 5


def test_detokenize_keeps_special_tokens(engine) -> None:
    with client(engine) as c:
        ids = tokenize(c, engine, prompt="Hello world")
        body = c.post("/detokenize", json={"model": engine.model, "tokens": ids}).json()
    assert body["prompt"] == "<s>Hello world"


def test_completion_stream_with_usage(engine) -> None:
    with client(engine) as c:
        plain = complete(c, engine, "Streaming check", max_tokens=6)
        headers, events = stream_completion(
            c, engine, "Streaming check", 6, temperature=0, stream_options={"include_usage": True}
        )
    assert headers["content-type"].startswith("text/event-stream")
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    usage_chunk = chunks[-1]
    assert usage_chunk["choices"] == [] and usage_chunk["usage"]["completion_tokens"] == 6
    content = chunks[:-1]
    assert all("usage" not in chunk for chunk in content)
    assert all(chunk["object"] == "text_completion" for chunk in content)
    assert content[-1]["choices"][0]["finish_reason"] == "length"
    assert all(chunk["choices"][0]["finish_reason"] is None for chunk in content[:-1])
    assert "".join(chunk["choices"][0]["text"] for chunk in content) == plain["choices"][0]["text"]


def test_chat_stream_first_chunk_has_role(engine) -> None:
    with client(engine) as c:
        _, events = stream_chat(c, engine, 4)
    chunks = [json.loads(e) for e in events[:-1]]
    assert events[-1] == "[DONE]"
    assert chunks[0]["object"] == "chat.completion.chunk"
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert "usage" not in chunks[-1]


def test_errors(engine) -> None:
    with client(engine) as c:
        unknown = c.post("/v1/completions", json={"model": "nope", "prompt": "x", "max_tokens": 1})
        assert unknown.status_code == 404
        error = unknown.json()["error"]
        assert error == {
            "message": f"The model `nope` does not exist. Valid aliases: {engine.model}.",
            "type": "NotFoundError",
            "param": "model",
            "code": 404,
        }
        empty = c.post("/v1/completions", json={"model": engine.model, "prompt": "", "max_tokens": 1})
        assert empty.status_code == 400
        assert empty.json()["error"]["type"] == "BadRequestError"
        assert empty.json()["error"]["message"].startswith("Either prompt or prompt_embeds must be provided")
        too_long = c.post(
            "/v1/completions",
            json={"model": engine.model, "prompt": [7] * (engine.max_model_len + 1), "max_tokens": 1},
        )
        assert too_long.status_code == 400
        assert too_long.json()["error"]["message"].startswith(
            f"This model's maximum context length is {engine.max_model_len} tokens."
        )
        assert too_long.json()["error"]["code"] == 400
        assert too_long.json()["error"]["message"].endswith(
            f"(parameter=input_tokens, value={engine.max_model_len + 1})"
        )
        no_messages = c.post("/v1/chat/completions", json={"model": engine.model})
        assert no_messages.status_code == 400
        assert no_messages.json()["error"]["type"] == "Bad Request"
        assert no_messages.json()["error"]["param"] == "body.messages"
        assert no_messages.json()["error"]["message"].startswith("1 validation error:")
        assert "'msg': 'Field required'" in no_messages.json()["error"]["message"]
        bad_json = c.post("/v1/completions", content=b"{nope", headers={"content-type": "application/json"})
        assert bad_json.status_code == 400
        assert bad_json.json()["error"]["param"] == "body.1"
        assert "json_invalid" in bad_json.json()["error"]["message"]
        options = c.post(
            "/v1/completions",
            json={"model": engine.model, "prompt": "x", "stream_options": {"include_usage": True}},
        )
        assert options.status_code == 400
        assert options.json()["error"]["message"] == (
            "Stream options can only be defined when `stream=True`. (parameter=stream_options)"
        )
        assert c.get("/no/such/path").json() == {"detail": "Not Found"}
        assert c.get("/v1/completions").status_code == 405


COMPLETION_KEYS = {
    "id",
    "object",
    "created",
    "model",
    "choices",
    "service_tier",
    "system_fingerprint",
    "usage",
    "kv_transfer_params",
    "ec_transfer_params",
    "metrics",
}
COMPLETION_CHOICE_KEYS = {
    "index",
    "text",
    "logprobs",
    "finish_reason",
    "stop_reason",
    "token_ids",
    "prompt_logprobs",
    "prompt_token_ids",
    "routed_experts",
}
CHAT_KEYS = {
    "id",
    "object",
    "created",
    "model",
    "choices",
    "service_tier",
    "system_fingerprint",
    "usage",
    "prompt_logprobs",
    "prompt_token_ids",
    "prompt_text",
    "kv_transfer_params",
    "ec_transfer_params",
    "metrics",
}
CHAT_CHOICE_KEYS = {
    "index",
    "message",
    "logprobs",
    "finish_reason",
    "stop_reason",
    "token_ids",
    "routed_experts",
}
USAGE_KEYS = {
    "prompt_tokens",
    "total_tokens",
    "completion_tokens",
    "prompt_tokens_details",
    "completion_tokens_details",
}


def test_exact_body_keys(engine) -> None:
    with client(engine) as c:
        completion = complete(c, engine, "keys", max_tokens=2)
        chat = c.post(
            "/v1/chat/completions",
            json={"model": engine.model, "max_tokens": 2, "messages": [{"role": "user", "content": "keys"}]},
        ).json()
        _, events = stream_chat(
            c, engine, 2, stream_options={"include_usage": True, "continuous_usage_stats": True}
        )
        _, completion_events = stream_completion(c, engine, "keys", 2, stream_options={"include_usage": True})
    assert set(completion) == COMPLETION_KEYS
    assert set(completion["choices"][0]) == COMPLETION_CHOICE_KEYS
    assert set(completion["usage"]) == USAGE_KEYS
    assert set(chat) == CHAT_KEYS and set(chat["choices"][0]) == CHAT_CHOICE_KEYS
    assert set(chat["choices"][0]["message"]) == {
        "role",
        "content",
        "refusal",
        "annotations",
        "audio",
        "function_call",
        "reasoning",
    }
    chunks = [json.loads(e) for e in events[:-1]]
    assert set(chunks[0]) == {
        "id",
        "object",
        "created",
        "model",
        "choices",
        "usage",
        "prompt_token_ids",
        "prompt_text",
    }
    assert set(chunks[0]["choices"][0]) == {"index", "delta", "logprobs", "finish_reason"}
    assert set(chunks[1]["choices"][0]) == {"index", "delta", "logprobs", "finish_reason", "token_ids"}
    assert set(chunks[1]["usage"]) == {
        "prompt_tokens",
        "total_tokens",
        "completion_tokens",
        "completion_tokens_details",
    }
    assert set(chunks[-2]["choices"][0]) == {
        "index",
        "delta",
        "logprobs",
        "finish_reason",
        "stop_reason",
        "token_ids",
    }
    assert set(chunks[-1]) == {"id", "object", "created", "model", "choices", "usage", "system_fingerprint"}
    assert set(chunks[-1]["usage"]) == {"prompt_tokens", "total_tokens", "completion_tokens"}
    completion_chunks = [json.loads(e) for e in completion_events[:-1]]
    assert all(
        set(chunk["choices"][0])
        == {"index", "text", "logprobs", "finish_reason", "stop_reason", "prompt_token_ids", "token_ids"}
        for chunk in completion_chunks[:-1]
    )
    assert all("system_fingerprint" not in chunk for chunk in completion_chunks[:-1])
    assert completion_chunks[-1]["system_fingerprint"].startswith("vllm-0.32.0")


def test_max_tokens_is_capped_by_the_context(engine) -> None:
    with client(engine) as c:
        body = complete(c, engine, [7] * (engine.max_model_len - 3), max_tokens=50)
    assert body["usage"]["completion_tokens"] == 3
    assert body["choices"][0]["finish_reason"] == "length"


def test_metric_names_and_labels(engine) -> None:
    with client(engine) as c:
        complete(c, engine, "metrics warm-up", max_tokens=2)
        text = c.get("/metrics").text
    samples = metric_samples(text)
    for name in CORE_METRICS:
        assert name in samples, name
    running_labels = samples["vllm:num_requests_running"][0][0]
    assert 'engine="0"' in running_labels and f'model_name="{engine.model}"' in running_labels
    reasons = {labels for labels, _ in samples["vllm:num_requests_waiting_by_reason"]}
    assert any('reason="capacity"' in r for r in reasons) and any('reason="deferred"' in r for r in reasons)
    config = samples["vllm:cache_config_info"][0][0]
    assert f'block_size="{engine.block_size}"' in config and f'num_gpu_blocks="{engine.num_blocks}"' in config
    assert "vllm:gpu_cache_usage_perc" not in samples
    ttft_buckets = [labels for labels, _ in samples["vllm:time_to_first_token_seconds_bucket"]]
    assert any('le="0.001"' in b for b in ttft_buckets) and any('le="2560.0"' in b for b in ttft_buckets)
    lora = samples["vllm:lora_requests_info"][0][0]
    assert 'max_lora="2"' in lora and "running_lora_adapters=" in lora


def test_prefix_cache_counters_count_hits(engine) -> None:
    prompt = f"{os.urandom(4).hex()} " + "prefix cache counting " * 20
    with client(engine) as c:
        ids = tokenize(c, engine, prompt=prompt)
        assert len(ids) > 2 * engine.block_size
        before = c.get("/metrics").text
        complete(c, engine, prompt, max_tokens=1)
        complete(c, engine, prompt, max_tokens=1)
        after = c.get("/metrics").text
    queries = metric_value(after, "vllm:prefix_cache_queries_total") - metric_value(
        before, "vllm:prefix_cache_queries_total"
    )
    hits = metric_value(after, "vllm:prefix_cache_hits_total") - metric_value(
        before, "vllm:prefix_cache_hits_total"
    )
    assert queries == 2 * len(ids)
    assert hits == (len(ids) - 1) // engine.block_size * engine.block_size


def _decode(frames: list[bytes], topic: str) -> tuple[int, list[dict[str, Any]]]:
    assert len(frames) == 3 and frames[0] == topic.encode() and len(frames[1]) == 8
    ts, events, rank = msgspec.msgpack.decode(frames[2])
    assert isinstance(ts, float) and rank == 0
    return int.from_bytes(frames[1], "big"), events


def test_kv_events_hashes_and_replay(engine) -> None:
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt_string(zmq.SUBSCRIBE, engine.topic)
    sub.connect(engine.kv_events_endpoint)
    try:
        time.sleep(0.5)
        prompt = f"{os.urandom(6).hex()} " + "the quick brown fox jumps over the lazy dog " * 12
        with client(engine) as c:
            ids = tokenize(c, engine, prompt=prompt)
            complete(c, engine, prompt, max_tokens=1)
        expected = [published_block_hash(d) for d in vllm_block_digests(ids, engine.block_size)]
        published: list[int] = []
        seqs: list[int] = []
        deadline = time.monotonic() + EVENT_WAIT_S
        while not set(expected) <= set(published):
            assert sub.poll(int(max(0.0, deadline - time.monotonic()) * 1000)), "no KV events in time"
            seq, events = _decode(sub.recv_multipart(), engine.topic)
            seqs.append(seq)
            for event in events:
                assert "type" in event
                if event["type"] == "BlockStored":
                    assert event["medium"] == "GPU" and event["block_size"] == engine.block_size
                    assert len(event["token_ids"]) == engine.block_size * len(event["block_hashes"])
                    assert {"parent_block_hash", "lora_id", "lora_name"} <= set(event)
                    if event["token_ids"][: engine.block_size] == ids[: engine.block_size]:
                        assert event["parent_block_hash"] is None
                        published.extend(event["block_hashes"])
        assert published == expected
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
    finally:
        sub.close()
    dealer = ctx.socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    dealer.connect(engine.kv_replay_endpoint)
    try:
        dealer.send_multipart([b"", seqs[0].to_bytes(8, "big")])
        replayed: list[int] = []
        while True:
            assert dealer.poll(int(EVENT_WAIT_S * 1000)), "no replay answer"
            frames = dealer.recv_multipart()
            assert frames[0] == b""
            if frames[2] == REPLAY_END_SEQ:
                assert frames[1] == b"" and frames[3] == b""
                break
            replayed.append(_decode(frames[1:], engine.topic)[0])
        assert replayed[: len(seqs)] == seqs
    finally:
        dealer.close()
        ctx.term()


def test_lora_load_unload(engine, request: pytest.FixtureRequest) -> None:
    name = f"conf-{request.node.callspec.id}-{os.urandom(2).hex()}"
    path = str(engine.lora_dirs["lora-a"])
    with client(engine) as c:
        loaded = c.post("/v1/load_lora_adapter", json={"lora_name": name, "lora_path": path})
        assert loaded.status_code == 200, loaded.text
        assert loaded.text == f"Success: LoRA adapter '{name}' added successfully."
        try:
            cards = {card["id"]: card for card in c.get("/v1/models").json()["data"]}
            assert cards[name]["parent"] == engine.model and cards[name]["root"] == path
            again = c.post("/v1/load_lora_adapter", json={"lora_name": name, "lora_path": path})
            assert again.status_code == 400
            assert again.json()["error"]["type"] == "InvalidUserInput"
            assert again.json()["error"]["message"].startswith(
                f"The lora adapter '{name}' has already been loaded."
            )
            served = complete(c, engine, "adapter request", max_tokens=2, model=name)
            assert served["model"] == name
        finally:
            unloaded = c.post("/v1/unload_lora_adapter", json={"lora_name": name})
        assert unloaded.status_code == 200
        assert unloaded.text == f"Success: LoRA adapter '{name}' removed successfully."
        no_field = c.post("/v1/unload_lora_adapter", json={})
        assert no_field.status_code == 400 and no_field.json()["error"]["param"] == "body.lora_name"
        missing = c.post("/v1/unload_lora_adapter", json={"lora_name": name})
        assert missing.status_code == 404
        assert missing.json()["error"]["message"] == f"The lora adapter '{name}' cannot be found."
        conflict = c.post("/v1/load_lora_adapter", json={"lora_name": engine.model, "lora_path": path})
        assert conflict.status_code == 400
        empty = c.post("/v1/load_lora_adapter", json={"lora_name": "", "lora_path": path})
        assert empty.status_code == 400
        assert empty.json()["error"]["message"] == "Both 'lora_name' and 'lora_path' must be provided."
        bad = c.post("/v1/load_lora_adapter", json={"lora_name": name, "lora_path": "/nonexistent/adapter"})
        assert bad.status_code == 404 and bad.json()["error"]["type"] == "NotFoundError"


async def test_saturation_queues_fills_cache_and_preempts(engine) -> None:
    """24 concurrent 400-token prompts overflow the 64-block cache on either engine."""
    async with httpx.AsyncClient(base_url=engine.base_url, timeout=300) as c:
        before = (await c.get("/metrics")).text
        salt = os.urandom(2)[0] % 200
        prompts = [[100 + salt + i] * 400 for i in range(24)]
        tasks = [
            asyncio.create_task(
                c.post(
                    "/v1/completions",
                    json={
                        "model": engine.model,
                        "prompt": p,
                        "max_tokens": 120,
                        "ignore_eos": True,
                        "temperature": 0,
                    },
                )
            )
            for p in prompts
        ]
        waiting, usage = await peak_load(c, tasks)
        responses = await asyncio.gather(*tasks)
        after = (await c.get("/metrics")).text
    assert all(r.status_code == 200 for r in responses)
    # A busy host can answer /metrics only once the burst has drained, so the queue-time histogram, which
    # does not depend on when it is read, also counts: a request that waited 0.3 s or more was queued.
    queue = "vllm:request_queue_time_seconds"
    queued = histogram_above(after, queue, "0.3") - histogram_above(before, queue, "0.3")
    assert max(waiting, queued) >= 5
    if waiting >= 5:  # a poll landed during the burst, so it also saw the cache near full
        assert usage > 0.8
    preemptions = metric_value(after, "vllm:num_preemptions_total") - metric_value(
        before, "vllm:num_preemptions_total"
    )
    assert preemptions > 0


def test_n_choices(engine) -> None:
    with client(engine) as c:
        greedy = c.post(
            "/v1/completions", json={"model": engine.model, "prompt": "x", "n": 2, "temperature": 0}
        )
        assert greedy.status_code == 400
        assert greedy.json()["error"]["message"] == "n must be 1 when using greedy sampling, got 2."
        body = complete(c, engine, "several choices", max_tokens=3, n=2, temperature=1.0)
        assert [choice["index"] for choice in body["choices"]] == [0, 1]
        assert body["usage"]["completion_tokens"] == 6
        _, events = stream_chat(c, engine, 3, n=2, stream_options={"include_usage": True})
    chunks = [json.loads(e) for e in events[:-1]]
    finished = {chunk["choices"][0]["index"] for chunk in chunks[:-1] if chunk["choices"][0]["finish_reason"]}
    roles = {chunk["choices"][0]["index"] for chunk in chunks[:-1] if "role" in chunk["choices"][0]["delta"]}
    assert finished == roles == {0, 1}
    assert chunks[-1]["usage"]["completion_tokens"] == 6


def test_lora_kv_events_carry_the_adapter_and_recompute(engine, request: pytest.FixtureRequest) -> None:
    from brixmesh.engine_sim.hashing import BlockHasher

    name = f"kvlora-{request.node.callspec.id}-{os.urandom(2).hex()}"
    path = str(engine.lora_dirs["lora-b"])
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt_string(zmq.SUBSCRIBE, engine.topic)
    sub.connect(engine.kv_events_endpoint)
    try:
        with client(engine) as c:
            assert (
                c.post("/v1/load_lora_adapter", json={"lora_name": name, "lora_path": path}).status_code
                == 200
            )
            try:
                time.sleep(0.5)
                prompt = f"{os.urandom(6).hex()} " + "adapters have their own cache lines " * 10
                ids = tokenize(c, engine, prompt=prompt)
                complete(c, engine, prompt, max_tokens=1, model=name)
            finally:
                c.post("/v1/unload_lora_adapter", json={"lora_name": name})
        hasher = BlockHasher("sha256", seed="0", use_int_hashes=True)
        expected = [
            hasher.external(d)
            for d in hasher.hash_blocks(ids, engine.block_size, lora_name=name, lora_path=path)
        ]
        stored: list[dict[str, Any]] = []
        deadline = time.monotonic() + EVENT_WAIT_S
        while sum(len(e["block_hashes"]) for e in stored) < len(expected):
            assert sub.poll(int(max(0.0, deadline - time.monotonic()) * 1000)), "no LoRA KV events in time"
            _, events = _decode(sub.recv_multipart(), engine.topic)
            stored += [e for e in events if e["type"] == "BlockStored" and e["lora_name"] == name]
    finally:
        sub.close()
        ctx.term()
    assert all(isinstance(e["lora_id"], int) and e["lora_id"] >= 1 for e in stored)
    assert all(extra == [name] for e in stored for extra in e["extra_keys"])
    assert [h for e in stored for h in e["block_hashes"]] == expected


def test_reset_prefix_cache_announces_all_blocks_cleared(engine) -> None:
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt_string(zmq.SUBSCRIBE, engine.topic)
    sub.connect(engine.kv_events_endpoint)
    try:
        time.sleep(0.5)
        with client(engine) as c:
            reset = c.post("/reset_prefix_cache")
            assert reset.status_code == 200
            assert reset.json() == {"success": True}
            # vLLM publishes the clear lazily, with the next engine step
            complete(c, engine, f"{os.urandom(4).hex()} after the reset", max_tokens=1)
        kinds: list[str] = []
        deadline = time.monotonic() + EVENT_WAIT_S
        while "AllBlocksCleared" not in kinds:
            assert sub.poll(int(max(0.0, deadline - time.monotonic()) * 1000)), (
                f"no AllBlocksCleared: {kinds}"
            )
            kinds += [event["type"] for event in _decode(sub.recv_multipart(), engine.topic)[1]]
    finally:
        sub.close()
        ctx.term()


def test_stop_strings_and_stop_token_ids(engine) -> None:
    with client(engine) as c:
        plain = complete(c, engine, "stop me somewhere", max_tokens=20, return_token_ids=True)
        text = plain["choices"][0]["text"]
        ids = plain["choices"][0]["token_ids"]
        assert len(ids) == 20
        stop = text[len(text) // 2 : len(text) // 2 + 2]
        stopped = complete(c, engine, "stop me somewhere", max_tokens=20, stop=[stop])
        choice = stopped["choices"][0]
        assert choice["finish_reason"] == "stop" and choice["stop_reason"] == stop
        assert choice["text"] == text[: text.find(stop)]
        position = next(i for i in range(3, 20) if ids[i] not in ids[:i])
        by_id = complete(c, engine, "stop me somewhere", max_tokens=20, stop_token_ids=[ids[position]])
        assert by_id["choices"][0]["finish_reason"] == "stop"
        assert by_id["choices"][0]["stop_reason"] == ids[position]
        assert by_id["usage"]["completion_tokens"] == position + 1


def test_logprobs_shapes(engine) -> None:
    with client(engine) as c:
        body = complete(c, engine, "Hello", max_tokens=2, logprobs=2)
        chat = c.post(
            "/v1/chat/completions",
            json={
                "model": engine.model,
                "messages": [{"role": "user", "content": "hi"}],
                "max_tokens": 2,
                "ignore_eos": True,
                "logprobs": True,
                "top_logprobs": 2,
            },
        ).json()
        _, events = stream_completion(c, engine, "Hello", 2, logprobs=1)
    lp = body["choices"][0]["logprobs"]
    assert set(lp) == {"text_offset", "token_logprobs", "tokens", "top_logprobs"}
    assert len(lp["tokens"]) == len(lp["token_logprobs"]) == len(lp["top_logprobs"]) == 2
    assert lp["text_offset"][0] == 0 and all(v < 0 for v in lp["token_logprobs"])
    assert lp["tokens"][0] in lp["top_logprobs"][0]
    content = chat["choices"][0]["logprobs"]["content"]
    assert len(content) == 2
    assert set(content[0]) == {"token", "logprob", "bytes", "top_logprobs"}
    assert len(content[0]["top_logprobs"]) == 2
    assert set(content[0]["top_logprobs"][0]) == {"token", "logprob", "bytes"}
    first = json.loads(events[0])["choices"][0]["logprobs"]
    assert set(first) == {"text_offset", "token_logprobs", "tokens", "top_logprobs"} and first[
        "text_offset"
    ] == [0]
