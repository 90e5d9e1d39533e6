"""Property-based fuzz of a real router process with a simulated engine behind it, driven by the OpenAPI
document the router serves: whatever the body, headers, method or path, the answer is never a 5xx and
every error is OpenAI-shaped JSON."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from brixmesh.common.servers import NatsServer
from tests.engine_sim.sim_engine import sim_engine
from tests.router.harness import MODEL, endpoints_file, router_process

ROUTES = {
    "/v1/chat/completions": "ChatCompletionRequest",
    "/v1/completions": "CompletionRequest",
    "/v1/embeddings": "EmbeddingRequest",
    "/v1/responses": "ResponseRequest",
    "/tokenize": "TokenizeRequest",
    "/detokenize": "DetokenizeRequest",
    "/v1/score": "ScoreRequest",
    "/rerank": "RerankRequest",
    "/pooling": "PoolingRequest",
    "/classify": "PoolingRequest",
}
FUZZ = settings(
    max_examples=400,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.fixture(scope="module")
def client(nats_server: NatsServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    """A router (default strategy, KV-aware included) before one engine that answers at once."""
    with sim_engine(["--time-to-first-token", "0", "--inter-token-latency", "0"], kv_events=False) as engine:
        loaded = httpx.post(
            f"{engine.base_url}/v1/load_lora_adapter",
            json={"lora_name": "lora-a", "lora_path": str(engine.lora_dirs["lora-a"])},
        )
        assert loaded.status_code == 200, loaded.text
        path = endpoints_file(tmp_path_factory.mktemp("fuzz"), [engine.base_url])
        with router_process(nats_server.url, endpoints=path, max_body_bytes=100_000) as router:
            with httpx.Client(base_url=router.url, timeout=30) as http:
                yield http


@pytest.fixture(scope="module")
def document(client: httpx.Client) -> dict[str, Any]:
    response = client.get("/openapi.json")
    assert response.status_code == 200
    return response.json()


def test_openapi_document_describes_the_openai_routes(document: dict[str, Any]) -> None:
    paths = document["paths"]
    assert set(ROUTES) | {"/v1/models"} <= set(paths)
    for path, schema in ROUTES.items():
        body = paths[path]["post"]["requestBody"]["content"]["application/json"]["schema"]
        assert body == {"$ref": f"#/components/schemas/{schema}"}
        assert "model" in document["components"]["schemas"][schema]["required"]
    assert paths["/v1/models"]["get"]["responses"]["200"]


def _assert_no_server_error(response: httpx.Response) -> None:
    """No 5xx; the router's own errors are OpenAI-shaped (an engine's 4xx is relayed as it was written)."""
    assert response.status_code < 500, (response.status_code, response.text[:500], response.headers)
    if response.status_code >= 400 and "x-brixmesh-pod" not in response.headers:
        error = response.json()["error"]
        assert isinstance(error["message"], str) and isinstance(error["type"], str), response.text[:300]


_header_text = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40).map(str.strip)
_headers = st.fixed_dictionaries(
    {},
    optional={
        "x-request-id": _header_text,
        "routing-strategy": _header_text | st.sampled_from(["round-robin", "vtc", "session", "kv-aware:0"]),
        "x-session-id": _header_text,
        "user": _header_text,
    },
)
_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5),
    max_leaves=25,
)


def _from_schema(schema: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Values valid for the JSON-schema subset the router's document uses (objects get their required
    properties and some of the optional ones)."""
    if "anyOf" in schema:
        return st.one_of([_from_schema(option) for option in schema["anyOf"]])
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    if "const" in schema:
        return st.just(schema["const"])
    kind = schema.get("type")
    if isinstance(kind, list):
        return st.one_of([_from_schema({**schema, "type": one}) for one in kind])
    if kind == "object":
        properties = {name: _from_schema(sub) for name, sub in schema.get("properties", {}).items()}
        required = set(schema.get("required", ()))
        return st.fixed_dictionaries(
            {name: value for name, value in properties.items() if name in required},
            optional={name: value for name, value in properties.items() if name not in required},
        )
    if kind == "array":
        return st.lists(
            _from_schema(schema.get("items", {})),
            min_size=schema.get("minItems", 0),
            max_size=schema.get("maxItems", 5),
        )
    if kind == "string":
        return st.text(min_size=schema.get("minLength", 0), max_size=40)
    if kind == "integer":
        return st.integers(schema.get("minimum"), schema.get("maximum"))
    if kind == "number":
        low = schema.get("minimum", schema.get("exclusiveMinimum"))
        return st.floats(
            low,
            schema.get("maximum"),
            exclude_min="exclusiveMinimum" in schema,
            allow_nan=False,
            allow_infinity=False,
        )
    if kind == "boolean":
        return st.booleans()
    if kind == "null":
        return st.none()
    return _json_values


