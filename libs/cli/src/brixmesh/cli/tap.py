"""``brixmesh tap``: decode every message on the given subjects with its declared schema, one line each."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from typing import Any

import msgspec
from nats.aio.msg import Msg

from brixmesh.common.bus import Bus, NatsAuth, decoder_for
from brixmesh.common.messages import PAYLOAD_ERRORS
from brixmesh.common.subjects import schema_for

_MAX_LIST = 8


def describe(subject: str, data: bytes) -> tuple[str, Any]:
    """(schema name, decoded builtins) for a declared subject; raw facts otherwise."""
    declared = schema_for(subject)
    if declared is None:
        try:
            return "raw", json.loads(data)
        except (ValueError, UnicodeDecodeError):
            return "raw", {"bytes": len(data)}
    try:
        return declared.schema.__name__, msgspec.to_builtins(decoder_for(declared.schema).decode(data))
    except PAYLOAD_ERRORS as exc:
        return "undecodable", {"bytes": len(data), "error": str(exc)}


def readable(value: Any) -> str:
    if isinstance(value, dict):
        return " ".join(f"{k}={readable(v)}" for k, v in value.items() if v not in ("", None, [], {}))
    if isinstance(value, list):
        shown = ",".join(_compact(v) for v in value[:_MAX_LIST])
        more = f",…(+{len(value) - _MAX_LIST})" if len(value) > _MAX_LIST else ""
        return f"[{shown}{more}]"
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 1e6 else f"{value:.0f}"
    return str(value)


def _compact(value: Any) -> str:
    if isinstance(value, dict):
        return "{" + readable(value) + "}"
    return readable(value)


async def tap(
    nats_url: str,
    auth: NatsAuth,
    patterns: list[str],
    *,
    as_json: bool,
    count: int | None,
    timeout_s: float | None,
) -> int:
    bus = await Bus.connect(nats_url, name="brixmesh-tap", setting="--nats-url", auth=auth)
    seen = 0
    done = asyncio.Event()

    async def on_message(msg: Msg) -> None:
        nonlocal seen
        if done.is_set():
            return
        schema, data = describe(msg.subject, msg.data)
        if as_json:
            line = json.dumps({"ts": time.time(), "subject": msg.subject, "schema": schema, "data": data})
        else:
            line = f"{time.strftime('%H:%M:%S')} {msg.subject} {schema} {readable(data)}"
        sys.stdout.write(line + "\n")
        sys.stdout.flush()
        seen += 1
        if count is not None and seen >= count:
            done.set()

    for pattern in patterns:
        await bus.client.subscribe(pattern, cb=on_message)
    try:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(done.wait(), timeout_s)
    finally:
        await bus.close()
    return 0 if count is None or seen >= count else 1
