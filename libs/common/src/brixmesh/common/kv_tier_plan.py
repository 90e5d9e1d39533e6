"""What the vLLM KV-tier connector (``brixmesh.common.kv_tier_vllm``) loads and saves, apart from vLLM.

Pure functions, unit-tested in our venv; the connector itself imports vLLM and torch and runs only inside
an engine. Like ``brixmesh.common.kv_tier`` it needs nothing beyond the standard library and msgspec.

Block arithmetic follows vLLM 0.32's scheduler: a request's KV is addressed in whole blocks of
``block_size`` tokens, each named by its chained block hash (``Request.block_hashes``); an external hit
must end on a block boundary and leave at least one prompt token to compute (the step that computes it
produces the first output token).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from brixmesh.common.kv_tier import parse_address

DEFAULT_LOOKUP_TIMEOUT_MS = 50
DEFAULT_LOAD_TIMEOUT_MS = 1000
DEFAULT_MAX_PENDING_LOADS = 32
DEFAULT_MAX_PENDING_SAVES = 64
DEFAULT_RETRY_AFTER_MS = 5000


@dataclass(frozen=True, slots=True)
class ConnectorSettings:
    """``kv_connector_extra_config`` of ``--kv-transfer-config`` (times in milliseconds there)."""

    tier_nodes: tuple[str, ...]
    """``host:port`` of every tier node; the client spreads blocks over them by consistent hashing."""
    lookup_timeout_s: float
    """Longest the scheduler waits for "how many leading blocks does the tier hold" (it blocks the step)."""
    load_timeout_s: float
    """Longest a request waits for its blocks (after that the missing ones are recomputed); also the
    tier client's per-node timeout in the worker."""
    max_pending_loads: int
    """Loads in flight at once; beyond that a request recomputes instead of queueing."""
    max_pending_saves: int
    """Batched puts queued at once; beyond that new blocks are not saved (the tier is a cache)."""
    retry_after_s: float
    """After a node failed (error or timeout), how long the client treats it as a miss before asking again:
    a dead tier costs one timeout per period, not one per request."""


def _positive_ms(extra: Mapping[str, Any], name: str, default: int) -> float:
    value = extra.get(name, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise ValueError(f"kv_connector_extra_config.{name} must be a positive number of ms, got {value!r}")
    return value / 1000


def _positive_int(extra: Mapping[str, Any], name: str, default: int) -> int:
    value = extra.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"kv_connector_extra_config.{name} must be a positive integer, got {value!r}")
    return value


def parse_settings(extra: Mapping[str, Any] | None) -> ConnectorSettings:
    """The connector's settings, or ValueError with a one-line message naming the bad field."""
    extra = extra or {}
    known = {
        "tier_nodes", "lookup_timeout_ms", "load_timeout_ms",
        "max_pending_loads", "max_pending_saves", "retry_after_ms",
    }  # fmt: skip
    unknown = sorted(set(extra) - known)
    if unknown:
        raise ValueError(f"kv_connector_extra_config: unknown fields {unknown}; known: {sorted(known)}")
    nodes = extra.get("tier_nodes")
    if isinstance(nodes, str):
        nodes = [node for node in nodes.split(",") if node.strip()]
    if not nodes or not isinstance(nodes, list) or not all(isinstance(node, str) for node in nodes):
        raise ValueError(f"kv_connector_extra_config.tier_nodes must list host:port entries, got {nodes!r}")
    for node in nodes:
        parse_address(node)
    return ConnectorSettings(
        tier_nodes=tuple(node.strip() for node in nodes),
        lookup_timeout_s=_positive_ms(extra, "lookup_timeout_ms", DEFAULT_LOOKUP_TIMEOUT_MS),
        load_timeout_s=_positive_ms(extra, "load_timeout_ms", DEFAULT_LOAD_TIMEOUT_MS),
        max_pending_loads=_positive_int(extra, "max_pending_loads", DEFAULT_MAX_PENDING_LOADS),
        max_pending_saves=_positive_int(extra, "max_pending_saves", DEFAULT_MAX_PENDING_SAVES),
        retry_after_s=_positive_ms(extra, "retry_after_ms", DEFAULT_RETRY_AFTER_MS),
    )


def loadable_blocks(num_tokens: int, num_computed_tokens: int, block_size: int) -> range:
    """Indices of the blocks the tier may supply: whole blocks past the locally computed ones, leaving
    at least one token to compute (vLLM schedules that token to produce the first output)."""
    return range(num_computed_tokens // block_size, (num_tokens - 1) // block_size)


def completed_blocks(
    num_computed_tokens: int, num_scheduled_tokens: int, block_size: int, num_hashed: int
) -> range:
    """Indices of the blocks that become full in a step computing ``num_scheduled_tokens`` after
    ``num_computed_tokens`` (only blocks vLLM has hashed: ``num_hashed`` of them)."""
    end = min((num_computed_tokens + num_scheduled_tokens) // block_size, num_hashed)
    return range(num_computed_tokens // block_size, end)


def leading_valid(values: Sequence[bytes | memoryview | None], block_bytes: int) -> int:
    """How many leading values are whole blocks: a prefix is only usable up to its first gap."""
    count = 0
    for value in values:
        if value is None or len(value) != block_bytes:
            break
        count += 1
    return count


MAX_ANNOUNCED_BLOCKS = 65536


class AnnouncedBlocks:
    """Tier blocks an engine announced on its KV event stream (medium ``CPU``), oldest first. Bounded: past
    ``limit`` the oldest are withdrawn, so routers never count more than that many for one engine."""

    def __init__(self, limit: int = MAX_ANNOUNCED_BLOCKS) -> None:
        self._limit = limit
        self._held: OrderedDict[bytes, None] = OrderedDict()

    def __len__(self) -> int:
        return len(self._held)

    def announce(self, hashes: Sequence[bytes]) -> tuple[int, list[bytes]]:
        """Records saved blocks: (index of the first one not announced before, or ``len(hashes)``;
        the oldest blocks withdrawn to stay within the bound)."""
        first_new = next((i for i, digest in enumerate(hashes) if digest not in self._held), len(hashes))
        for digest in hashes:
            self._held[digest] = None
            self._held.move_to_end(digest)
        overflow = max(0, len(self._held) - self._limit)
        return first_new, [self._held.popitem(last=False)[0] for _ in range(overflow)]

    def lost(self, hashes: Sequence[bytes]) -> list[bytes]:
        """Announced blocks a lookup found missing from the tier: forgotten, to be withdrawn."""
        gone = [digest for digest in hashes if digest in self._held]
        for digest in gone:
            del self._held[digest]
        return gone
