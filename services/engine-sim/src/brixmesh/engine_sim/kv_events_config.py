"""``--kv-events-config`` as vLLM 0.32 parses it: a JSON object with vLLM's keys and defaults.

| key | default | meaning |
|---|---|---|
| ``enable_kv_cache_events`` | false | emit events at all |
| ``publisher`` | ``"zmq"`` if enabled else ``"null"`` | ``"zmq"`` or ``"null"`` |
| ``endpoint`` | ``tcp://*:5557`` | PUB; binds for ``*``, ``::``, ``ipc://``, ``inproc://``, else connects |
| ``replay_endpoint`` | null | ROUTER address for replay; always binds |
| ``buffer_steps`` | 10000 | batches kept for replay |
| ``hwm`` | 100000 | PUB send high-water mark |
| ``max_queue_size`` | 100000 | batches waiting for the publisher thread |
| ``topic`` | ``""`` | first frame of every message |

Data-parallel rank ``r`` publishes on the endpoint's port + ``r`` (``inproc://x`` -> ``inproc://x_dp<r>``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

PublisherKind = Literal["null", "zmq"]
_PUBLISHERS = ("null", "zmq")


@dataclass(frozen=True, slots=True)
class KvEventsConfig:
    enable_kv_cache_events: bool = False
    publisher: PublisherKind = "null"
    endpoint: str = "tcp://*:5557"
    replay_endpoint: str | None = None
    buffer_steps: int = 10_000
    hwm: int = 100_000
    max_queue_size: int = 100_000
    topic: str = ""

    @property
    def publishes(self) -> bool:
        """True when a ZMQ publisher must be started."""
        return self.enable_kv_cache_events and self.publisher == "zmq"


_FIELDS: dict[str, tuple[type, ...]] = {
    "enable_kv_cache_events": (bool,),
    "publisher": (str,),
    "endpoint": (str,),
    "replay_endpoint": (str,),
    "buffer_steps": (int,),
    "hwm": (int,),
    "max_queue_size": (int,),
    "topic": (str,),
}
_NULLABLE = {"publisher", "replay_endpoint"}


def parse_kv_events_config(raw: str | Mapping[str, Any]) -> KvEventsConfig:
    """Parse the flag's JSON (or an already decoded mapping); raises ValueError with a one-line reason."""
    if isinstance(raw, str):
        try:
            data = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ValueError(
                f"--kv-events-config is not valid JSON: {exc.msg} at position {exc.pos}"
            ) from None
    else:
        data = dict(raw)
    if not isinstance(data, dict):
        raise ValueError("--kv-events-config must be a JSON object")  # noqa: TRY004 (a bad flag value)
    unknown = sorted(set(data) - set(_FIELDS))
    if unknown:
        raise ValueError(
            f"--kv-events-config has unknown key(s) {', '.join(unknown)}; allowed: {', '.join(_FIELDS)}"
        )
    for key, value in data.items():
        if value is None and key in _NULLABLE:
            continue
        expected = _FIELDS[key]
        # bool is an int subclass; a count given as true/false is a mistake.
        if not isinstance(value, expected) or (expected == (int,) and isinstance(value, bool)):
            raise ValueError(f"--kv-events-config: {key} must be {expected[0].__name__}, got {value!r}")
        if expected == (int,) and value < 0:
            raise ValueError(f"--kv-events-config: {key} must be >= 0, got {value}")
    enabled = data.get("enable_kv_cache_events", False)
    publisher = data.get("publisher")
    if publisher is None:
        publisher = "zmq" if enabled else "null"
    if publisher not in _PUBLISHERS:
        raise ValueError(f"--kv-events-config: publisher must be 'zmq' or 'null', got {publisher!r}")
    data["publisher"] = publisher
    return KvEventsConfig(**data)


def should_bind(endpoint: str) -> bool:
    """vLLM's rule: bind for wildcard hosts and ipc/inproc, connect otherwise."""
    return "*" in endpoint or "::" in endpoint or endpoint.startswith(("ipc://", "inproc://"))


def offset_endpoint(endpoint: str, data_parallel_rank: int) -> str:
    """The endpoint data-parallel rank ``data_parallel_rank`` uses (port + rank, inproc gets a suffix)."""
    if data_parallel_rank == 0:
        return endpoint
    if "inproc" in endpoint:
        return f"{endpoint}_dp{data_parallel_rank}"
    if "tcp" in endpoint:
        base, sep, port = endpoint.rpartition(":")
        if port == "*":  # an ephemeral port is distinct per socket already
            return endpoint
        if not sep or not port.isdigit():
            raise ValueError(
                f"cannot offset KV event endpoint {endpoint!r} by data-parallel rank: no numeric port"
            )
        return f"{base}:{int(port) + data_parallel_rank}"
    raise ValueError(
        f"invalid KV event endpoint {endpoint!r} for data-parallel rank > 0: must be inproc or tcp"
    )
