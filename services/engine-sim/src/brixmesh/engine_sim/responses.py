"""Response bodies and SSE chunks in vLLM 0.32's shapes (key for key, checked by tests/conformance).

A request with ``n`` choices is ``n`` engine requests sharing one prompt; ``requests[i]`` is choice ``i``.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from typing import Any

import msgspec
from brixmesh.engine_sim.request import SimRequest

_ENCODE = msgspec.json.encode
SSE_DONE = b"data: [DONE]\n\n"


def new_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(8)}"


def sse(payload: dict[str, Any]) -> bytes:
    return b"data: " + _ENCODE(payload) + b"\n\n"


def _counts(requests: Sequence[SimRequest]) -> tuple[int, int]:
    return requests[0].num_prompt_tokens, sum(r.num_output_tokens for r in requests)


def _cached(requests: Sequence[SimRequest]) -> dict[str, int]:
    return {"cached_tokens": max(requests[0].num_cached_tokens, 0)}


def usage(requests: Sequence[SimRequest], with_details: bool) -> dict[str, Any]:
    """Usage of a non-streamed response."""
    prompt, out = _counts(requests)
    return {
        "prompt_tokens": prompt,
        "total_tokens": prompt + out,
        "completion_tokens": out,
        "prompt_tokens_details": _cached(requests) if with_details else None,
        "completion_tokens_details": None,
    }


def stream_usage(requests: Sequence[SimRequest], with_details: bool) -> dict[str, Any]:
    """Usage of the final ``include_usage`` chunk: no ``completion_tokens_details``, details only when enabled."""
    prompt, out = _counts(requests)
    body: dict[str, Any] = {"prompt_tokens": prompt, "total_tokens": prompt + out, "completion_tokens": out}
    if with_details:
        body["prompt_tokens_details"] = _cached(requests)
    return body


def _continuous_usage(requests: Sequence[SimRequest]) -> dict[str, Any]:
    prompt, out = _counts(requests)
    return {
        "prompt_tokens": prompt,
        "total_tokens": prompt + out,
        "completion_tokens": out,
        "completion_tokens_details": None,
    }


def _body(
    rid: str,
    object_name: str,
    created: int,
    model: str,
    choices: list[dict[str, Any]],
    fingerprint: str,
    usage_body: dict[str, Any],
    prompt_fields: dict[str, Any],
    kv_transfer_params: dict[str, Any] | None,
) -> bytes:
    """The envelope both non-streamed bodies share; ``prompt_fields`` sit between usage and the transfer
    params (chat only, where vLLM puts them at the top level)."""
    return _ENCODE(
        {
            "id": rid,
            "object": object_name,
            "created": created,
            "model": model,
            "choices": choices,
            "service_tier": None,
            "system_fingerprint": fingerprint,
            "usage": usage_body,
            **prompt_fields,
            "kv_transfer_params": kv_transfer_params,
            "ec_transfer_params": None,
            "metrics": None,
        }
    )


def _outcome(request: SimRequest, logprobs: dict[str, Any] | None, return_token_ids: bool) -> dict[str, Any]:
    """The keys both choice shapes carry after the generated content, in vLLM's order."""
    return {
        "logprobs": logprobs,
        "finish_reason": request.finish_reason,
        "stop_reason": request.stop_reason,
        "token_ids": list(request.output_token_ids) if return_token_ids else None,
    }


def completion_body(
    rid: str,
    created: int,
    model: str,
    requests: Sequence[SimRequest],
    texts: Sequence[str],
    fingerprint: str,
    with_details: bool,
    kv_transfer_params: dict[str, Any] | None,
    return_token_ids: bool,
    logprobs: Sequence[dict[str, Any]] | None = None,
) -> bytes:
    choices = [
        {
            "index": i,
            "text": text,
            **_outcome(request, logprobs[i] if logprobs else None, return_token_ids),
            "prompt_logprobs": None,
            "prompt_token_ids": list(request.prompt_token_ids) if return_token_ids else None,
            "routed_experts": None,
        }
        for i, (request, text) in enumerate(zip(requests, texts, strict=True))
    ]
    return _body(rid, "text_completion", created, model, choices, fingerprint, usage(requests, with_details),
                 {}, kv_transfer_params)  # fmt: skip


