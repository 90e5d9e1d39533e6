"""The official openai client against a real router in front of simulated engines, and the request surface:
headers, models, every client error case."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from brixmesh.common.servers import NatsServer
from tests.engine_sim.sim_engine import SimEngine
from tests.router.harness import MODEL, endpoints_file, router_process
from tests.service_proc import ServiceProcess

MESSAGES = [{"role": "user", "content": "Say hello"}]
NO_EOS = {"ignore_eos": True}  # the simulated model may draw EOS early; exact token counts are asserted


@pytest.fixture(scope="module")
def router(
    nats_server: NatsServer, sims: SimEngine, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServiceProcess]:
    path = endpoints_file(tmp_path_factory.mktemp("router"), sims.urls)
    with router_process(nats_server.url, endpoints=path, max_body_bytes=200_000) as process:
        yield process


def test_sync_client_chat_and_completions(router: ServiceProcess) -> None:
    client = openai.OpenAI(base_url=f"{router.url}/v1", api_key="unused")
    chat = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=5, extra_body=NO_EOS)
    assert (
        chat.choices[0].message.role == "assistant"
        and chat.usage is not None
        and chat.usage.completion_tokens == 5
    )
    completion = client.completions.create(
        model=MODEL, prompt="Once upon a time", max_tokens=4, extra_body=NO_EOS
    )
    assert completion.object == "text_completion" and completion.usage.completion_tokens == 4
    stream = client.chat.completions.create(
        model=MODEL,
        messages=MESSAGES,
        max_tokens=6,
        stream=True,
        extra_body=NO_EOS,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 6
    assert any(c.choices and c.choices[0].finish_reason == "length" for c in chunks)


async def test_async_client_streaming_and_not(router: ServiceProcess) -> None:
    client = openai.AsyncOpenAI(base_url=f"{router.url}/v1", api_key="unused")
    chat = await client.chat.completions.create(
        model=MODEL, messages=MESSAGES, max_tokens=3, extra_body=NO_EOS
    )
    assert chat.choices[0].finish_reason == "length"
    stream = await client.completions.create(
        model=MODEL, prompt="abc", max_tokens=5, stream=True, extra_body=NO_EOS
    )
    texts = [chunk.choices[0].text async for chunk in stream if chunk.choices]
    assert len(texts) >= 5
    adapter = await client.chat.completions.create(
        model="lora-a", messages=MESSAGES, max_tokens=2, extra_body=NO_EOS
    )
    assert adapter.model == "lora-a"
    await client.close()


def test_response_headers_and_request_id_passthrough(router: ServiceProcess) -> None:
    body = {"model": MODEL, "prompt": "hi", "max_tokens": 1}
    given = httpx.post(
        f"{router.url}/v1/completions",
        json=body,
        headers={"x-request-id": "req-42", "routing-strategy": "round-robin"},
    )
    assert given.status_code == 200
    assert given.headers["x-request-id"] == "req-42"
    assert given.headers["x-brixmesh-pod"] in {"pod-0", "pod-1"}
    assert given.headers["x-brixmesh-strategy"] == "round-robin"
    generated = httpx.post(
        f"{router.url}/v1/completions",
        json=body,
        headers={"routing-strategy": "prefix-cache:3,least-request:2"},
    )
    assert len(generated.headers["x-request-id"]) == 32
    assert generated.headers["x-brixmesh-strategy"] == "prefix-cache:3,least-request:2"


def test_models_lists_base_models_and_adapters(router: ServiceProcess) -> None:
    models = openai.OpenAI(base_url=f"{router.url}/v1", api_key="x").models.list()
    by_id = {m.id: m for m in models.data}
    assert set(by_id) == {MODEL, "lora-a"}
    assert by_id["lora-a"].model_extra["parent"] == MODEL


def test_session_header_pins_a_pod(router: ServiceProcess) -> None:
    def pods_for(session: str) -> set[str]:
        return {
            httpx.post(
                f"{router.url}/v1/completions",
                json={"model": MODEL, "prompt": "x", "max_tokens": 1},
                headers={"routing-strategy": "session", "x-session-id": session},
            ).headers["x-brixmesh-pod"]
            for _ in range(4)
        }

    pinned = [pods_for(f"session-{i}") for i in range(8)]
    assert all(len(pods) == 1 for pods in pinned)
    assert set().union(*pinned) == {"pod-0", "pod-1"}  # different sessions spread over the pods


def test_every_round_robin_pod_is_used(router: ServiceProcess) -> None:
    pods = {
        httpx.post(
            f"{router.url}/v1/completions",
            json={"model": MODEL, "prompt": "x", "max_tokens": 1},
            headers={"routing-strategy": "round-robin"},
        ).headers["x-brixmesh-pod"]
        for _ in range(4)
    }
    assert pods == {"pod-0", "pod-1"}


@pytest.mark.parametrize(
    ("path", "content", "headers", "status", "param"),
    [
        ("/v1/chat/completions", b"{not json", {}, 400, None),
        ("/v1/chat/completions", b'{"model": "\xff"}', {}, 400, None),  # invalid UTF-8
        ("/v1/chat/completions", b"[1, 2]", {}, 400, None),
        ("/v1/chat/completions", b"", {}, 400, None),
        ("/v1/chat/completions", b'{"messages": [{"role": "user", "content": "x"}]}', {}, 400, "model"),
        ("/v1/chat/completions", b'{"model": "tiny-llama"}', {}, 400, "messages"),
        ("/v1/completions", b'{"model": "tiny-llama", "prompt": 7}', {}, 400, "prompt"),
        ("/v1/completions", b'{"model": "tiny-llama", "prompt": "x", "stream": "yes"}', {}, 400, "stream"),
        (
            "/v1/completions",
            b'{"model": "tiny-llama", "prompt": "x"}',
            {"routing-strategy": "nope"},
            400,
            "routing-strategy",
        ),
        (
            "/v1/completions",
            b'{"model": "tiny-llama", "prompt": "x"}',
            {"routing-strategy": "random:-2"},
            400,
            "routing-strategy",
        ),
        ("/v1/completions", b'{"model": "no-such-model", "prompt": "x"}', {}, 404, "model"),
        ("/v1/completions", b'{"model": "tiny-llama", "prompt": "' + b"x" * 300_000 + b'"}', {}, 413, None),
        ("/v1/nothing-here", b"{}", {}, 404, None),
    ],
)
def test_client_errors_are_openai_shaped(
    router: ServiceProcess, path: str, content: bytes, headers: dict[str, str], status: int, param: str | None
) -> None:
    response = httpx.post(f"{router.url}{path}", content=content, headers=headers)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    assert error["param"] == param
    assert response.headers["x-request-id"]


def test_wrong_method_and_openai_client_errors(router: ServiceProcess) -> None:
    assert httpx.get(f"{router.url}/v1/chat/completions").status_code == 405
    assert httpx.post(f"{router.url}/v1/models").status_code == 405
    client = openai.OpenAI(base_url=f"{router.url}/v1", api_key="x", max_retries=0)
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="ghost", prompt="x")
    with pytest.raises(openai.BadRequestError) as raised:  # engine errors pass through unchanged
        client.completions.create(model=MODEL, prompt="x" * 5000, max_tokens=1)
    assert "context length" in str(raised.value)


def test_shell_routes_still_served(router: ServiceProcess) -> None:
    assert httpx.get(f"{router.url}/healthz").json()["service"] == "router"
    assert httpx.get(f"{router.url}/health").status_code == 200  # static endpoints: it can route
    metrics = httpx.get(f"{router.url}/metrics").text
    assert "brixmesh_router_requests_total" in metrics and "brixmesh_router_decision_seconds" in metrics


def test_health_is_503_until_a_pod_is_ready(nats_server: NatsServer) -> None:
    with router_process(nats_server.url) as empty:
        health = httpx.get(f"{empty.url}/health")
        assert health.status_code == 503 and health.json() == {"status": "no ready pod"}
        assert httpx.get(f"{empty.url}/readyz").status_code == 200  # started, but has nowhere to route


def test_embeddings_are_forwarded(nats_server: NatsServer, tmp_path: Path) -> None:
    from tests.router.fake_engine import fake_engine

    with (
        fake_engine() as url,
        router_process(nats_server.url, endpoints=endpoints_file(tmp_path, [url])) as r,
    ):
        client = openai.OpenAI(base_url=f"{r.url}/v1", api_key="x")
        result = client.embeddings.create(model=MODEL, input="hello")
        assert len(result.data[0].embedding) == 4
