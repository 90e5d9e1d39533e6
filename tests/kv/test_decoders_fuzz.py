"""Hypothesis on the KV-event path: engine payload decoding never raises anything but PayloadError, the
router's batch decoding only msgspec's decode errors (counted and skipped), and batch splitting keeps every
event under the byte budget."""

from __future__ import annotations

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from brixmesh.common.messages import (
    PAYLOAD_ERRORS, KvAllCleared, KvBlockRemoved, KvBlockStored, KvEvent, KvEventBatch,
)
from brixmesh.kv_index.decode import PayloadError, decode_payload
from brixmesh.kv_index.split import split_events

_ints = st.integers(min_value=-(1 << 63), max_value=(1 << 64) - 1)
_msgpack_values = st.recursive(
    st.none() | st.booleans() | _ints | st.floats() | st.text(max_size=12) | st.binary(max_size=12),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=12), inner, max_size=5),
    max_leaves=30,
)
_event_maps = st.fixed_dictionaries(
    {"type": st.sampled_from(["BlockStored", "BlockRemoved", "AllBlocksCleared", "Other"])},
    optional={
        "block_hashes": st.lists(_ints | st.binary(max_size=9), max_size=4),
        "parent_block_hash": st.none() | _ints | st.binary(max_size=9),
        "token_ids": st.lists(_ints, max_size=8),
        "block_size": _ints,
        "medium": st.none() | st.text(max_size=4),
        "lora_name": st.none() | st.text(max_size=4),
        "lora_id": st.none() | _ints,
    },
)
_payloads = (
    st.binary(max_size=256)
    | _msgpack_values.map(msgspec.msgpack.encode)
    | st.tuples(st.floats(), st.lists(_event_maps | _msgpack_values, max_size=4), st.none() | _ints).map(
        msgspec.msgpack.encode
    )
)


@settings(max_examples=500, deadline=None)
@given(_payloads)
def test_engine_payload_decoding_raises_only_payload_errors(payload: bytes) -> None:
    try:
        batch = decode_payload(payload)
    except PayloadError:
        return
    for event in batch.events:
        if isinstance(event, KvBlockStored):
            assert len(event.token_ids) == event.block_size * len(event.block_hashes) and event.block_size > 0
        if isinstance(event, (KvBlockStored, KvBlockRemoved)):
            assert all(0 <= h < 1 << 64 for h in event.block_hashes)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=256) | _msgpack_values.map(msgspec.msgpack.encode))
def test_router_batch_decoding_raises_only_decode_errors(payload: bytes) -> None:
    """What the router's IndexFollower catches, counts and skips."""
    try:
        msgspec.msgpack.decode(payload, type=KvEventBatch)
    except PAYLOAD_ERRORS:
        pass


_hashes = st.integers(min_value=0, max_value=(1 << 64) - 1)
_token = st.integers(min_value=0, max_value=(1 << 32) - 1)


@st.composite
def _stored(draw: st.DrawFn) -> KvBlockStored:
    block_size = draw(st.integers(1, 16))
    hashes = draw(st.lists(_hashes, min_size=1, max_size=40))
    tokens = draw(st.lists(_token, min_size=block_size * len(hashes), max_size=block_size * len(hashes)))
    lora = draw(st.none() | st.just("a"))
    return KvBlockStored(hashes, draw(st.none() | _hashes), tokens, block_size, lora)


_events = st.lists(
    _stored() | st.builds(KvBlockRemoved, st.lists(_hashes, max_size=200)) | st.just(KvAllCleared()),
    max_size=12,
)


def _blocks(events: list[KvEvent]) -> list[tuple[str, int, int | None, list[int]]]:
    """Each block with its parent and tokens: what an index learns from the events, in order."""
    out: list[tuple[str, int, int | None, list[int]]] = []
    for event in events:
        if isinstance(event, KvBlockStored):
            parent = event.parent_block_hash
            for i, block in enumerate(event.block_hashes):
                tokens = event.token_ids[i * event.block_size : (i + 1) * event.block_size]
                out.append(("stored", block, parent, tokens))
                parent = block
        elif isinstance(event, KvBlockRemoved):
            out += [("removed", block, None, []) for block in event.block_hashes]
        else:
            out.append(("cleared", 0, None, []))
    return out


@settings(max_examples=300, deadline=None)
@given(_events, st.integers(min_value=400, max_value=4000))
def test_split_keeps_every_event_in_order_under_the_budget(events: list[KvEvent], budget: int) -> None:
    groups = split_events(events, budget)
    assert all(len(msgspec.msgpack.encode(group)) <= budget for group in groups)
    assert _blocks([event for group in groups for event in group]) == _blocks(events)
