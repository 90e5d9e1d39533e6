"""The reference model the KV indexes are checked against: each block hash held as many times as it was
stored and not yet removed (vLLM stores and removes duplicates of one hash independently)."""

from __future__ import annotations

from collections.abc import Iterable

from brixmesh.common.messages import KvBlockRemoved, KvBlockStored


def track_held(held: dict[int, int], events: Iterable[object]) -> None:
    for event in events:
        if isinstance(event, KvBlockStored):
            for h in event.block_hashes:
                held[h] = held.get(h, 0) + 1
        elif isinstance(event, KvBlockRemoved):
            for h in event.block_hashes:
                if held.get(h):
                    held[h] -= 1
                    if not held[h]:
                        del held[h]
