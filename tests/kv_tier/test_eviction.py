"""The L1 eviction policies and the slab store, as pure logic."""

from __future__ import annotations

import pytest

from brixmesh.kv_index.tier.eviction import Lru, S3Fifo
from brixmesh.kv_index.tier.store import SlabStore, chunk_size


def fill(policy: S3Fifo | Lru, keys: range) -> None:
    for key in keys:
        policy.insert(key)


def test_lru_evicts_the_least_recently_read() -> None:
    lru = Lru()
    fill(lru, range(3))
    lru.hit(0)
    assert [lru.victim(), lru.victim(), lru.victim(), lru.victim()] == [1, 2, 0, None]


def working_set_after_a_scan(policy: S3Fifo | Lru, capacity: int = 20) -> int:
    """A 15-key working set read three times, then a 40-key one-time scan: how much of the set is left."""
    held: set[int] = set()

    def access(key: int) -> None:
        if key in held:
            policy.hit(key)
            return
        if len(held) >= capacity:
            held.discard(policy.victim())  # type: ignore[arg-type]
        held.add(key)
        policy.insert(key)

    for _ in range(3):
        for key in range(15):
            access(key)
    for key in range(1000, 1040):
        access(key)
    return len(held & set(range(15)))


def test_s3fifo_keeps_the_reread_working_set_through_a_scan_lru_does_not() -> None:
    assert working_set_after_a_scan(Lru()) == 0
    assert working_set_after_a_scan(S3Fifo()) >= 10


def test_s3fifo_ghost_brings_a_quick_return_straight_into_main() -> None:
    s3 = S3Fifo()
    fill(s3, range(20))
    first = s3.victim()
    assert first == 0
    s3.insert(0)  # back soon: remembered by the ghost queue, so it goes to main
    assert 0 in s3._main and 0 not in s3._small


def test_s3fifo_main_reinserts_keys_read_since_they_passed() -> None:
    s3 = S3Fifo(small_fraction=0.0)
    fill(s3, range(2))
    s3.hit(0)
    s3.hit(1)
    assert s3.victim() in (0, 1)  # both promoted; then main gives each a second round
    s3.remove(0)
    s3.remove(1)
    assert s3.victim() is None


@pytest.mark.parametrize(("size", "chunk"), [(1, 4096), (4096, 4096), (4097, 5120), (131072, 131072),
                                             (917504, 917504), (2 << 20, 2 << 20), ((2 << 20) + 1, 2621440)])
def test_size_classes_waste_at_most_a_quarter(size: int, chunk: int) -> None:
    assert chunk_size(size) == chunk
    assert chunk_size(size) < 1.25 * size + 4096


def test_store_budget_pins_and_release() -> None:
    evicted = []
    store = SlabStore(2 << 20, Lru, slab_bytes=1 << 20, on_evict=lambda key, view: evicted.append(key))
    chunks = []
    for key in range(8):  # 8 x 256 KiB fill the 2 MiB budget
        chunk = store.reserve(256 << 10)
        assert chunk is not None
        store.view(chunk)[:] = bytes([key]) * (256 << 10)
        assert store.commit(key, chunk)
        chunks.append(chunk)
    assert store.allocated_bytes == 2 << 20
    pinned = store.get(0)
    assert pinned is not None
    store.pin(pinned)
    store.get(1)  # 1 read after 0: the LRU victim is now 2, then 3..., 0 before 1
    for key in range(8, 15):
        chunk = store.reserve(256 << 10)
        assert chunk is not None and chunk is not pinned  # an evicted pinned chunk is not reused
        store.commit(key, chunk)
    assert evicted == [2, 3, 4, 5, 6, 7, 0, 1]  # 0 evicted while pinned: its chunk freed nothing
    assert bytes(store.view(pinned)[:4]) == b"\0\0\0\0"  # still key 0's bytes while pinned
    store.unpin(pinned)
    assert store.reserve(256 << 10) is not None  # the unpinned chunk is free again
    assert store.allocated_bytes == 2 << 20


def test_store_commit_of_a_key_stored_meanwhile_returns_the_chunk() -> None:
    store = SlabStore(1 << 20, S3Fifo, slab_bytes=1 << 20)
    first, second = store.reserve(100), store.reserve(100)
    assert first is not None and second is not None
    assert store.commit("k", first)
    assert not store.commit("k", second)
    assert len(store) == 1 and store.used_bytes == 4096
