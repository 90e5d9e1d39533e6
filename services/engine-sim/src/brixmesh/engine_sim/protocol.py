"""Validation of completion and chat request bodies into what the engine needs, with vLLM's errors."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec

from brixmesh.engine_sim.errors import ApiError

_DECODER = msgspec.json.Decoder()


def parse_json_body(raw: bytes) -> dict[str, Any]:
    try:
        body = _DECODER.decode(raw)
    except msgspec.DecodeError as exc:
        raise ApiError(400, f"JSON decode error: {exc}", "Bad Request", "body") from None
    if not isinstance(body, dict):
        raise ApiError(400, "Input should be a valid dictionary or object to extract fields from", "Bad Request",
                       "body")
    return body


def missing_field(name: str) -> ApiError:
    return ApiError(400, "Field required", "Bad Request", f"body.{name}")


def invalid_field(name: str, message: str) -> ApiError:
    return ApiError(400, message, "Bad Request", f"body.{name}")


def _optional_int(body: dict[str, Any], name: str, minimum: int) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise invalid_field(name, "Input should be a valid integer")
    if value < minimum:
        raise ApiError(400, f"{name} must be at least {minimum}, got {value}.", "BadRequestError", name)
    return value


@dataclass(slots=True)
class GenerationParams:
    model: str | None
    stream: bool
    include_usage: bool
    continuous_usage_stats: bool
    max_tokens: int | None
    ignore_eos: bool
    seed: int | None
    cache_salt: str | None
    kv_transfer_params: dict[str, Any] | None
    return_token_ids: bool
    echo: bool


def generation_params(body: dict[str, Any], chat: bool) -> GenerationParams:
    stream = body.get("stream") or False
    if not isinstance(stream, bool):
        raise invalid_field("stream", "Input should be a valid boolean")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise invalid_field("stream_options", "Input should be a valid dictionary")
    if options and not stream:
        raise ApiError(400, "Stream options can only be defined when `stream=True`.", "BadRequestError",
                       "stream_options")
    max_tokens = _optional_int(body, "max_tokens", 1)
    if chat:
        max_completion = _optional_int(body, "max_completion_tokens", 1)
        if max_completion is not None:
            max_tokens = max_completion
    elif max_tokens is None and "max_tokens" not in body:
        max_tokens = 16  # OpenAI's completions default, which vLLM keeps
    n = body.get("n", 1)
    if n not in (1, None):
        raise ApiError(400, "The simulator supports only n=1.", "BadRequestError", "n")
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise invalid_field("model", "Input should be a valid string")
    kv_params = body.get("kv_transfer_params")
    if kv_params is not None and not isinstance(kv_params, dict):
        raise invalid_field("kv_transfer_params", "Input should be a valid dictionary")
    salt = body.get("cache_salt")
    if salt is not None and (not isinstance(salt, str) or not salt):
        raise ApiError(400, "Parameter 'cache_salt' must be a non-empty string if provided.", "BadRequestError",
                       "cache_salt")
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise invalid_field("seed", "Input should be a valid integer")
    return GenerationParams(
        model=model,
        stream=stream,
        include_usage=bool(options.get("include_usage")),
        continuous_usage_stats=bool(options.get("continuous_usage_stats")),
        max_tokens=max_tokens,
        ignore_eos=bool(body.get("ignore_eos", False)),
        seed=seed,
        cache_salt=salt,
        kv_transfer_params=kv_params,
        return_token_ids=bool(body.get("return_token_ids", False)),
        echo=bool(body.get("echo", False)),
    )


def completion_prompt(body: dict[str, Any]) -> str | list[int]:
    """One prompt (text or token ids); batches of prompts are rejected."""
    prompt = body.get("prompt")
    if prompt is None or prompt == "" or prompt == []:
        raise ApiError(400, "Either prompt or prompt_embeds must be provided and non-empty.", "BadRequestError",
                       "prompt")
    if isinstance(prompt, list):
        if len(prompt) == 1 and isinstance(prompt[0], (str, list)):
            prompt = prompt[0]
            if prompt == "" or prompt == []:
                raise ApiError(400, "Either prompt or prompt_embeds must be provided and non-empty.",
                               "BadRequestError", "prompt")
        elif not all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
            raise ApiError(400, "The simulator accepts one prompt per request (a string or a list of token ids).",
                           "BadRequestError", "prompt")
    if isinstance(prompt, list):
        if not all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
            raise invalid_field("prompt", "Input should be a valid list of integers")
        return prompt
    if not isinstance(prompt, str):
        raise invalid_field("prompt", "Input should be a valid string")
    return prompt


def chat_messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    messages = body.get("messages")
    if messages is None:
        raise missing_field("messages")
    if not isinstance(messages, list):
        raise invalid_field("messages", "Input should be a valid list")
    out: list[dict[str, Any]] = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or "role" not in message:
            raise invalid_field(f"messages.{i}.role", "Field required")
        content = message.get("content")
        if isinstance(content, list):
            content = "".join(part.get("text", "") for part in content if isinstance(part, dict))
        out.append({**message, "content": "" if content is None else str(content)})
    return out
