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
    prompt = request.num_prompt_tokens
    out = request.num_output_tokens
    details = {"cached_tokens": max(request.num_cached_tokens, 0)} if with_details else None
    return {"prompt_tokens": prompt, "total_tokens": prompt + out, "completion_tokens": out,
            "prompt_tokens_details": details}


def completion_body(
    rid: str, created: int, model: str, request: SimRequest, text: str, fingerprint: str,
    with_details: bool, kv_transfer_params: dict[str, Any] | None, return_token_ids: bool,
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
    }
    return _ENCODE({
        "id": rid, "object": "text_completion", "created": created, "model": model, "choices": [choice],
        "service_tier": None, "system_fingerprint": fingerprint, "usage": usage(request, with_details),
        "kv_transfer_params": kv_transfer_params,
    })


def chat_body(
    rid: str, created: int, model: str, request: SimRequest, text: str, fingerprint: str,
    with_details: bool, kv_transfer_params: dict[str, Any] | None, return_token_ids: bool,
) -> bytes:
    message = {"role": "assistant", "content": text, "refusal": None, "annotations": None, "audio": None,
               "function_call": None, "tool_calls": [], "reasoning": None}
    choice = {
        "index": 0, "message": message, "logprobs": None, "finish_reason": request.finish_reason,
        "stop_reason": request.stop_reason,
        "token_ids": list(request.output_token_ids) if return_token_ids else None,
    }
    return _ENCODE({
        "id": rid, "object": "chat.completion", "created": created, "model": model, "choices": [choice],
        "service_tier": None, "system_fingerprint": fingerprint, "usage": usage(request, with_details),
        "prompt_logprobs": None,
        "prompt_token_ids": list(request.prompt_token_ids) if return_token_ids else None,
        "kv_transfer_params": kv_transfer_params,
    })


def sse(payload: dict[str, Any]) -> bytes:
    return b"data: " + _ENCODE(payload) + b"\n\n"


SSE_DONE = b"data: [DONE]\n\n"


class ChunkWriter:
    """Builds the SSE events of one streamed completion or chat completion."""

    def __init__(self, rid: str, created: int, model: str, chat: bool, fingerprint: str,
                 continuous_usage: bool, with_details: bool) -> None:
        self.rid = rid
        self.created = created
        self.model = model
        self.chat = chat
        self.fingerprint = fingerprint
        self.continuous_usage = continuous_usage
        self.with_details = with_details
        self.object = "chat.completion.chunk" if chat else "text_completion"

    def _envelope(self, choices: list[dict[str, Any]], request: SimRequest | None, final: bool) -> dict[str, Any]:
        body: dict[str, Any] = {"id": self.rid, "object": self.object, "created": self.created,
                                "model": self.model, "choices": choices}
        if final:
            body["system_fingerprint"] = self.fingerprint
        if self.continuous_usage and request is not None:
            body["usage"] = usage(request, self.with_details)
        return body

    def role_chunk(self, request: SimRequest) -> bytes:
        choice = {"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                  "finish_reason": None}
        return sse(self._envelope([choice], request, False))

    def delta_chunk(self, request: SimRequest, text: str, finished: bool,
                    kv_transfer_params: dict[str, Any] | None = None) -> bytes:
        finish_reason = request.finish_reason if finished else None
        if self.chat:
            choice: dict[str, Any] = {"index": 0, "delta": {"content": text}, "logprobs": None,
                                      "finish_reason": finish_reason}
        else:
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}
        if finished:
            choice["stop_reason"] = request.stop_reason
        body = self._envelope([choice], request, finished)
        if finished and kv_transfer_params is not None:
            body["kv_transfer_params"] = kv_transfer_params
        return sse(body)

    def usage_chunk(self, request: SimRequest) -> bytes:
        body = {"id": self.rid, "object": self.object, "created": self.created, "model": self.model,
                "choices": [], "usage": usage(request, self.with_details)}
        return sse(body)
