"""Cut KV events into groups whose encoded batch fits a byte budget (NATS's ``max_payload``), in order.

A long prefill is one ``KvBlockStored`` holding every block and all their token ids: alone it may exceed the
budget, so a store is cut by blocks (each piece's parent is the last block of the piece before) and a removal
by hashes. Nothing is dropped: the pieces, applied in order, leave an index exactly as the whole event would.
"""

from __future__ import annotations

import msgspec

from brixmesh.common.messages import KvBlockRemoved, KvBlockStored, KvEvent

_encoder = msgspec.msgpack.Encoder()
_ARRAY_HEADER = 5
"""Most bytes msgpack spends on an array's length."""
_HASH = 9
"""Most bytes of one u64 block hash."""
_TOKEN = 5
"""Most bytes of one token id (u32)."""


class EventTooLarge(ValueError):
    """Not even one block of an event fits the budget."""


def split_events(events: list[KvEvent], budget: int) -> list[list[KvEvent]]:
    """``events`` in consecutive groups, each encoding (as a msgpack array) to at most ``budget`` bytes;
    at least one group. Raises :class:`EventTooLarge` when one block alone exceeds the budget."""
    room = budget - _ARRAY_HEADER
    groups: list[list[KvEvent]] = [[]]
    used = 0
    for event in events:
        size = len(_encoder.encode(event))
        if size <= room:
            pieces = [(event, size)]
        else:
            pieces = [(piece, len(_encoder.encode(piece))) for piece in _pieces(event, room)]
        for piece, piece_size in pieces:
            if used + piece_size > room and groups[-1]:
                groups.append([])
                used = 0
            groups[-1].append(piece)
            used += piece_size
    return groups


def _pieces(event: KvEvent, room: int) -> list[KvEvent]:
    if isinstance(event, KvBlockStored):
        fixed = len(_encoder.encode(msgspec.structs.replace(event, block_hashes=[], token_ids=[])))
        per_block = _HASH + _TOKEN * event.block_size
        count = (room - fixed - 2 * _ARRAY_HEADER) // per_block
        if count < 1:
            raise EventTooLarge(f"one block of {event.block_size} tokens does not fit {room} bytes")
        hashes, size = event.block_hashes, event.block_size
        return [
            msgspec.structs.replace(
                event,
                block_hashes=hashes[i : i + count],
                parent_block_hash=hashes[i - 1] if i else event.parent_block_hash,
                token_ids=event.token_ids[i * size : (i + count) * size],
            )
            for i in range(0, len(hashes), count)
        ]
    if isinstance(event, KvBlockRemoved):
        fixed = len(_encoder.encode(msgspec.structs.replace(event, block_hashes=[])))
        count = (room - fixed - _ARRAY_HEADER) // _HASH
        if count < 1:
            raise EventTooLarge(f"one block removal does not fit {room} bytes")
        hashes = event.block_hashes
        return [
            msgspec.structs.replace(event, block_hashes=hashes[i : i + count])
            for i in range(0, len(hashes), count)
        ]
    raise EventTooLarge(f"a {type(event).__name__} event does not fit {room} bytes")
