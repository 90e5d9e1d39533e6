"""The tier's L1: values in CPU DRAM slabs under a byte budget, evicted by an :mod:`.eviction` policy.

Values are kept in size classes (steps of a quarter power of two, at least 4 KiB, so at most 25 % is lost
to rounding; KV blocks of one deployment all fall in one class). A class takes whole slabs
(``slab_bytes``, or one chunk if larger) while the budget lasts, then makes room by evicting its own
keys, each class with its own policy, as memcached does; a class that holds nothing to evict and finds the
budget spent refuses the value (a miss later, counted). Pure logic apart from the bytes: no I/O, no clock.

A put lands in two steps so the socket can write straight into the slab: :meth:`SlabStore.reserve` hands
out the chunk (evicting if needed) and :meth:`SlabStore.commit` makes it visible once filled, or
:meth:`SlabStore.release` returns it when the frame broke off.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass, field

from brixmesh.kv_index.tier.eviction import EvictionPolicy

MIN_CHUNK = 4096
DEFAULT_SLAB_BYTES = 16 << 20


def chunk_size(size: int) -> int:
    """The size class of a value of ``size`` bytes: the next of 1, 1.25, 1.5, 1.75 times a power of two."""
    if size <= MIN_CHUNK:
        return MIN_CHUNK
    power = 1 << (size - 1).bit_length() - 1
    for quarter in (5, 6, 7, 8):
        candidate = power * quarter // 4
        if candidate >= size:
            return candidate
    raise AssertionError("unreachable: 2 * power >= size")


@dataclass(slots=True)
class Chunk:
    size_class: int
    slab: int
    offset: int
    size: int = 0


@dataclass(slots=True)
class _SizeClass:
    chunk: int
    policy: EvictionPolicy
    slabs: list[bytearray] = field(default_factory=list)
    free: list[Chunk] = field(default_factory=list)


@dataclass(slots=True)
class StoreCounters:
    hits: int = 0
    misses: int = 0
    evictions: int = 0
    rejected: int = 0


class SlabStore:
    def __init__(
        self,
        budget_bytes: int,
        policy_factory: Callable[[], EvictionPolicy],
        slab_bytes: int = DEFAULT_SLAB_BYTES,
        on_evict: Callable[[Hashable, memoryview], None] | None = None,
    ) -> None:
        self.budget_bytes = budget_bytes
        self.slab_bytes = slab_bytes
        self._policy_factory = policy_factory
        self._on_evict = on_evict
        self._classes: dict[int, _SizeClass] = {}
        self._entries: dict[Hashable, Chunk] = {}
        self.allocated_bytes = 0
        self.used_bytes = 0
        self.counters = StoreCounters()
        self.policy_name = policy_factory().name

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._entries

    def view(self, chunk: Chunk) -> memoryview:
        slab = self._classes[chunk.size_class].slabs[chunk.slab]
        return memoryview(slab)[chunk.offset : chunk.offset + chunk.size]

    def get(self, key: Hashable) -> memoryview | None:
        """The value (a view into its slab: valid until the next reserve), counted as a hit or a miss."""
        chunk = self._entries.get(key)
        if chunk is None:
            self.counters.misses += 1
            return None
        self.counters.hits += 1
        self._classes[chunk.size_class].policy.hit(key)
        return self.view(chunk)

    def peek(self, key: Hashable) -> memoryview | None:
        """The value without counting a read."""
        chunk = self._entries.get(key)
        return None if chunk is None else self.view(chunk)

    def reserve(self, size: int) -> Chunk | None:
        """A chunk for a value of ``size`` bytes, evicting in its class when the budget is spent; None: no
        room."""
        chunk = chunk_size(size)
        size_class = self._classes.get(chunk)
        if size_class is None:
            size_class = self._classes[chunk] = _SizeClass(chunk, self._policy_factory())
        if not size_class.free and not self._grow(size_class):
            self._evict(size_class)
        if not size_class.free:
            self.counters.rejected += 1
            return None
        found = size_class.free.pop()
        found.size = size
        return found

    def commit(self, key: Hashable, chunk: Chunk) -> bool:
        """Makes a filled chunk visible under ``key``; False (chunk returned) when ``key`` got stored
        meanwhile."""
        if key in self._entries:
            self.release(chunk)
            return False
        self._entries[key] = chunk
        self._classes[chunk.size_class].policy.insert(key)
        self.used_bytes += chunk.size_class
        return True

    def release(self, chunk: Chunk) -> None:
        self._classes[chunk.size_class].free.append(chunk)

    def _grow(self, size_class: _SizeClass) -> bool:
        slab_bytes = max(self.slab_bytes // size_class.chunk, 1) * size_class.chunk
        if self.allocated_bytes + slab_bytes > self.budget_bytes:
            return False
        slab = len(size_class.slabs)
        size_class.slabs.append(bytearray(slab_bytes))
        offsets = reversed(range(0, slab_bytes, size_class.chunk))
        size_class.free.extend(Chunk(size_class.chunk, slab, offset) for offset in offsets)
        self.allocated_bytes += slab_bytes
        return True

    def _evict(self, size_class: _SizeClass) -> None:
        key = size_class.policy.victim()
        if key is None:
            return
        chunk = self._entries.pop(key)
        if self._on_evict is not None:
            self._on_evict(key, self.view(chunk))
        self.used_bytes -= chunk.size_class
        self.counters.evictions += 1
        size_class.free.append(chunk)
