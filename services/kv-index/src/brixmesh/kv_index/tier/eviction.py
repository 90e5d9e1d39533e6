"""Eviction policies of the tier's L1, over keys only (pure logic; the store owns the bytes).

S3-FIFO (Yang et al., SOSP '23): a small FIFO takes new keys; a key read while there moves to the main FIFO
when it reaches the small queue's end, otherwise it leaves, remembered in a ghost FIFO (keys only) so that
coming back soon puts it straight into main. Main is a FIFO with reinsertion: a key read since it last
passed the end goes round again (its count decremented). One-time keys (a scan) thus pass through the small
queue without pushing out the re-read working set, which is what makes it scan-resistant; LRU is the usual
alternative, kept for comparison (``bench/kv_tier.py`` measures both on the same traces).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from typing import Protocol

MAX_FREQUENCY = 3
SMALL_FRACTION = 0.1


class EvictionPolicy(Protocol):
    name: str

    def __len__(self) -> int: ...

    def insert(self, key: Hashable) -> None:
        """A key not held before was stored."""

    def hit(self, key: Hashable) -> None:
        """A held key was read."""

    def remove(self, key: Hashable) -> None:
        """A held key leaves for another reason than eviction."""

    def victim(self) -> Hashable | None:
        """Chooses the key to evict and forgets it; None when empty."""


class Lru:
    name = "lru"

    def __init__(self) -> None:
        self._order: OrderedDict[Hashable, None] = OrderedDict()

    def __len__(self) -> int:
        return len(self._order)

    def insert(self, key: Hashable) -> None:
        self._order[key] = None

    def hit(self, key: Hashable) -> None:
        self._order.move_to_end(key)

    def remove(self, key: Hashable) -> None:
        self._order.pop(key, None)

    def victim(self) -> Hashable | None:
        return self._order.popitem(last=False)[0] if self._order else None


class S3Fifo:
    name = "s3fifo"

    def __init__(self, small_fraction: float = SMALL_FRACTION) -> None:
        self.small_fraction = small_fraction
        self._small: OrderedDict[Hashable, int] = OrderedDict()
        """key -> reads since insertion (capped), oldest first"""
        self._main: OrderedDict[Hashable, int] = OrderedDict()
        self._ghost: OrderedDict[Hashable, None] = OrderedDict()

    def __len__(self) -> int:
        return len(self._small) + len(self._main)

    def insert(self, key: Hashable) -> None:
        if key in self._ghost:
            del self._ghost[key]
            self._main[key] = 0
        else:
            self._small[key] = 0

    def hit(self, key: Hashable) -> None:
        for queue in (self._small, self._main):
            count = queue.get(key)
            if count is not None:
                queue[key] = min(count + 1, MAX_FREQUENCY)
                return

    def remove(self, key: Hashable) -> None:
        if self._small.pop(key, None) is None:
            self._main.pop(key, None)

    def victim(self) -> Hashable | None:
        small, main = self._small, self._main
        while small or main:
            if small and (not main or len(small) >= self.small_fraction * len(self)):
                key, count = small.popitem(last=False)
                if count > 0:
                    main[key] = 0
                    continue
                self._remember(key)
                return key
            key, count = main.popitem(last=False)
            if count > 0:
                main[key] = count - 1
                continue
            return key
        return None

    def _remember(self, key: Hashable) -> None:
        ghost = self._ghost
        ghost[key] = None
        while len(ghost) > max(len(self._main), 1):
            ghost.popitem(last=False)