def chat_body(
    rid: str,
    created: int,
    model: str,
    requests: Sequence[SimRequest],
    texts: Sequence[str],
    fingerprint: str,
    with_details: bool,
    kv_transfer_params: dict[str, Any] | None,
    return_token_ids: bool,
    logprobs: Sequence[dict[str, Any]] | None = None,
) -> bytes:
    choices = [
        {
            "index": i,
            "message": {
                "role": "assistant",
                "content": text,
                "refusal": None,
                "annotations": None,
                "audio": None,
                "function_call": None,
                "reasoning": None,
            },
            **_outcome(request, logprobs[i] if logprobs else None, return_token_ids),
            "routed_experts": None,
        }
        for i, (request, text) in enumerate(zip(requests, texts, strict=True))
    ]
    prompt_fields = {
        "prompt_logprobs": None,
        "prompt_token_ids": list(requests[0].prompt_token_ids) if return_token_ids else None,
        "prompt_text": None,
    }
    return _body(rid, "chat.completion", created, model, choices, fingerprint, usage(requests, with_details),
                 prompt_fields, kv_transfer_params)  # fmt: skip


class ChunkWriter:
    """Builds the SSE events of one streamed completion or chat completion."""

    def __init__(
        self,
        rid: str,
        created: int,
        model: str,
        chat: bool,
        fingerprint: str,
        continuous_usage: bool,
        with_details: bool,
        requests: Sequence[SimRequest],
    ) -> None:
        self.rid = rid
        self.created = created
        self.model = model
        self.chat = chat
        self.fingerprint = fingerprint
        self.continuous_usage = continuous_usage
        self.with_details = with_details
        self.requests = requests
        self.object = "chat.completion.chunk" if chat else "text_completion"

    def _envelope(self, choice: dict[str, Any]) -> dict[str, Any]:
        body: dict[str, Any] = {
            "id": self.rid,
            "object": self.object,
            "created": self.created,
            "model": self.model,
            "choices": [choice],
        }
        if self.continuous_usage:
            body["usage"] = _continuous_usage(self.requests)
        return body

    def role_chunk(self, index: int) -> bytes:
        choice = {
            "index": index,
            "delta": {"role": "assistant", "content": ""},
            "logprobs": None,
            "finish_reason": None,
        }
        body = self._envelope(choice)
        body["prompt_token_ids"] = None
        body["prompt_text"] = None
        return sse(body)

    def delta_chunk(
        self,
        index: int,
        text: str,
        finished: bool,
        kv_transfer_params: dict[str, Any] | None = None,
        logprobs: dict[str, Any] | None = None,
    ) -> bytes:
        request = self.requests[index]
        finish_reason = request.finish_reason if finished else None
        if self.chat:
            choice: dict[str, Any] = {
                "index": index,
                "delta": {"content": text},
                "logprobs": logprobs,
                "finish_reason": finish_reason,
            }
            if finished:
                choice["stop_reason"] = request.stop_reason
            choice["token_ids"] = None
        else:
            choice = {
                "index": index,
                "text": text,
                "logprobs": logprobs,
                "finish_reason": finish_reason,
                "stop_reason": request.stop_reason if finished else None,
                "prompt_token_ids": None,
                "token_ids": None,
            }
        body = self._envelope(choice)
        if finished and kv_transfer_params is not None:
            body["kv_transfer_params"] = kv_transfer_params
        return sse(body)

    def usage_chunk(self) -> bytes:
        body = {
            "id": self.rid,
            "object": self.object,
            "created": self.created,
            "model": self.model,
            "choices": [],
            "usage": stream_usage(self.requests, self.with_details),
            "system_fingerprint": self.fingerprint,
        }
        return sse(body)
