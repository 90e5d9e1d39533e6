"""vLLM's ``/v1/responses`` on the simulated engine: the request becomes a chat (``instructions`` as the
system message, ``input`` as the user turn or the message items), the answer one ``message`` output item.
Streams are ``event: <type>`` + ``data:`` SSE events ending with ``response.completed`` (or
``response.incomplete``; no ``[DONE]``), as vLLM sends them."""

from __future__ import annotations

import time
from typing import Any

import msgspec

from brixmesh.engine_sim.errors import ApiError
from brixmesh.engine_sim.protocol import missing_field
from brixmesh.engine_sim.responses import new_id

_ENCODE = msgspec.json.encode


def as_chat_body(body: dict[str, Any]) -> dict[str, Any]:
    """The chat completion request that generates this response."""
    prompt = body.get("input")
    if prompt is None:
        raise missing_field("input", body)
    messages: list[Any] = []
    instructions = body.get("instructions")
    if isinstance(instructions, str) and instructions:
        messages.append({"role": "system", "content": instructions})
    if isinstance(prompt, str):
        messages.append({"role": "user", "content": prompt})
    elif isinstance(prompt, list) and prompt:
        for item in prompt:
            if not isinstance(item, dict) or "role" not in item:
                raise ApiError(400, "only message input items are supported", "BadRequestError", "input")
            content = item.get("content")
            if isinstance(content, list):  # input_text / output_text parts
                content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
            messages.append({"role": item["role"], "content": content})
    else:
        raise ApiError(400, "'input' must be a string or a list of input items", "BadRequestError", "input")
    chat: dict[str, Any] = {"model": body.get("model"), "messages": messages}
    chat["stream"] = body.get("stream", False)
    if body.get("max_output_tokens") is not None:
        chat["max_tokens"] = body["max_output_tokens"]
    for field in ("temperature", "top_p", "seed", "ignore_eos"):
        if body.get(field) is not None:
            chat[field] = body[field]
    return chat


def response_object(
    rid: str, created: int, model: str, body: dict[str, Any], text: str | None, usage: tuple[int, int] | None,
    truncated: bool = False,
) -> dict[str, Any]:
    """The ``response`` object; ``text`` None while in progress."""
    output = []
    if text is not None:
        output.append(
            {
                "id": f"msg_{rid[5:]}",
                "type": "message",
                "role": "assistant",
                "status": "completed",
                "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": None}],
            }
        )
    status = "in_progress" if text is None else "incomplete" if truncated else "completed"
    return {
        "id": rid,
        "object": "response",
        "created_at": created,
        "model": model,
        "status": status,
        "incomplete_details": {"reason": "max_output_tokens"} if truncated and text is not None else None,
        "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"),
        "temperature": body.get("temperature", 1.0),
        "top_p": body.get("top_p", 1.0),
        "tool_choice": body.get("tool_choice", "auto"),
        "tools": body.get("tools", []),
        "parallel_tool_calls": body.get("parallel_tool_calls", True),
        "output": output,
        "usage": None if usage is None else {
            "input_tokens": usage[0],
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": usage[1],
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": usage[0] + usage[1],
        },
    }


def new_response_id() -> tuple[str, int]:
    return "resp_" + new_id("x")[2:], int(time.time())


class EventWriter:
    """Numbered SSE events of one response stream."""

    def __init__(self, rid: str) -> None:
        self.rid = rid
        self.sequence = 0

    def event(self, kind: str, **fields: Any) -> bytes:
        payload = {"type": kind, "sequence_number": self.sequence, **fields}
        self.sequence += 1
        return b"event: " + kind.encode() + b"\ndata: " + _ENCODE(payload) + b"\n\n"

    def text_delta(self, delta: str) -> bytes:
        return self.event(
            "response.output_text.delta",
            item_id=f"msg_{self.rid[5:]}", output_index=0, content_index=0, delta=delta, logprobs=[],
        )
