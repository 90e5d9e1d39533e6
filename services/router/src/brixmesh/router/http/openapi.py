"""The OpenAPI description of the model routes the raw gateway serves (``/v1/*``, ``/tokenize``, ``/score``,
...), merged into the service app's ``/openapi.json`` (FastAPI only knows its own routes). Request schemas say what the router accepts
(:mod:`.request` checks the same); other fields pass through to the engine, so objects stay open."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

_REF = "#/components/schemas/"

_TOKEN_IDS = {"type": "array", "items": {"type": "integer", "minimum": 0}, "minItems": 1}
_PROMPT = {
    "anyOf": [
        {"type": "string", "minLength": 1},
        {"type": "array", "items": {"type": "string"}, "minItems": 1},
        _TOKEN_IDS,
        {"type": "array", "items": _TOKEN_IDS, "minItems": 1},
    ]
}
_TEXTS = {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}, "minItems": 1}]}
_SAMPLING: dict[str, Any] = {
    "model": {"type": "string", "minLength": 1, "description": "A served model or LoRA adapter"},
    "max_tokens": {"type": "integer", "minimum": 1},
    "temperature": {"type": "number", "minimum": 0, "maximum": 2},
    "top_p": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
    "n": {"type": "integer", "minimum": 1, "maximum": 4},
    "seed": {"type": "integer"},
    "stop": {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}, "maxItems": 4}]},
    "stream": {"type": "boolean"},
    "stream_options": {"type": "object", "properties": {"include_usage": {"type": "boolean"}}},
    "user": {"type": "string", "description": "End user, for rate limits and the vtc strategy"},
    "ignore_eos": {"type": "boolean", "description": "vLLM extension"},
}
_CONTENT_PART = {
    "type": "object",
    "required": ["type"],
    "properties": {"type": {"type": "string"}, "text": {"type": "string"}},
}
_MESSAGE = {
    "type": "object",
    "required": ["role"],
    "properties": {
        "role": {"type": "string", "enum": ["system", "developer", "user", "assistant", "tool"]},
        "content": {
            "anyOf": [{"type": "string"}, {"type": "array", "items": _CONTENT_PART}, {"type": "null"}]
        },
        "name": {"type": "string"},
    },
}
SCHEMAS: dict[str, Any] = {
    "ChatCompletionRequest": {
        "type": "object",
        "required": ["model", "messages"],
        "properties": {
            **_SAMPLING,
            "messages": {"type": "array", "items": _MESSAGE, "minItems": 1},
            "max_completion_tokens": {"type": "integer", "minimum": 1},
        },
    },
    "CompletionRequest": {
        "type": "object",
        "required": ["model", "prompt"],
        "properties": {**_SAMPLING, "prompt": _PROMPT, "echo": {"type": "boolean"}},
    },
    "EmbeddingRequest": {
        "type": "object",
        "required": ["model", "input"],
        "properties": {
            "model": _SAMPLING["model"],
            "input": _PROMPT,
            "encoding_format": {"type": "string", "enum": ["float", "base64"]},
            "user": _SAMPLING["user"],
        },
    },
    "ResponseRequest": {
        "type": "object",
        "required": ["model", "input"],
        "properties": {
            "model": _SAMPLING["model"],
            "input": {"anyOf": [{"type": "string", "minLength": 1},
                                {"type": "array", "items": _MESSAGE, "minItems": 1}]},  # fmt: skip
            "instructions": {"type": "string"},
            "max_output_tokens": {"type": "integer", "minimum": 1},
            "temperature": _SAMPLING["temperature"],
            "stream": _SAMPLING["stream"],
        },
    },
    "TokenizeRequest": {
        "type": "object",
        "required": ["model"],
        "properties": {
            "model": _SAMPLING["model"],
            "prompt": {"type": "string"},
            "messages": {"type": "array", "items": _MESSAGE, "minItems": 1},
        },
    },
    "DetokenizeRequest": {
        "type": "object",
        "required": ["model", "tokens"],
        "properties": {"model": _SAMPLING["model"], "tokens": _TOKEN_IDS},
    },
    "ScoreRequest": {
        "type": "object",
        "required": ["model", "text_1", "text_2"],
        "properties": {"model": _SAMPLING["model"], "text_1": _TEXTS, "text_2": _TEXTS},
    },
    "RerankRequest": {
        "type": "object",
        "required": ["model", "query", "documents"],
        "properties": {
            "model": _SAMPLING["model"],
            "query": {"type": "string"},
            "documents": _TEXTS,
            "top_n": {"type": "integer", "minimum": 0},
        },
    },
    "PoolingRequest": {
        "type": "object",
        "required": ["model", "input"],
        "properties": {"model": _SAMPLING["model"], "input": _PROMPT},
    },
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["message", "type"],
                "properties": {
                    "message": {"type": "string"},
                    "type": {"type": "string"},
                    "param": {"type": ["string", "null"]},
                    "code": {"type": ["string", "integer", "null"]},
                },
            }
        },
    },
    "ModelList": {
        "type": "object",
        "required": ["object", "data"],
        "properties": {
            "object": {"const": "list"},
            "data": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["id", "object"],
                    "properties": {
                        "id": {"type": "string"},
                        "object": {"const": "model"},
                        "created": {"type": "integer"},
                        "owned_by": {"type": "string"},
                        "root": {"type": "string"},
                        "parent": {"type": ["string", "null"]},
                    },
                },
            },
        },
    },
}

_HEADERS = [
    {"name": "x-request-id", "in": "header", "schema": {"type": "string"}, "description": "Echoed back"},
    {
        "name": "routing-strategy",
        "in": "header",
        "schema": {"type": "string"},
        "description": "A strategy spec, e.g. `prefix-cache:3,least-request:2`",
    },
    {"name": "x-session-id", "in": "header", "schema": {"type": "string"}},
]
_ERRORS = {
    str(status): {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": _REF + "Error"}}},
    }
    for status, description in [
        (400, "Invalid request"),
        (401, "Missing or unknown API key"),
        (404, "Unknown model"),
        (413, "Body too large"),
        (429, "Rate limited (Retry-After)"),
        (502, "No pod answered"),
        (503, "No ready pod (Retry-After)"),
        (504, "Upstream timeout or request deadline"),
    ]
}


def _generate(summary: str, request: str) -> dict[str, Any]:
    """A POST route forwarded to the pod chosen for the body's ``model``."""
    return {
        "post": {
            "summary": summary,
            "parameters": _HEADERS,
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": {"$ref": _REF + request}}},
            },
            "responses": {
                "200": {
                    "description": "The engine's answer (a server-sent event stream when `stream` is true)",
                    "content": {"application/json": {}, "text/event-stream": {}},
                },
                **_ERRORS,
            },
        }
    }


