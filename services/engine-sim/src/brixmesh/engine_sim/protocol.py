"""Validation of completion and chat request bodies into what the engine needs, with vLLM's errors."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import msgspec
from brixmesh.engine_sim.errors import ApiError

_DECODER = msgspec.json.Decoder()


def _validation_error(
    kind: str, loc: str, msg: str, input_repr: str, ctx: dict[str, str] | None = None
) -> ApiError:
    """FastAPI/pydantic's request-validation error, as vLLM 0.32 wraps it."""
    detail: dict[str, Any] = {"type": kind, "loc": loc, "msg": msg, "input": input_repr}
    if ctx is not None:
        detail["ctx"] = ctx
    return ApiError(400, f"1 validation error:\n  {detail!r}", "Bad Request", loc)


def parse_json_body(raw: bytes) -> dict[str, Any]:
    try:
        body = _DECODER.decode(raw)
    except (msgspec.DecodeError, UnicodeDecodeError):
        # Rare path: stdlib json gives the exact message and position pydantic reports.
        try:
            json.loads(raw)
        except json.JSONDecodeError as exc:
            raise _validation_error(
                "json_invalid",
                f"body.{exc.pos}",
                "JSON decode error",
                "<dict of 0 items>",
                {"error": exc.msg},
            ) from None
        raise _validation_error("json_invalid", "body", "JSON decode error", "<dict of 0 items>") from None
    if not isinstance(body, dict):
        raise _validation_error(
            "model_attributes_type",
            "body",
            "Input should be a valid dictionary or object to extract fields from",
            repr(body),
        )
    return body


def missing_field(name: str, body: dict[str, Any]) -> ApiError:
    return _validation_error("missing", f"body.{name}", "Field required", f"<dict of {len(body)} items>")


def invalid_field(name: str, message: str) -> ApiError:
    return ApiError(400, message, "Bad Request", f"body.{name}")


def bad_request(message: str, param: str) -> ApiError:
    """vLLM's BadRequestError: the message names the parameter."""
    return ApiError(400, f"{message} (parameter={param})", "BadRequestError", param)


def _optional_int(body: dict[str, Any], name: str, minimum: int) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise invalid_field(name, "Input should be a valid integer")
    if value < minimum:
        raise bad_request(f"{name} must be at least {minimum}, got {value}.", name)
    return value


@dataclass(slots=True)
class GenerationParams:
    model: str | None
    n: int
    logprobs: int | None
    stop: list[str]
    stop_token_ids: frozenset[int]
    min_tokens: int
    include_stop_str_in_output: bool
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
        raise bad_request("Stream options can only be defined when `stream=True`.", "stream_options")
    max_tokens = _optional_int(body, "max_tokens", 1)
    if chat:
        max_completion = _optional_int(body, "max_completion_tokens", 1)
        if max_completion is not None:
            max_tokens = max_completion
    elif max_tokens is None and "max_tokens" not in body:
        max_tokens = 16  # OpenAI's completions default, which vLLM keeps
    n = _optional_int(body, "n", 1) or 1
    if n > 1 and body.get("temperature") == 0:
        raise ApiError(400, f"n must be 1 when using greedy sampling, got {n}.", "BadRequestError")
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise invalid_field("model", "Input should be a valid string")
    kv_params = body.get("kv_transfer_params")
    if kv_params is not None and not isinstance(kv_params, dict):
        raise invalid_field("kv_transfer_params", "Input should be a valid dictionary")
    salt = body.get("cache_salt")
    if salt is not None and (not isinstance(salt, str) or not salt):
        raise bad_request("Parameter 'cache_salt' must be a non-empty string if provided.", "cache_salt")
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise invalid_field("seed", "Input should be a valid integer")
    if seed is not None and not -(1 << 63) <= seed < 1 << 63:  # vLLM's bounds: a C long
        raise invalid_field("seed", f"Input should be between {-(1 << 63)} and {(1 << 63) - 1}")
    return GenerationParams(
        model=model,
        n=n,
        logprobs=_logprobs(body, chat),
        stop=_stop_strings(body),
        stop_token_ids=_stop_token_ids(body),
        min_tokens=_optional_int(body, "min_tokens", 0) or 0,
        include_stop_str_in_output=bool(body.get("include_stop_str_in_output", False)),
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


def _logprobs(body: dict[str, Any], chat: bool) -> int | None:
    """Number of alternatives per token, or None when logprobs are off."""
    if chat:
        wanted = body.get("logprobs")
        if not wanted:
            return None
        return _optional_int(body, "top_logprobs", 0) or 0
    return _optional_int(body, "logprobs", 0)


def _stop_strings(body: dict[str, Any]) -> list[str]:
    stop = body.get("stop")
    if stop is None:
        return []
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
        raise invalid_field("stop", "Input should be a valid string or list of strings")
    return [s for s in stop if s]


def _stop_token_ids(body: dict[str, Any]) -> frozenset[int]:
    ids = body.get("stop_token_ids") or []
    if not isinstance(ids, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
        raise invalid_field("stop_token_ids", "Input should be a valid list of integers")
    return frozenset(ids)


def completion_prompt(body: dict[str, Any]) -> str | list[int]:
    """One prompt (text or token ids); batches of prompts are rejected."""
    prompt = body.get("prompt")
    if prompt is None or prompt == "" or prompt == []:
        raise bad_request("Either prompt or prompt_embeds must be provided and non-empty.", "prompt")
    if isinstance(prompt, list):
        if len(prompt) == 1 and isinstance(prompt[0], (str, list)):
            prompt = prompt[0]
            if prompt == "" or prompt == []:
                raise bad_request("Either prompt or prompt_embeds must be provided and non-empty.", "prompt")
        elif not all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
            raise bad_request(
                "The simulator accepts one prompt per request (a string or a list of token ids).", "prompt"
            )
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
        raise missing_field("messages", body)
    if not isinstance(messages, list):
        raise invalid_field("messages", "Input should be a valid list")
    out: list[dict[str, Any]] = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or "role" not in message:
            raise invalid_field(f"messages.{i}.role", "Field required")
        if not isinstance(message["role"], str):
            raise invalid_field(f"messages.{i}.role", "Input should be a valid string")
        content = message.get("content")
        if isinstance(content, list):
            texts = [part.get("text", "") for part in content if isinstance(part, dict)]
            if not all(isinstance(text, str) for text in texts):
                raise invalid_field(f"messages.{i}.content", "Input should be a valid string")
            content = "".join(texts)
        out.append({**message, "content": "" if content is None else str(content)})
    return out
