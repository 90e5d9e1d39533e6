"""The global prefix index every router keeps: own block hash -> where it is cached. Pure logic, no I/O.

Keys are :mod:`.hashing` chains of the events' ``token_ids`` with the (model, adapter) namespace folded into
the root, so one dict serves every namespace. A value is the set of *locations* (a pod and a medium: GPU,
CPU, ...) holding the block. Sets are interned: blocks along one cached chain share one set object, so a
lookup walks a long run of blocks with identity checks only. Extra copies (vLLM may store one hash in two
physical blocks and remove it twice) are reference counted on the side. Each pod keeps, per location, its
engine hash -> own hash map, which resolves ``BlockRemoved`` and chains children to parents.

Requests are matched per pod: the longest run of the prompt's leading blocks the pod holds, each block
weighted by its best medium (GPU 1.0, CPU 0.8, other tiers 0.5). Speculative entries, added for the pod a
request was just sent to, count as GPU blocks until they expire (the engine's own events follow within
milliseconds; the TTL covers the gap, and a lost request cannot leave them forever).
"""

from __future__ import annotations

import time
from collections import deque
from itertools import groupby
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from brixmesh.common.messages import KvAllCleared, KvBlockRemoved, KvBlockStored, KvEventBatch
from xxhash import xxh3_64_intdigest

from brixmesh.router.kv.hashing import chain, first_seed, token_bytes

SPECULATIVE_MEDIUM = "speculative"
MEDIUM_WEIGHTS = {"GPU": 1.0, "CPU": 0.8, "CPU_PINNED": 0.8, SPECULATIVE_MEDIUM.upper(): 1.0}
OTHER_MEDIUM_WEIGHT = 0.5
SPECULATIVE_TTL_S = 2.0
_LOOKUP_CLEANUP_GRACE = 0.25
"""A lookup leaves expired speculative entries to :meth:`PrefixIndex.add_speculative` (which follows every
routed request, after it is sent) for this share of the TTL: removing them is not on the path of the request
being routed. Past it (an idle router), the lookup removes them itself."""
_CLEANUP_BATCH = 256
"""Expired speculative entries one :meth:`PrefixIndex.add_speculative` removes (a generation's expiry is
spread over the next requests instead of landing on one)."""


def adapter_key(lora_name: str | None, lora_id: int | None) -> str | None:
    """The namespace an event's blocks belong to: the adapter's name, or its load-order id for engines that
    send no names (their blocks can then only match requests that name ``#lora-<id>``)."""
    if lora_name:
        return lora_name
    if lora_id is not None:
        return f"#lora-{lora_id}"
    return None


@dataclass(slots=True)
class PodMatch:
    blocks: int
    """Leading prompt blocks the pod holds (in any medium)."""
    weighted: float
    """``blocks`` weighted by medium (a GPU block 1.0)."""
    block_size: int

    @property
    def tokens(self) -> int:
        return self.blocks * self.block_size


@dataclass(slots=True)
class IndexCounters:
    stored_blocks: int = 0
    removed_blocks: int = 0
    orphan_blocks: int = 0
    """Stored blocks whose parent the pod does not hold: not indexable, skipped."""
    unknown_removals: int = 0
    clears: int = 0
    bad_events: int = 0


class _Pod:
    __slots__ = ("name", "model", "block_size", "locations", "maps", "extra")

    def __init__(self, name: str, model: str) -> None:
        self.name = name
        self.model = model
        self.block_size = 0
        self.locations: dict[str, int] = {}
        """medium -> location id"""
        self.maps: dict[int, dict[int, int]] = {}
        """location id -> engine hash -> own hash"""
        self.extra: dict[int, dict[int, int]] = {}
        """location id -> engine hash -> copies beyond the first (rare duplicates)"""


class _Generations:
    """A speculative location's entries, by when they were last sent: ``current`` since the last rotation,
    ``previous`` in the period before (both are held in the index). A rotation expires what is only in
    ``previous``: an entry lives between one and two periods after the last request that sent it."""

    __slots__ = ("current", "previous")

    def __init__(self) -> None:
        self.current: set[int] = set()
        self.previous: set[int] = set()


