"""The tier's L1: values in CPU DRAM slabs under a byte budget, evicted by an :mod:`.eviction` policy.

Values are kept in size classes (steps of a quarter power of two, at least 4 KiB, so at most 25 % is lost
to rounding; KV blocks of one deployment all fall in one class). A class takes whole slabs
(``slab_bytes``, or one chunk if larger) while the budget lasts, then makes room by evicting its own
keys, each class with its own policy, as memcached does; a class that holds nothing to evict and finds the
budget spent refuses the value (a miss later, counted). Pure logic apart from the bytes: no I/O, no clock.

A put lands in two steps so the socket can write straight into the slab: :meth:`SlabStore.reserve` hands
out the chunk (evicting if needed) and :meth:`SlabStore.commit` makes it visible once filled, or
:meth:`SlabStore.release` returns it when the frame broke off. A get's reply is sent straight from the
slab: :meth:`SlabStore.pin` keeps an evicted chunk from reuse until :meth:`SlabStore.unpin`.

``preallocate`` takes the whole budget at start and touches every page, so puts land in memory that is
already mapped (a fresh page costs a fault and zeroing on first write, which halves put throughput).
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
    pins: int = 0
    """Replies still sending from this chunk: it is not reused before they are sent."""
    evicted: bool = False


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
        preallocate: bool = False,
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
        self._spare: list[bytearray] = []
        """Preallocated slabs not given to a size class yet."""
        if preallocate:
            for _ in range(budget_bytes // slab_bytes):
                slab = bytearray(slab_bytes)
                slab[::4096] = bytes(len(range(0, slab_bytes, 4096)))
                self._spare.append(slab)
            self.allocated_bytes = len(self._spare) * slab_bytes

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._entries

    def view(self, chunk: Chunk) -> memoryview:
        slab = self._classes[chunk.size_class].slabs[chunk.slab]
        return memoryview(slab)[chunk.offset : chunk.offset + chunk.size]

    def follows(self, first: Chunk, second: Chunk) -> bool:
        """Whether ``second`` starts where ``first`` ends, in the same slab."""
        return (first.size_class == second.size_class and first.slab == second.slab
                and second.offset == first.offset + first.size_class)  # fmt: skip

    def span(self, view: memoryview, chunk: Chunk) -> memoryview:
        """``view`` (ending where ``chunk`` starts) extended over ``chunk``'s value."""
        start = chunk.offset - view.nbytes
        slab = self._classes[chunk.size_class].slabs[chunk.slab]
        return memoryview(slab)[start : chunk.offset + chunk.size]

    def get(self, key: Hashable) -> Chunk | None:
        """The value's chunk (``view`` it; valid until the next reserve unless pinned), counted as a hit or
        a miss."""
        chunk = self._entries.get(key)
        if chunk is None:
            self.counters.misses += 1
            return None
        self.counters.hits += 1
        self._classes[chunk.size_class].policy.hit(key)
        return chunk

    def peek(self, key: Hashable) -> Chunk | None:
        """The value's chunk without counting a read."""
        return self._entries.get(key)

    def pin(self, chunk: Chunk) -> None:
        chunk.pins += 1

    def unpin(self, chunk: Chunk) -> None:
        chunk.pins -= 1
        if not chunk.pins and chunk.evicted:
            chunk.evicted = False
            self._classes[chunk.size_class].free.append(chunk)

    def reserve(self, size: int) -> Chunk | None:
        """A chunk for a value of ``size`` bytes, evicting in its class when the budget is spent; None: no
        room."""
        chunk = chunk_size(size)
        size_class = self._classes.get(chunk)
        if size_class is None:
            size_class = self._classes[chunk] = _SizeClass(chunk, self._policy_factory())
        if not size_class.free and not self._grow(size_class):
            while not size_class.free and self._evict(size_class):
                pass  # an evicted chunk still sending a reply (pinned) frees nothing: evict on
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
        if self._spare and slab_bytes <= self.slab_bytes:
            memory = self._spare.pop()
        elif self.allocated_bytes + slab_bytes > self.budget_bytes:
            return False
        else:
            memory = bytearray(slab_bytes)
            self.allocated_bytes += slab_bytes
        slab = len(size_class.slabs)
        size_class.slabs.append(memory)
        offsets = reversed(range(0, slab_bytes, size_class.chunk))
        size_class.free.extend(Chunk(size_class.chunk, slab, offset) for offset in offsets)
        return True

    def _evict(self, size_class: _SizeClass) -> bool:
        key = size_class.policy.victim()
        if key is None:
            return False
        chunk = self._entries.pop(key)
        if self._on_evict is not None:
            self._on_evict(key, self.view(chunk))
        self.used_bytes -= chunk.size_class
        self.counters.evictions += 1
        if chunk.pins:
            chunk.evicted = True
        else:
            size_class.free.append(chunk)
        return True
