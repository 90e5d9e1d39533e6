"""KV cache event schemas, byte-compatible with vLLM 0.32's ZMQ payloads.

Default ("map") encoding, what vLLM 0.32 sends: a batch is a msgpack array ``[ts, events, dp_rank]``;
each event is a msgpack map with ``"type": "<Class>"`` first, then its fields in declaration order;
fields whose default is None are omitted while None, the others are always present (maybe null).

Legacy ("array") encoding, what older vLLM and several simulators send: each event is a positional
array with the tag first, e.g. ``["BlockStored", hashes, parent, token_ids, block_size, lora_id, medium]``.

:func:`encode_batch` produces either; the cache (``kv_cache.py``) only builds the map-form structs.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

EventEncoding = Literal["map", "array"]
MEDIUM_GPU = "GPU"
FULL_ATTENTION = "full_attention"


class KvCacheEvent(msgspec.Struct, tag=True, omit_defaults=True, gc=False):
    """Base of the three event kinds; the msgspec tag is the class name under the key ``type``."""


class BlockStored(KvCacheEvent):
    block_hashes: list[int | bytes]
    parent_block_hash: int | bytes | None
    token_ids: list[int]
    block_size: int
    lora_id: int | None
    medium: str | None
    lora_name: str | None
    extra_keys: list[list[Any] | None] | None = None
    group_idx: int | None = None
    kv_cache_spec_kind: str | None = None
    kv_cache_spec_sliding_window: int | None = None
    locality: str | None = None  # LOCAL/REMOTE (offloading connectors; never set by the simulator)
    ownership: str | None = None  # offload tier (likewise)
    session_id: str | None = None  # the request's ``session_id`` body field


class BlockRemoved(KvCacheEvent):
    block_hashes: list[int | bytes]
    medium: str | None
    group_idx: int | None = None
    locality: str | None = None
    ownership: str | None = None


class AllBlocksCleared(KvCacheEvent):
    """The whole prefix cache was dropped (published lazily at the next engine step)."""


KvEvent = BlockStored | BlockRemoved | AllBlocksCleared


class EventBatch(msgspec.Struct, array_like=True, omit_defaults=True, gc=False):
    ts: float
    events: list[Any]
    data_parallel_rank: int | None = None


class _LegacyBlockStored(msgspec.Struct, tag="BlockStored", array_like=True, gc=False):
    block_hashes: list[int | bytes]
    parent_block_hash: int | bytes | None
    token_ids: list[int]
    block_size: int
    lora_id: int | None
    medium: str | None


class _LegacyBlockRemoved(msgspec.Struct, tag="BlockRemoved", array_like=True, gc=False):
    block_hashes: list[int | bytes]
    medium: str | None


class _LegacyAllBlocksCleared(msgspec.Struct, tag="AllBlocksCleared", array_like=True, gc=False):
    """Pre-0.32 positional form: just the tag."""


def _to_legacy(event: KvEvent) -> msgspec.Struct:
    if isinstance(event, BlockStored):
        return _LegacyBlockStored(
            event.block_hashes,
            event.parent_block_hash,
            event.token_ids,
            event.block_size,
            event.lora_id,
            event.medium,
        )
    if isinstance(event, BlockRemoved):
        return _LegacyBlockRemoved(event.block_hashes, event.medium)
    return _LegacyAllBlocksCleared()


_ENCODER = msgspec.msgpack.Encoder()


def encode_batch(
    events: list[KvEvent], ts: float, data_parallel_rank: int, encoding: EventEncoding = "map"
) -> bytes:
    """The third ZMQ frame of one engine step's message."""
    if encoding == "map":
        body: list[Any] = list(events)
    elif encoding == "array":
        body = [_to_legacy(e) for e in events]
    else:
        raise ValueError(f"unknown KV event encoding {encoding!r}; expected 'map' or 'array'")
    return _ENCODER.encode(EventBatch(ts, body, data_parallel_rank))
