"""Turn an OpenAI request body into a :class:`RequestContext`, rejecting what no engine could serve."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec
from brixmesh.common.messages import PAYLOAD_ERRORS

from brixmesh.router.http.errors import bad_request
from brixmesh.router.routing.context import ApiKind, RequestContext

_decoder = msgspec.json.Decoder()

API_BY_PATH: dict[str, ApiKind] = {
    "/v1/chat/completions": "chat",
    "/v1/completions": "completions",
    "/v1/embeddings": "embeddings",
    "/v1/responses": "responses",
    "/tokenize": "tokenize",
    "/detokenize": "detokenize",
    "/score": "score",
    "/v1/score": "score",
    "/rerank": "rerank",
    "/v1/rerank": "rerank",
    "/v2/rerank": "rerank",
    "/pooling": "pooling",
    "/classify": "classify",
}
"""Every POST route of vLLM 0.32's server that serves a model named in its body (forwarded to the same path);
vLLM's aliases (``/score``, ``/rerank``, ``/v2/rerank``) included."""
STREAMING_APIS = frozenset({"chat", "completions", "responses"})


def parse_body(raw: bytes) -> dict[str, Any]:
    if not raw:
        raise bad_request("request body is empty; expected a JSON object")
    try:
        body = _decoder.decode(raw)
    except PAYLOAD_ERRORS as exc:
        raise bad_request(f"request body is not valid JSON: {exc}") from None
    except RecursionError:
        raise bad_request("request body is nested too deeply") from None
    if not isinstance(body, dict):
        raise bad_request("request body must be a JSON object")
    return body


def build_context(
    api: ApiKind, body: dict[str, Any], headers: Mapping[str, str], request_id: str
) -> RequestContext:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise bad_request("you must provide a model parameter", "model")
    messages = text = token_ids = None
    if api == "chat":
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise bad_request("'messages' must be a non-empty array", "messages")
    elif api == "responses":
        prompt = body.get("input")
        if isinstance(prompt, str) and prompt:
            text = prompt
        elif isinstance(prompt, list) and prompt:
            messages = prompt
        else:
            raise bad_request("'input' must be a non-empty string or array of input items", "input")
    elif api in ("completions", "embeddings"):
        field = "prompt" if api == "completions" else "input"
        prompt = body.get(field)
        if isinstance(prompt, str) and prompt:
            text = prompt
        elif isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt):
            token_ids = prompt
        elif isinstance(prompt, list) and prompt and all(isinstance(t, str) for t in prompt):
            text = "".join(prompt)
        elif isinstance(prompt, list) and prompt and all(isinstance(t, list) for t in prompt):
            token_ids = [t for row in prompt for t in row if isinstance(t, int)]
        else:
            raise bad_request(
                f"'{field}' must be a non-empty string, array of strings or array of token ids", field
            )
    # the other routes (tokenize, score, rerank, pooling, ...) are routed by model and load only: they fill no
    # engine's prefix cache; the engine validates their bodies
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise bad_request("'stream' must be a boolean", "stream")
    cache_salt = body.get("cache_salt")
    if cache_salt is not None and not (isinstance(cache_salt, str) and cache_salt):
        raise bad_request("'cache_salt' must be a non-empty string if provided", "cache_salt")
    user = headers.get("user") or body.get("user")
    return RequestContext(
        request_id=request_id,
        api=api,
        model=model,
        body=body,
        base_model=model,
        messages=messages,
        prompt_text=text,
        prompt_token_ids=token_ids,
        user=user if isinstance(user, str) and user else None,
        session_id=headers.get("x-session-id") or None,
        cache_salt=cache_salt,
        stream=stream and api in STREAMING_APIS,
        headers=headers,
        client_request_id=headers.get("x-request-id") or request_id,
    )
