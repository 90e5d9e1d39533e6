"""Response bodies and SSE chunks in vLLM 0.32's shapes."""

from __future__ import annotations

import secrets
from typing import Any

import msgspec
from brixmesh.engine_sim.request import SimRequest

_ENCODE = msgspec.json.encode


def new_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(8)}"


def usage(request: SimRequest, with_details: bool) -> dict[str, Any]:
    """Usage of a non-streamed response."""
    prompt = request.num_prompt_tokens
    out = request.num_output_tokens
    details = {"cached_tokens": max(request.num_cached_tokens, 0)} if with_details else None
    return {
        "prompt_tokens": prompt,
        "total_tokens": prompt + out,
        "completion_tokens": out,
        "prompt_tokens_details": details,
        "completion_tokens_details": None,
    }


def stream_usage(request: SimRequest, with_details: bool) -> dict[str, Any]:
    """Usage of the final ``include_usage`` chunk: no ``completion_tokens_details``, details only when enabled."""
    prompt = request.num_prompt_tokens
    out = request.num_output_tokens
    body: dict[str, Any] = {"prompt_tokens": prompt, "total_tokens": prompt + out, "completion_tokens": out}
    if with_details:
        body["prompt_tokens_details"] = {"cached_tokens": max(request.num_cached_tokens, 0)}
    return body


def _continuous_usage(request: SimRequest) -> dict[str, Any]:
    prompt = request.num_prompt_tokens
    out = request.num_output_tokens
    return {
        "prompt_tokens": prompt,
        "total_tokens": prompt + out,
        "completion_tokens": out,
        "completion_tokens_details": None,
    }


def completion_body(
    rid: str,
    created: int,
    model: str,
    request: SimRequest,
    text: str,
    fingerprint: str,
    with_details: bool,
    kv_transfer_params: dict[str, Any] | None,
    return_token_ids: bool,
) -> bytes:
    choice = {
        "index": 0,
        "text": text,
        "logprobs": None,
        "finish_reason": request.finish_reason,
        "stop_reason": request.stop_reason,
        "token_ids": list(request.output_token_ids) if return_token_ids else None,
        "prompt_logprobs": None,
        "prompt_token_ids": list(request.prompt_token_ids) if return_token_ids else None,
        "routed_experts": None,
    }
    return _ENCODE(
        {
            "id": rid,
            "object": "text_completion",
            "created": created,
            "model": model,
            "choices": [choice],
            "service_tier": None,
            "system_fingerprint": fingerprint,
            "usage": usage(request, with_details),
            "kv_transfer_params": kv_transfer_params,
            "ec_transfer_params": None,
            "metrics": None,
        }
    )


def chat_body(
    rid: str,
    created: int,
    model: str,
    request: SimRequest,
    text: str,
    fingerprint: str,
    with_details: bool,
    kv_transfer_params: dict[str, Any] | None,
    return_token_ids: bool,
) -> bytes:
    message = {
        "role": "assistant",
        "content": text,
        "refusal": None,
        "annotations": None,
        "audio": None,
        "function_call": None,
        "reasoning": None,
    }
    choice = {
        "index": 0,
        "message": message,
        "logprobs": None,
        "finish_reason": request.finish_reason,
        "stop_reason": request.stop_reason,
        "token_ids": list(request.output_token_ids) if return_token_ids else None,
        "routed_experts": None,
    }
    return _ENCODE(
        {
            "id": rid,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": [choice],
            "service_tier": None,
            "system_fingerprint": fingerprint,
            "usage": usage(request, with_details),
            "prompt_logprobs": None,
            "prompt_token_ids": list(request.prompt_token_ids) if return_token_ids else None,
            "prompt_text": None,
            "kv_transfer_params": kv_transfer_params,
            "ec_transfer_params": None,
            "metrics": None,
        }
    )


def sse(payload: dict[str, Any]) -> bytes:
    return b"data: " + _ENCODE(payload) + b"\n\n"


SSE_DONE = b"data: [DONE]\n\n"


class ChunkWriter:
    """Builds the SSE events of one streamed completion or chat completion, key for key as vLLM 0.32."""

    def __init__(
        self,
        rid: str,
        created: int,
        model: str,
        chat: bool,
        fingerprint: str,
        continuous_usage: bool,
        with_details: bool,
    ) -> None:
        self.rid = rid
        self.created = created
        self.model = model
        self.chat = chat
        self.fingerprint = fingerprint
        self.continuous_usage = continuous_usage
        self.with_details = with_details
        self.object = "chat.completion.chunk" if chat else "text_completion"

    def _envelope(self, choices: list[dict[str, Any]], request: SimRequest) -> dict[str, Any]:
        body: dict[str, Any] = {
            "id": self.rid,
            "object": self.object,
            "created": self.created,
            "model": self.model,
            "choices": choices,
        }
        if self.continuous_usage:
            body["usage"] = _continuous_usage(request)
        return body

    def role_chunk(self, request: SimRequest) -> bytes:
        choice = {
            "index": 0,
            "delta": {"role": "assistant", "content": ""},
            "logprobs": None,
            "finish_reason": None,
        }
        body = self._envelope([choice], request)
        body["prompt_token_ids"] = None
        body["prompt_text"] = None
        return sse(body)

    def delta_chunk(
        self, request: SimRequest, text: str, finished: bool, kv_transfer_params: dict[str, Any] | None = None
    ) -> bytes:
        finish_reason = request.finish_reason if finished else None
        if self.chat:
            choice: dict[str, Any] = {
                "index": 0,
                "delta": {"content": text},
                "logprobs": None,
                "finish_reason": finish_reason,
            }
            if finished:
                choice["stop_reason"] = request.stop_reason
            choice["token_ids"] = None
        else:
            choice = {
                "index": 0,
                "text": text,
                "logprobs": None,
                "finish_reason": finish_reason,
                "stop_reason": request.stop_reason if finished else None,
                "prompt_token_ids": None,
                "token_ids": None,
            }
        body = self._envelope([choice], request)
        if finished and kv_transfer_params is not None:
            body["kv_transfer_params"] = kv_transfer_params
        return sse(body)

    def usage_chunk(self, request: SimRequest) -> bytes:
        body = {
            "id": self.rid,
            "object": self.object,
            "created": self.created,
            "model": self.model,
            "choices": [],
            "usage": stream_usage(request, self.with_details),
            "system_fingerprint": self.fingerprint,
        }
        return sse(body)