class PrefixIndex:
    def __init__(self, speculative_ttl_s: float = SPECULATIVE_TTL_S, clock: Callable[[], float] = time.monotonic):
        self.speculative_ttl_s = speculative_ttl_s
        self._clock = clock
        self._holders: dict[int, frozenset[int]] = {}
        """own hash -> locations holding it (interned sets)"""
        self._copies: dict[tuple[int, int], int] = {}
        """(own hash, location) -> copies beyond the first"""
        self._sets = _LocationSets()
        self._pods: dict[str, _Pod] = {}
        self._location_pod: list[str] = []
        self._location_weight: list[float] = []
        self._free_locations: list[int] = []
        self._speculative: dict[int, _Generations] = {}
        """speculative location -> its entries"""
        self.speculative_blocks = 0
        """Speculative (location, block) entries held."""
        self._rotation_due = 0.0
        """Clock time of the next rotation of every speculative location's generations (0: none yet)."""
        self._expired: deque[tuple[int, _Generations, list[int]]] = deque()
        """(location, its generations, own hashes) expired by rotations and still held: removed in batches"""
        self._expired_since = 0.0
        self.counters = IndexCounters()
        self.entries = 0
        """(block, location) pairs held, counting duplicates once."""

    # --- size and introspection -------------------------------------------------------------------------

    @property
    def blocks(self) -> int:
        """Distinct own hashes held anywhere."""
        return len(self._holders)

    @property
    def pods(self) -> list[str]:
        return list(self._pods)

    def block_size(self, pod: str) -> int:
        found = self._pods.get(pod)
        return found.block_size if found is not None else 0

    def pod_model(self, pod: str) -> str | None:
        found = self._pods.get(pod)
        return found.model if found is not None else None

    def media(self, pod: str) -> list[str]:
        """Media (GPU, CPU, ...) the pod has held blocks in."""
        found = self._pods.get(pod)
        return list(found.locations) if found is not None else []

    def engine_hashes(self, pod: str, medium: str = "GPU") -> set[int]:
        """Engine hashes the pod holds in ``medium`` (the index's view of the engine's stored-not-removed)."""
        found = self._pods.get(pod)
        if found is None or medium not in found.locations:
            return set()
        return set(found.maps[found.locations[medium]])

    def pod_blocks(self, pod: str) -> int:
        found = self._pods.get(pod)
        return sum(len(m) for m in found.maps.values()) if found is not None else 0

    # --- events -------------------------------------------------------------------------------------------

    def apply(self, batch: KvEventBatch) -> None:
        pod = self._pods.get(batch.pod)
        if pod is None or pod.model != batch.model:
            if pod is not None and pod.model:  # the pod name now serves another model: start over
                self.clear_pod(batch.pod)
                pod = None
            if pod is None:
                pod = self._pods[batch.pod] = _Pod(batch.pod, batch.model)
            pod.model = batch.model
        for event in batch.events:
            if isinstance(event, KvBlockStored):
                self._store(pod, event)
            elif isinstance(event, KvBlockRemoved):
                self._remove(pod, event)
            elif isinstance(event, KvAllCleared):
                self._clear(pod)
                self.counters.clears += 1

    def _location(self, pod: _Pod, medium: str) -> int:
        location = pod.locations.get(medium)
        if location is None:
            weight = MEDIUM_WEIGHTS.get(medium.upper(), OTHER_MEDIUM_WEIGHT)
            if self._free_locations:
                location = self._free_locations.pop()
                self._location_pod[location] = pod.name
                self._location_weight[location] = weight
            else:
                location = len(self._location_pod)
                self._location_pod.append(pod.name)
                self._location_weight.append(weight)
            pod.locations[medium] = location
            pod.maps[location] = {}
        return location

    def _store(self, pod: _Pod, event: KvBlockStored) -> None:
        size = event.block_size
        hashes = event.block_hashes
        token_ids = event.token_ids
        if size <= 0 or len(token_ids) != size * len(hashes):
            self.counters.bad_events += 1
            return
        medium = event.medium or "GPU"
        location = pod.locations.get(medium)
        if location is None:
            location = self._location(pod, medium)
        engine_map = pod.maps[location]
        parent = event.parent_block_hash
        if parent is None:
            seed = first_seed(pod.model, adapter_key(event.lora_name, event.lora_id), event.cache_salt)
        else:
            seed = engine_map.get(parent)
            if seed is None:
                seed = self._parent_elsewhere(pod, parent)
                if seed is None:
                    self.counters.orphan_blocks += len(hashes)
                    return
        try:
            packed = token_bytes(token_ids)
        except OverflowError:
            self.counters.bad_events += 1
            return
        pod.block_size = size
        self.counters.stored_blocks += len(hashes)
        if len(hashes) == 1:  # most events (a decode step fills one block): no chain, no loop
            self._hold(pod, location, engine_map, hashes[0], xxh3_64_intdigest(packed, seed))
            return
        for engine_hash, own in zip(hashes, chain(packed, size, seed)):
            self._hold(pod, location, engine_map, engine_hash, own)

    def _hold(self, pod: _Pod, location: int, engine_map: dict[int, int], engine_hash: int, own: int) -> None:
        """``location`` holds block ``own`` (``engine_hash`` on the pod) once more."""
        known = engine_map.get(engine_hash)
        if known is not None:
            # Same engine hash again: another physical copy (or a re-announcement); count it.
            extra = pod.extra.setdefault(location, {})
            extra[engine_hash] = extra.get(engine_hash, 0) + 1
            own = known
        else:
            engine_map[engine_hash] = own
            self.entries += 1
        where = self._holders.get(own)
        if where is None:
            self._holders[own] = self._sets.single(location)
        elif location in where:
            key = (own, location)
            self._copies[key] = self._copies.get(key, 0) + 1
        else:
            self._holders[own] = self._sets.add(where, location)

    def _parent_elsewhere(self, pod: _Pod, parent: int) -> int | None:
        for engine_map in pod.maps.values():
            found = engine_map.get(parent)
            if found is not None:
                return found
        return None

    def _remove(self, pod: _Pod, event: KvBlockRemoved) -> None:
        location = pod.locations.get(event.medium or "GPU")
        if location is None:
            self.counters.unknown_removals += len(event.block_hashes)
            return
        engine_map = pod.maps[location]
        extra = pod.extra.get(location)
        for engine_hash in event.block_hashes:
            own = engine_map.get(engine_hash)
            if own is None:
                self.counters.unknown_removals += 1
                continue
            if extra is not None and engine_hash in extra:
                copies = extra[engine_hash] - 1
                if copies:
                    extra[engine_hash] = copies
                else:
                    del extra[engine_hash]
            else:
                del engine_map[engine_hash]
                self.entries -= 1
            self.counters.removed_blocks += 1
            self._drop(own, location)

    def _drop(self, own: int, location: int) -> None:
        """One copy of block ``own`` left ``location``."""
        key = (own, location)
        copies = self._copies.get(key)
        if copies is not None:
            if copies > 1:
                self._copies[key] = copies - 1
            else:
                del self._copies[key]
            return
        where = self._holders.get(own)
        if where is None or location not in where:
            return
        if len(where) == 1:
            del self._holders[own]
        else:
            self._holders[own] = self._sets.remove(where, location)

    def _forget(self, own: int, location: int) -> None:
        """Every copy of block ``own`` left ``location``."""
        self._copies.pop((own, location), None)
        where = self._holders.get(own)
        if where is None or location not in where:
            return
        if len(where) == 1:
            del self._holders[own]
        else:
            self._holders[own] = self._sets.remove(where, location)

    def _clear(self, pod: _Pod) -> None:
        for location, engine_map in pod.maps.items():
            for own in engine_map.values():
                self._forget(own, location)
            self.entries -= len(engine_map)
            engine_map.clear()
        pod.extra.clear()

    def clear_pod(self, pod: str) -> None:
        """Forget everything about ``pod`` (removed from the fleet, or its stream restarts from a snapshot)."""
        found = self._pods.pop(pod, None)
        if found is None:
            return
        self._clear(found)
        speculative = found.locations.get(SPECULATIVE_MEDIUM)
        if speculative is not None:
            generations = self._speculative.pop(speculative, None)
            held = set()
            if generations is not None:
                held = generations.current | generations.previous
            for location, _generations, owns in self._expired:
                if location == speculative:
                    held.update(owns)
            self._expired = deque(entry for entry in self._expired if entry[0] != speculative)
            for own in held:
                self._drop_speculative(own, speculative)
        self._free_locations.extend(found.locations.values())

    # --- requests -----------------------------------------------------------------------------------------

    def prompt_hashes(
        self,
        token_ids: Sequence[int],
        block_size: int,
        model: str,
        adapter: str | None,
        cache_salt: str | None = None,
        known: Sequence[int] = (),
    ) -> list[int]:
        """Hashes of the prompt's full blocks; ``known``: those of its first blocks, computed already (a kept
        conversation turn's), so only the blocks after them are hashed."""
        if not known:
            return chain(token_bytes(token_ids), block_size, first_seed(model, adapter, cache_salt))
        rest = token_ids[len(known) * block_size :]
        return [*known, *chain(token_bytes(rest), block_size, known[-1])]

    def match(self, hashes: Sequence[int], block_size: int, pods: Iterable[str] | None = None) -> dict[str, PodMatch]:
        """Each pod's longest held run of ``hashes`` (chained for ``block_size``); pods holding nothing are
        left out. ``pods`` limits the answer to those pods."""
        if self._rotation_due:
            now = self._clock()
            grace = self.speculative_ttl_s * _LOOKUP_CLEANUP_GRACE
            late = now >= self._rotation_due + grace
            if late:
                self._rotate(now)
            if self._expired and (late or now >= self._expired_since + grace):
                self._remove_expired(None)
        wanted = None if pods is None else set(pods)
        location_pod = self._location_pod
        location_weight = self._location_weight
        blocks: dict[str, int] = {}
        weight: dict[str, float] = {}
        step: dict[str, float] = {}
        """pods that held the previous run -> what one of its blocks weighs for them"""
        first = True
        # Blocks along one cached chain share one interned holder set, so the walk goes run by run, and
        # groupby finds the runs in C (comparing identical objects costs nothing).
        for where, run in groupby(map(self._holders.get, hashes)):
            if where is None:
                break
            best: dict[str, float] = {}
            for location in where:
                pod = location_pod[location]
                if (first or pod in step) and (wanted is None or pod in wanted):
                    value = location_weight[location]
                    if value > best.get(pod, 0.0):
                        best[pod] = value
            if not best:
                break
            length = len(list(run))
            for pod, value in best.items():
                blocks[pod] = blocks.get(pod, 0) + length
                weight[pod] = weight.get(pod, 0.0) + length * value
            step = best
            first = False
        return {pod: PodMatch(count, weight[pod], block_size) for pod, count in blocks.items()}

    def add_speculative(self, pod: str, hashes: Sequence[int]) -> None:
        """The request behind ``hashes`` was just sent to ``pod``: count its blocks there (as GPU blocks) for
        between half the TTL and the TTL. They live in the pod's ``speculative`` location, so matching treats
        them like any other.

        Entries are kept in two generations of half the TTL each, so a conversation's or a shared prompt's
        leading blocks, sent again and again, cost nothing until the next rotation: ``hashes`` is a prompt's
        chain (:meth:`prompt_hashes`), and as each block's hash fixes every block before it, a generation
        holding a block holds its whole prefix, so the run already held is found by bisection."""
        now = self._clock()
        if not self._rotation_due:
            self._rotation_due = now + self.speculative_ttl_s / 2
        elif now >= self._rotation_due:
            self._rotate(now)
        if self._expired:
            self._remove_expired(_CLEANUP_BATCH)
        found = self._pods.get(pod)
        if found is None:
            found = self._pods[pod] = _Pod(pod, "")
        location = self._location(found, SPECULATIVE_MEDIUM)
        generations = self._speculative.get(location)
        if generations is None:
            generations = self._speculative[location] = _Generations()
        current = generations.current
        sent_again = _held_run(hashes, current)
        if sent_again == len(hashes):
            return
        missing = hashes[sent_again:]
        current.update(missing)
        missing = missing[_held_run(missing, generations.previous) :]  # those are held already
        holders = self._holders
        sets = self._sets
        single = sets.single(location)
        added = 0
        for own in missing:
            where = holders.get(own)
            if where is None:
                holders[own] = single
            elif location not in where:
                holders[own] = sets.add(where, location)
            else:
                continue  # expired, not removed yet: held again
            added += 1
        self.speculative_blocks += added

    def _rotate(self, now: float) -> None:
        """Expire the previous generation of every speculative location (both, after a whole idle TTL)."""
        period = self.speculative_ttl_s / 2
        idle = now >= self._rotation_due + period
        if not self._expired:
            self._expired_since = now
        for location, generations in self._speculative.items():
            expired = generations.previous - generations.current
            if idle:
                expired |= generations.current
                generations.current = set()
            if expired:
                self._expired.append((location, generations, list(expired)))
            generations.previous, generations.current = generations.current, set()
        self._rotation_due = now + period

    def _remove_expired(self, limit: int | None) -> None:
        """Remove up to ``limit`` (None: all) expired speculative entries from the index; an entry sent
        again since it expired stays."""
        budget = limit if limit is not None else -1
        while self._expired and budget != 0:
            location, generations, owns = self._expired[0]
            if self._speculative.get(location) is not generations:
                self._expired.popleft()  # its pod was cleared
                continue
            current, previous = generations.current, generations.previous
            while owns and budget != 0:
                own = owns.pop()
                budget -= 1
                if own not in current and own not in previous:
                    self._drop_speculative(own, location)
            if not owns:
                self._expired.popleft()

    def _drop_speculative(self, own: int, location: int) -> None:
        """Block ``own`` is no longer speculative at ``location`` (such entries never have extra copies)."""
        holders = self._holders
        where = holders.get(own)
        if where is None or location not in where:
            return
        if len(where) == 1:
            del holders[own]
        else:
            holders[own] = self._sets.remove(where, location)
        self.speculative_blocks -= 1


