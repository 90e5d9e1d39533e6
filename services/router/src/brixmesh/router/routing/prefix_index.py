"""Approximate prefix index: which pod this router fleet sent which prompt prefix to.

Prompts are cut into fixed-size character blocks; block i's hash chains block i-1's (xxh64, seeded by the
model name and the request's ``cache_salt``) so a hash identifies the whole prefix up to it, and requests with
different salts never match. The index is an LRU of hash -> {pod: last use}
with a time-to-live; a pod's match is the number of leading blocks it holds contiguously.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable

import xxhash


def prefix_hashes(
    text: str, model: str, block_chars: int = 64, max_blocks: int = 256, cache_salt: str | None = None
) -> list[int]:
    """Chained hashes of the full blocks of ``text`` (a trailing partial block is ignored)."""
    hashes: list[int] = []
    seed = xxhash.xxh64_intdigest(model.encode())
    if cache_salt:
        seed = xxhash.xxh64_intdigest(b"cache_salt\x00" + cache_salt.encode(), seed=seed)
    encoded = text.encode()
    full = min(len(encoded) // block_chars, max_blocks)
    previous = seed
    for i in range(full):
        previous = xxhash.xxh64_intdigest(encoded[i * block_chars : (i + 1) * block_chars], seed=previous)
        hashes.append(previous)
    return hashes


class PrefixIndex:
    def __init__(self, capacity_blocks: int = 200_000, ttl_s: float = 1200.0) -> None:
        self.capacity_blocks = capacity_blocks
        self.ttl_s = ttl_s
        self._blocks: OrderedDict[int, dict[str, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._blocks)

    def insert(self, hashes: Iterable[int], pod: str, now: float) -> None:
        blocks = self._blocks
        for block in hashes:
            holders = blocks.get(block)
            if holders is None:
                blocks[block] = {pod: now}
            else:
                holders[pod] = now
                blocks.move_to_end(block)
        while len(blocks) > self.capacity_blocks:
            blocks.popitem(last=False)

    def match(self, hashes: list[int], pods: Iterable[str], now: float) -> dict[str, int]:
        """Leading blocks of ``hashes`` each pod holds (entries older than the TTL do not count)."""
        remaining = set(pods)
        matched = dict.fromkeys(remaining, 0)
        oldest = now - self.ttl_s
        for depth, block in enumerate(hashes):
            holders = self._blocks.get(block)
            if not holders:
                break
            still = {pod for pod in remaining if holders.get(pod, oldest) > oldest}
            for pod in still:
                matched[pod] = depth + 1
            remaining = still
            if not remaining:
                break
        return matched

    def forget_pod(self, pod: str) -> None:
        for holders in self._blocks.values():
            holders.pop(pod, None)