PATHS: dict[str, Any] = {
    "/v1/chat/completions": _generate("Chat completion, routed to the best pod", "ChatCompletionRequest"),
    "/v1/completions": _generate("Completion, routed to the best pod", "CompletionRequest"),
    "/v1/embeddings": _generate("Embeddings, routed to the best pod", "EmbeddingRequest"),
    "/v1/responses": _generate("Responses API, routed to the best pod", "ResponseRequest"),
    "/tokenize": _generate("Token ids of a prompt or chat, from a pod of the model", "TokenizeRequest"),
    "/detokenize": _generate("Text of token ids, from a pod of the model", "DetokenizeRequest"),
    **{path: _generate("Scores of text pairs (vLLM)", "ScoreRequest") for path in ("/score", "/v1/score")},
    **{
        path: _generate("Documents ranked by relevance to a query (vLLM)", "RerankRequest")
        for path in ("/rerank", "/v1/rerank", "/v2/rerank")
    },
    "/pooling": _generate("Pooled hidden states (vLLM)", "PoolingRequest"),
    "/classify": _generate("Classification (vLLM)", "PoolingRequest"),
    "/v1/models": {
        "get": {
            "summary": "Models and adapters served now (and configured ones)",
            "responses": {
                "200": {
                    "description": "The models",
                    "content": {"application/json": {"schema": {"$ref": _REF + "ModelList"}}},
                },
                "401": _ERRORS["401"],
            },
        }
    },
}


def document_openai_routes(app: FastAPI) -> None:
    """``app.openapi()`` (what ``/openapi.json`` serves) also describes the gateway's model routes."""
    generate = app.openapi

    def with_openai_routes() -> dict[str, Any]:
        schema = generate()  # built once, then cached by FastAPI
        if "/v1/models" not in schema["paths"]:
            schema["paths"].update(PATHS)
            schema.setdefault("components", {}).setdefault("schemas", {}).update(SCHEMAS)
        return schema

    app.openapi = with_openai_routes  # type: ignore[method-assign]
