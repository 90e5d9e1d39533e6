"""Every model route of vLLM 0.32's server behind the router, against simulated engines: the Responses API,
tokenize/detokenize, score and rerank (with vLLM's aliases), pooling, classify; the official openai client
with streaming, ``n > 1`` and tools; ``vllm bench serve``; errors in OpenAI's shape."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from brixmesh.cli.mesh import bundled_tokenizer_dirs
from brixmesh.common.servers import NatsServer
from brixmesh.common.vllm_cpu import find_install
from tests.engine_sim.sim_engine import SimEngine
from tests.router.harness import MODEL, endpoints_file, router_process
from tests.service_proc import ServiceProcess


@pytest.fixture(scope="module")
def router(
    nats_server: NatsServer, sims: SimEngine, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServiceProcess]:
    path = endpoints_file(tmp_path_factory.mktemp("router"), sims.urls)
    with router_process(nats_server.url, endpoints=path) as process:
        yield process


def _post(router: ServiceProcess, path: str, body: dict) -> httpx.Response:
    response = httpx.post(f"{router.url}{path}", json=body, timeout=30)
    assert response.headers.get("x-brixmesh-pod", "").startswith("pod-"), (path, response.text)
    return response


def test_responses_api_with_the_openai_client(router: ServiceProcess) -> None:
    client = openai.OpenAI(base_url=f"{router.url}/v1", api_key="unused", max_retries=0)
    reply = client.responses.create(model=MODEL, input="Say hello", max_output_tokens=6,
                                    extra_body={"ignore_eos": True})
    assert reply.status == "incomplete" and reply.output_text and reply.usage.output_tokens == 6
    items = client.responses.create(model=MODEL, instructions="Be brief.", max_output_tokens=4,
                                    input=[{"role": "user", "content": "hi"}])
    assert items.usage.input_tokens > reply.usage.input_tokens - 10 and items.output[0].type == "message"

    events = list(client.responses.create(model=MODEL, input="Say hello", max_output_tokens=6, stream=True,
                                          extra_body={"ignore_eos": True}))
    kinds = [event.type for event in events]
    assert kinds[0] == "response.created" and kinds[-1] == "response.incomplete"
    streamed = "".join(event.delta for event in events if event.type == "response.output_text.delta")
    assert streamed == events[-1].response.output_text == reply.output_text  # same seed, same text


def test_tokenize_and_detokenize_round_trip(router: ServiceProcess) -> None:
    tokens = _post(router, "/tokenize", {"model": MODEL, "prompt": "Hello world"}).json()
    assert tokens["count"] == len(tokens["tokens"]) > 1
    messages = [{"role": "user", "content": "hi"}]
    chat = _post(router, "/tokenize", {"model": MODEL, "messages": messages}).json()
    assert chat["count"] > 2
    text = _post(router, "/detokenize", {"model": MODEL, "tokens": tokens["tokens"]}).json()["prompt"]
    assert text.endswith("Hello world")


@pytest.mark.parametrize("path", ["/score", "/v1/score"])
def test_score(router: ServiceProcess, path: str) -> None:
    body = {"model": MODEL, "text_1": "a cat", "text_2": ["a cat", "quantum flux"]}
    answer = _post(router, path, body).json()
    same, other = (d["score"] for d in answer["data"])
    assert answer["object"] == "list" and same == pytest.approx(1.0) and other < same


@pytest.mark.parametrize("path", ["/rerank", "/v1/rerank", "/v2/rerank"])
def test_rerank(router: ServiceProcess, path: str) -> None:
    body = {"model": MODEL, "query": "a cat", "documents": ["quantum flux", "a cat", "dog"], "top_n": 2}
    results = _post(router, path, body).json()["results"]
    assert [r["index"] for r in results][0] == 1 and len(results) == 2
    assert results[0]["document"]["text"] == "a cat" and results[0]["relevance_score"] == pytest.approx(1.0)


def test_embeddings_pooling_and_classify(router: ServiceProcess) -> None:
    client = openai.OpenAI(base_url=f"{router.url}/v1", api_key="unused", max_retries=0)
    embedded = client.embeddings.create(model=MODEL, input=["hello", "world"])
    assert len(embedded.data) == 2 and embedded.usage.prompt_tokens > 0
    pooled = _post(router, "/pooling", {"model": MODEL, "input": "hello"}).json()
    assert pooled["data"][0]["object"] == "pooling"
    assert pooled["data"][0]["data"] == pytest.approx(embedded.data[0].embedding)
    classified = _post(router, "/classify", {"model": MODEL, "input": ["hello"]}).json()
    assert sum(classified["data"][0]["probs"]) == pytest.approx(1.0)


@pytest.mark.parametrize("path", ["/tokenize", "/v1/score", "/rerank", "/pooling", "/v1/responses"])
def test_errors_are_openai_shaped(router: ServiceProcess, path: str) -> None:
    ghost = httpx.post(f"{router.url}{path}", json={"model": "ghost", "input": "x"})
    assert ghost.status_code == 404 and ghost.json()["error"]["code"] == "model_not_found"
    unnamed = httpx.post(f"{router.url}{path}", json={"input": "x"})
    assert unnamed.status_code == 400 and unnamed.json()["error"]["param"] == "model"
    wrong_method = httpx.get(f"{router.url}{path}")
    assert wrong_method.status_code == 405 and wrong_method.json()["error"]["type"] == "invalid_request_error"


def test_engine_errors_pass_through_in_openai_shape(router: ServiceProcess) -> None:
    missing = httpx.post(f"{router.url}/v1/rerank", json={"model": MODEL, "documents": ["a"]})
    assert missing.status_code == 400 and missing.json()["error"]["param"] == "body.query"


def test_openai_client_streams_n_choices_and_tools(router: ServiceProcess) -> None:
    client = openai.OpenAI(base_url=f"{router.url}/v1", api_key="unused", max_retries=0)
    chunks = list(client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=4, n=3, stream=True,
        extra_body={"ignore_eos": True}, stream_options={"include_usage": True},
    ))
    finished = {c.choices[0].index for c in chunks if c.choices and c.choices[0].finish_reason == "length"}
    assert finished == {0, 1, 2} and chunks[-1].usage.completion_tokens == 12
    weather = {"type": "function", "function": {"name": "weather", "description": "Weather of a city",
                                                "parameters": {"type": "object", "properties": {
                                                    "city": {"type": "string"}}}}}  # fmt: skip
    reply = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Paris?"}],
                                           tools=[weather], tool_choice="auto", max_tokens=4)
    assert reply.choices[0].message.role == "assistant" and reply.usage.completion_tokens >= 1


@pytest.mark.vllm
def test_vllm_bench_serve_runs_through_the_router(router: ServiceProcess, tmp_path: Path) -> None:
    """vLLM's own load generator, unchanged, against the router: every request succeeds, streamed."""
    tokenizer = Path(bundled_tokenizer_dirs(MODEL)[MODEL])
    result = subprocess.run(
        [str(find_install().vllm_bin), "bench", "serve", "--backend", "openai-chat", "--base-url", router.url,
         "--endpoint", "/v1/chat/completions", "--model", MODEL, "--tokenizer", str(tokenizer),
         "--dataset-name", "random", "--random-input-len", "32", "--random-output-len", "8",
         "--ignore-eos", "--num-prompts", "20",
         "--save-result", "--result-dir", str(tmp_path), "--result-filename", "run.json"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    run = json.loads((tmp_path / "run.json").read_text())
    assert (run["completed"], run["failed"]) == (20, 0) and run["total_output_tokens"] == 20 * 8