def _held_run(chain: Sequence[int], entries: set[int]) -> int:
    """How many leading blocks of ``chain`` are in ``entries``, a set of whole chains' prefixes (a block in it
    implies every block before it): a bisection, ~log2(blocks) lookups where a scan would touch every block
    (in a large set, most lookups are cache misses)."""
    low, high = 0, len(chain)
    while low < high:
        middle = (low + high) // 2
        if chain[middle] in entries:
            low = middle + 1
        else:
            high = middle
    return low


class _LocationSets:
    """Interns location sets, so equal sets are one object and set updates are cached dict hits."""

    _LIMIT = 200_000

    def __init__(self) -> None:
        self._singles: dict[int, frozenset[int]] = {}
        self._added: dict[tuple[frozenset[int], int], frozenset[int]] = {}
        self._removed: dict[tuple[frozenset[int], int], frozenset[int]] = {}
        self._canonical: dict[frozenset[int], frozenset[int]] = {}

    def single(self, location: int) -> frozenset[int]:
        found = self._singles.get(location)
        if found is None:
            found = self._singles[location] = self._intern(frozenset((location,)))
        return found

    def add(self, where: frozenset[int], location: int) -> frozenset[int]:
        key = (where, location)
        found = self._added.get(key)
        if found is None:
            if len(self._added) > self._LIMIT:
                self._added.clear()
            found = self._added[key] = self._intern(where | {location})
        return found

    def remove(self, where: frozenset[int], location: int) -> frozenset[int]:
        key = (where, location)
        found = self._removed.get(key)
        if found is None:
            if len(self._removed) > self._LIMIT:
                self._removed.clear()
            found = self._removed[key] = self._intern(where - {location})
        return found

    def _intern(self, where: frozenset[int]) -> frozenset[int]:
        found = self._canonical.get(where)
        if found is None:
            if len(self._canonical) > self._LIMIT:
                self._canonical.clear()
            found = self._canonical[where] = where
        return found