@st.composite
def _requests(draw: st.DrawFn, schemas: dict[str, Any]) -> tuple[str, dict[str, Any], dict[str, str]]:
    """A body valid for the route's schema (mostly for a served model, so that it reaches the engine), with
    arbitrary extra fields now and then."""
    path = draw(st.sampled_from(sorted(ROUTES)))
    body = draw(_from_schema(schemas[ROUTES[path]]))
    if draw(st.integers(0, 4)):
        body["model"] = draw(st.sampled_from([MODEL, "lora-a"]))
    if "max_tokens" in body or draw(st.booleans()):
        body["max_tokens"] = draw(st.integers(1, 64))  # bounded: a fuzz of valid requests, not a load test
    body.pop("max_completion_tokens", None)
    body.update(draw(st.dictionaries(st.text(max_size=8), _json_values, max_size=2)))
    if draw(st.booleans()):  # one field, at the top or in a message or content part, of another type
        _mutate(draw, body)
    return path, body, draw(_headers)


def _mutate(draw: st.DrawFn, value: Any) -> None:
    while True:
        keys = list(value) if isinstance(value, dict) else list(range(len(value)))
        if not keys:
            return
        key = draw(st.sampled_from(keys))
        if isinstance(value[key], (dict, list)) and value[key] and draw(st.booleans()):
            value = value[key]
            continue
        value[key] = draw(_json_values)
        return


def test_valid_requests_never_get_a_server_error(client: httpx.Client, document: dict[str, Any]) -> None:
    schemas = {name: schema for name, schema in document["components"]["schemas"].items()}

    @FUZZ
    @given(_requests(schemas))
    def check(request: tuple[str, dict[str, Any], dict[str, str]]) -> None:
        path, body, headers = request
        _assert_no_server_error(client.post(path, json=body, headers=headers))

    check()


@FUZZ
@given(
    path=st.sampled_from([*ROUTES, "/v1/models", "/v1/other", "/v1/"]),
    method=st.sampled_from(["POST", "POST", "POST", "GET", "PUT", "DELETE"]),
    body=st.binary(max_size=300) | _json_values.map(lambda value: json.dumps(value).encode()),
    headers=_headers,
)
def test_arbitrary_requests_never_get_a_server_error(
    client: httpx.Client, path: str, method: str, body: bytes, headers: dict[str, str]
) -> None:
    _assert_no_server_error(client.request(method, path, content=body, headers=headers))


@pytest.mark.parametrize(
    "body",
    [
        {"model": MODEL, "prompt": [1 << 32]},  # the simulator answered 500, where vLLM answers 400
        {"model": MODEL, "prompt": [-1]},
        {"model": MODEL, "prompt": "x", "seed": 1 << 63},  # 500 from the simulator too
        {"model": MODEL, "messages": [{"role": None}]},
        {"model": MODEL, "messages": [{"role": "user", "content": [{"type": "text", "text": 1}]}]},
    ],
    ids=["token-id-too-large", "token-id-negative", "seed-too-large", "role-not-a-string", "text-not-text"],
)
def test_fuzz_findings_are_client_errors(client: httpx.Client, body: dict[str, Any]) -> None:
    path = "/v1/chat/completions" if "messages" in body else "/v1/completions"
    response = client.post(path, json=body)
    assert response.status_code == 400, response.text


@pytest.mark.parametrize(
    "body", [b"[" * 50_000, b'{"model":' + b"[" * 5_000 + b"]" * 5_000 + b"}"], ids=["unclosed", "closed"]
)
def test_deeply_nested_json_is_a_client_error(client: httpx.Client, body: bytes) -> None:
    response = client.post("/v1/completions", content=body)
    assert response.status_code == 400 and response.json()["error"]["type"] == "invalid_request_error"
