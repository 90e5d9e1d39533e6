"""Engine KV-event payloads -> normalized :mod:`brixmesh.common.messages` events.

A payload is msgpack ``[ts, events, data_parallel_rank]``. vLLM 0.32 encodes each event as a map with a
``"type"`` key; older vLLM and several simulators as a positional array, tag first. Block hashes are ints
(``VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES=1``, the low 64 bits of the digest) or raw digest bytes; both become
the same u64 (the digest's last 8 bytes), so one pod's stores and removals always agree.
"""

from __future__ import annotations

from typing import Any

import msgspec

from brixmesh.common.messages import PAYLOAD_ERRORS, KvAllCleared, KvBlockRemoved, KvBlockStored, KvEvent

DEFAULT_MEDIUM = "GPU"
_U64 = (1 << 64) - 1

Hash = int | bytes


class PayloadError(ValueError):
    """The payload is not a KV-event batch in any encoding we know."""


class DecodedBatch(msgspec.Struct, gc=False):
    ts: float
    events: list[KvEvent]


# --- map encoding (vLLM >= 0.9): unknown fields (group_idx, locality, ...) are ignored --------------------


class _MapStored(msgspec.Struct, tag="BlockStored", tag_field="type", gc=False):
    block_hashes: list[Hash]
    parent_block_hash: Hash | None
    token_ids: list[int]
    block_size: int
    lora_id: int | None = None
    medium: str | None = None
    lora_name: str | None = None
    extra_keys: list[list[Any] | None] | None = None


class _MapRemoved(msgspec.Struct, tag="BlockRemoved", tag_field="type", gc=False):
    block_hashes: list[Hash]
    medium: str | None = None


class _MapCleared(msgspec.Struct, tag="AllBlocksCleared", tag_field="type", gc=False):
    """vLLM 0.32 map form: only the ``type`` key."""


class _MapBatch(msgspec.Struct, array_like=True, gc=False):
    ts: float
    events: list[_MapStored | _MapRemoved | _MapCleared]
    data_parallel_rank: int | None = None


# --- positional encoding (older vLLM, legacy simulators) ----------------------------------------------


class _ArrayStored(msgspec.Struct, tag="BlockStored", array_like=True, gc=False):
    block_hashes: list[Hash]
    parent_block_hash: Hash | None
    token_ids: list[int]
    block_size: int
    lora_id: int | None = None
    medium: str | None = None
    lora_name: str | None = None
    extra_keys: list[list[Any] | None] | None = None


class _ArrayRemoved(msgspec.Struct, tag="BlockRemoved", array_like=True, gc=False):
    block_hashes: list[Hash]
    medium: str | None = None


class _ArrayCleared(msgspec.Struct, tag="AllBlocksCleared", array_like=True, gc=False):
    """Legacy positional form: only the tag."""


class _ArrayBatch(msgspec.Struct, array_like=True, gc=False):
    ts: float
    events: list[_ArrayStored | _ArrayRemoved | _ArrayCleared]
    data_parallel_rank: int | None = None


_map_decoder = msgspec.msgpack.Decoder(_MapBatch)
_array_decoder = msgspec.msgpack.Decoder(_ArrayBatch)


def to_u64(value: Hash) -> int:
    if isinstance(value, int):
        return value & _U64
    if not value:
        raise PayloadError("empty block hash")
    return int.from_bytes(value[-8:], "big")


def first_block_salt(extra_keys: list[list[Any] | None] | None, lora_name: str | None) -> str | None:
    """The ``cache_salt`` among the request's first block's extra keys. Events publish the keys untagged, in
    vLLM's order (LoRA name, then the salt), so the salt is what follows the LoRA name."""
    keys = extra_keys[0] if extra_keys else None
    if not keys:
        return None
    rest = keys[1:] if lora_name is not None and keys[0] == lora_name else keys
    salt = rest[-1] if rest else None
    return salt if isinstance(salt, str) and salt else None


def decode_payload(payload: bytes) -> DecodedBatch:
    """Decode one ZMQ payload frame; raises :class:`PayloadError` with a one-line reason."""
    batch: _MapBatch | _ArrayBatch
    try:
        batch = _map_decoder.decode(payload)
    except msgspec.ValidationError as map_error:  # (a DecodeError subclass: catch it first)
        try:
            batch = _array_decoder.decode(payload)
        except PAYLOAD_ERRORS:
            raise PayloadError(f"not a KV-event batch: {map_error}") from None
    except PAYLOAD_ERRORS as exc:
        raise PayloadError(f"not msgpack: {exc}") from None
    return DecodedBatch(batch.ts, [_normalize(event) for event in batch.events])


def _normalize(event: Any) -> KvEvent:
    if isinstance(event, (_MapStored, _ArrayStored)):
        hashes = [h & _U64 if h.__class__ is int else to_u64(h) for h in event.block_hashes]
        if event.block_size <= 0:
            raise PayloadError(f"BlockStored with block_size {event.block_size}")
        if len(event.token_ids) != event.block_size * len(hashes):
            raise PayloadError(
                f"BlockStored with {len(event.token_ids)} tokens for {len(hashes)} blocks of {event.block_size}"
            )
        parent = to_u64(event.parent_block_hash) if event.parent_block_hash is not None else None
        return KvBlockStored(
            hashes,
            parent,
            event.token_ids,
            event.block_size,
            event.lora_name,
            event.medium or DEFAULT_MEDIUM,
            event.lora_id if event.lora_name is None else None,
            first_block_salt(event.extra_keys, event.lora_name) if parent is None else None,
        )
    if isinstance(event, (_MapRemoved, _ArrayRemoved)):
        return KvBlockRemoved(
            [h & _U64 if h.__class__ is int else to_u64(h) for h in event.block_hashes], event.medium or DEFAULT_MEDIUM
        )
    return KvAllCleared()
