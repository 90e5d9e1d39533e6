"""The blocks one engine holds right now, as its events say: what a snapshot of the pod contains.

Keyed by (medium, engine hash) and reference counted: vLLM can store one hash in two physical blocks and
remove it twice. Snapshots list parents before children, so a reader can re-chain its own hashes.
"""

from __future__ import annotations

from collections.abc import Iterable

from brixmesh.common.messages import KvAllCleared, KvBlockRemoved, KvBlockStored, KvEvent


class _Block:
    __slots__ = ("parent", "tokens", "block_size", "lora_name", "lora_id", "count")

    def __init__(
        self, parent: int | None, tokens: list[int], block_size: int, lora_name: str | None, lora_id: int | None
    ) -> None:
        self.parent = parent
        self.tokens = tokens
        self.block_size = block_size
        self.lora_name = lora_name
        self.lora_id = lora_id
        self.count = 1


class PodBlocks:
    def __init__(self) -> None:
        self._blocks: dict[tuple[str, int], _Block] = {}

    def __len__(self) -> int:
        return len(self._blocks)

    def engine_hashes(self, medium: str = "GPU") -> set[int]:
        return {block_hash for held_in, block_hash in self._blocks if held_in == medium}

    def apply(self, events: Iterable[KvEvent]) -> None:
        for event in events:
            if isinstance(event, KvBlockStored):
                self._store(event)
            elif isinstance(event, KvBlockRemoved):
                medium = event.medium or "GPU"
                for block_hash in event.block_hashes:
                    key = (medium, block_hash)
                    block = self._blocks.get(key)
                    if block is not None:
                        block.count -= 1
                        if block.count <= 0:
                            del self._blocks[key]
            elif isinstance(event, KvAllCleared):
                self._blocks.clear()

    def _store(self, event: KvBlockStored) -> None:
        medium = event.medium or "GPU"
        size = event.block_size
        parent = event.parent_block_hash
        for i, block_hash in enumerate(event.block_hashes):
            key = (medium, block_hash)
            block = self._blocks.get(key)
            if block is None:
                tokens = event.token_ids[i * size : (i + 1) * size]
                self._blocks[key] = _Block(parent, tokens, size, event.lora_name, event.lora_id)
            else:
                block.count += 1
            parent = block_hash

    def snapshot_events(self) -> list[KvBlockStored]:
        """One stored event per held copy of each block, every parent before its children."""
        emitted: set[tuple[str, int]] = set()
        ordered: list[KvBlockStored] = []
        pending = list(self._blocks.items())
        while pending:
            waiting = []
            for key, block in pending:
                medium, block_hash = key
                if block.parent is not None and (medium, block.parent) in self._blocks and (
                    medium,
                    block.parent,
                ) not in emitted:
                    waiting.append((key, block))
                    continue
                emitted.add(key)
                event = KvBlockStored(
                    [block_hash], block.parent, block.tokens, block.block_size, block.lora_name, medium, block.lora_id
                )
                ordered.extend([event] * block.count)
            if len(waiting) == len(pending):  # a parent cycle cannot happen with real hashes; emit as is
                for key, block in waiting:
                    event = KvBlockStored(
                        [key[1]], block.parent, block.tokens, block.block_size, block.lora_name, key[0], block.lora_id
                    )
                    ordered.extend([event] * block.count)
                break
            pending = waiting
        return ordered
