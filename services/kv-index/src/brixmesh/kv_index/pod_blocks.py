"""The blocks one engine holds right now, as its events say: what a snapshot of the pod contains.

Keyed by medium and engine hash, reference counted: vLLM can store one hash in two physical blocks and remove
it twice. A block is kept as its ``BlockStored`` event and its position in it: tokens and parent are read from
the event only when a snapshot is taken, so the hot path allocates almost nothing. Snapshots list parents
before children, so a reader can re-chain its own hashes.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable

from brixmesh.common.messages import KvAllCleared, KvBlockRemoved, KvBlockStored, KvEvent

# One ``BlockStored`` event as (tokens, hashes, parent, block_size, lora_name, lora_id, cache_salt): an array
# and tuples of ints and strings hold no references, so the cyclic GC never walks a pod's state.
_Stored = tuple[array, tuple[int, ...], "int | None", int, "str | None", "int | None", "str | None"]
_TOKENS, _HASHES, _PARENT, _SIZE, _LORA_NAME, _LORA_ID, _CACHE_SALT = range(7)


class _Medium:
    """Blocks held in one medium, as int-keyed dicts."""

    __slots__ = ("events", "positions", "extra")

    def __init__(self) -> None:
        self.events: dict[int, _Stored] = {}
        self.positions: dict[int, int] = {}
        self.extra: dict[int, int] = {}
        """engine hash -> copies beyond the first"""


class PodBlocks:
    def __init__(self) -> None:
        self._media: dict[str, _Medium] = {}

    def __len__(self) -> int:
        return sum(len(medium.events) for medium in self._media.values())

    def engine_hashes(self, medium: str = "GPU") -> set[int]:
        found = self._media.get(medium)
        return set(found.events) if found is not None else set()

    def _medium(self, name: str | None) -> _Medium:
        name = name or "GPU"
        found = self._media.get(name)
        if found is None:
            found = self._media[name] = _Medium()
        return found

    def apply(self, events: Iterable[KvEvent]) -> None:
        for event in events:
            if isinstance(event, KvBlockStored):
                medium = self._medium(event.medium)
                stored, positions, extra = medium.events, medium.positions, medium.extra
                record = (
                    array("q", event.token_ids), tuple(event.block_hashes), event.parent_block_hash,
                    event.block_size, event.lora_name, event.lora_id, event.cache_salt,
                )  # fmt: skip
                for position, block_hash in enumerate(record[_HASHES]):
                    if block_hash in stored:
                        extra[block_hash] = extra.get(block_hash, 0) + 1
                    else:
                        stored[block_hash] = record
                        positions[block_hash] = position
            elif isinstance(event, KvBlockRemoved):
                medium = self._medium(event.medium)
                stored, positions, extra = medium.events, medium.positions, medium.extra
                for block_hash in event.block_hashes:
                    copies = extra.get(block_hash)
                    if copies is not None:
                        if copies > 1:
                            extra[block_hash] = copies - 1
                        else:
                            del extra[block_hash]
                    elif block_hash in stored:
                        del stored[block_hash]
                        del positions[block_hash]
            elif isinstance(event, KvAllCleared):
                self._media.clear()

    def snapshot_events(self) -> list[KvBlockStored]:
        """One stored event per held copy of each block, every parent before its children."""
        ordered: list[KvBlockStored] = []
        for name, medium in self._media.items():
            emitted: set[int] = set()
            pending = list(medium.events)
            while pending:
                waiting = []
                for block_hash in pending:
                    parent = _parent(medium, block_hash)
                    if parent is not None and parent in medium.events and parent not in emitted:
                        waiting.append(block_hash)
                        continue
                    emitted.add(block_hash)
                    ordered.extend([_as_event(name, medium, block_hash)] * (1 + medium.extra.get(block_hash, 0)))
                if len(waiting) == len(pending):  # a parent cycle cannot happen with real hashes; emit as is
                    for block_hash in waiting:
                        ordered.extend([_as_event(name, medium, block_hash)] * (1 + medium.extra.get(block_hash, 0)))
                    break
                pending = waiting
        return ordered


def _parent(medium: _Medium, block_hash: int) -> int | None:
    record = medium.events[block_hash]
    position = medium.positions[block_hash]
    return record[_HASHES][position - 1] if position else record[_PARENT]


def _as_event(name: str, medium: _Medium, block_hash: int) -> KvBlockStored:
    record = medium.events[block_hash]
    size = record[_SIZE]
    position = medium.positions[block_hash]
    start = position * size
    return KvBlockStored(
        [block_hash], _parent(medium, block_hash), record[_TOKENS][start : start + size].tolist(), size,
        record[_LORA_NAME], name, record[_LORA_ID], None if position else record[_CACHE_SALT],
    )
