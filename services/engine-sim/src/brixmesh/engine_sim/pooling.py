"""vLLM's pooling routes (embeddings, pooling, score, rerank, classify) on the simulated model: vectors are a
deterministic function of the prompt's token ids, so equal texts score 1.0 and answers repeat exactly.
Shapes as vLLM 0.32's ``vllm/entrypoints/pooling`` protocol."""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from typing import Any

from brixmesh.engine_sim.errors import ApiError
from brixmesh.engine_sim.protocol import missing_field
from brixmesh.engine_sim.responses import new_id

DIMENSIONS = 16
SCORE_PAIRS = (("text_1", "text_2"), ("data_1", "data_2"), ("queries", "documents"), ("queries", "items"))

Encode = Callable[[str], list[int]]


def embed(token_ids: list[int]) -> list[float]:
    """A unit vector from the token ids (a bag of words: order does not matter, like mean pooling)."""
    vector = [0.0] * DIMENSIONS
    for token in token_ids:
        rng = random.Random(token)
        for i in range(DIMENSIONS):
            vector[i] += rng.uniform(-1.0, 1.0)
    norm = math.sqrt(sum(v * v for v in vector)) or 1.0
    return [v / norm for v in vector]


def _token_ids(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(type(t) is int for t in value)


def _texts(body: dict[str, Any], field: str) -> list[str]:
    value = body.get(field)
    if value is None:
        raise missing_field(field, body)
    texts = [value] if isinstance(value, str) else value
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
        message = f"'{field}' must be a string or a non-empty list of strings"
        raise ApiError(400, message, "BadRequestError", field)
    return texts


def _usage(tokens: int) -> dict[str, Any]:
    return {
        "prompt_tokens": tokens,
        "total_tokens": tokens,
        "completion_tokens": 0,
        "prompt_tokens_details": None,
    }


def _cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b))


def vectors(body: dict[str, Any], field: str, encode: Encode) -> tuple[list[list[float]], int]:
    """Vectors of a string / list of strings / token ids / lists of token ids, and the prompt token count."""
    value = body.get(field)
    if _token_ids(value):
        inputs: list[list[int]] = [value]
    elif isinstance(value, list) and value and all(_token_ids(row) for row in value):
        inputs = value
    else:
        inputs = [encode(text) for text in _texts(body, field)]
    return [embed(ids) for ids in inputs], sum(len(ids) for ids in inputs)


def embeddings_body(
    body: dict[str, Any], model: str, encode: Encode, object_name: str = "embedding"
) -> dict[str, Any]:
    """``/v1/embeddings`` (``object_name="embedding"``) and ``/pooling`` (``"pooling"``: vectors under
    ``data``)."""
    found, tokens = vectors(body, "input", encode)
    key = "embedding" if object_name == "embedding" else "data"
    return {
        "id": new_id("embd" if object_name == "embedding" else "pool"),
        "object": "list",
        "created": int(time.time()),
        "model": model,
        "data": [{"index": i, "object": object_name, key: vector} for i, vector in enumerate(found)],
        "usage": _usage(tokens),
    }


def _score_pairs(body: dict[str, Any], encode: Encode) -> tuple[list[float], int]:
    """Scores of the 1:1, 1:N or N:N pairs of texts, and the prompt token count."""
    for left_field, right_field in SCORE_PAIRS:
        if left_field in body:
            break
    else:
        raise missing_field("text_1", body)
    left, right = _texts(body, left_field), _texts(body, right_field)
    if len(left) == 1:
        left = left * len(right)
    if len(left) != len(right):
        raise ApiError(400, "Input lengths must be either 1:1, 1:N or N:N", "BadRequestError", left_field)
    ids_left, ids_right = [encode(t) for t in left], [encode(t) for t in right]
    scores = [_cosine(embed(a), embed(b)) for a, b in zip(ids_left, ids_right)]
    return scores, sum(map(len, ids_left)) + sum(map(len, ids_right))


def score_body(body: dict[str, Any], model: str, encode: Encode) -> dict[str, Any]:
    scores, tokens = _score_pairs(body, encode)
    return {
        "id": new_id("score"),
        "object": "list",
        "created": int(time.time()),
        "model": model,
        "data": [{"index": i, "object": "score", "score": s} for i, s in enumerate(scores)],
        "usage": _usage(tokens),
    }


def rerank_body(body: dict[str, Any], model: str, encode: Encode) -> dict[str, Any]:
    query = body.get("query")
    if not isinstance(query, str):
        raise missing_field("query", body)
    documents = _texts(body, "documents")
    top_n = body.get("top_n", 0)
    if not isinstance(top_n, int) or top_n < 0:
        raise ApiError(400, "'top_n' must be an integer >= 0", "BadRequestError", "top_n")
    scores, tokens = _score_pairs({"text_1": query, "text_2": documents}, encode)
    ranked = sorted(range(len(documents)), key=lambda i: -scores[i])[: top_n or None]
    return {
        "id": new_id("rerank"),
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        "results": [
            {"index": i, "document": {"text": text, "multi_modal": None}, "relevance_score": scores[i]}
            for i, text in ((i, documents[i]) for i in ranked)
        ],
    }


def classify_body(body: dict[str, Any], model: str, encode: Encode) -> dict[str, Any]:
    found, tokens = vectors(body, "input", encode)
    data = []
    for i, vector in enumerate(found):
        positive = 1.0 / (1.0 + math.exp(-4.0 * vector[0]))
        probs = [1.0 - positive, positive]
        label = int(positive > 0.5)
        data.append({"index": i, "label": f"LABEL_{label}", "probs": probs, "num_classes": 2})
    return {
        "id": new_id("classify"),
        "object": "list",
        "created": int(time.time()),
        "model": model,
        "data": data,
        "usage": _usage(tokens),
    }
