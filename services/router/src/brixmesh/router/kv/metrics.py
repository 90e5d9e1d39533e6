"""Prometheus series of the KV index: size, lookup time, event lag, rebuild and event counters."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from brixmesh.common.metrics import LoopHistogram

from brixmesh.router.kv.follower import IndexFollower
from brixmesh.router.kv.index import PrefixIndex
from brixmesh.router.kv.tokenizer import PromptTokenizer

_LOOKUP_BUCKETS = (25e-6, 50e-6, 100e-6, 200e-6, 500e-6, 1e-3, 2e-3, 5e-3, 0.01, 0.05)
_LAG_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0)


class KvMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.lookup_seconds = LoopHistogram(
            "brixmesh_kv_lookup_seconds", "Time to hash a prompt and match it in the KV index",
            buckets=_LOOKUP_BUCKETS, registry=registry,
        )  # fmt: skip
        self.event_lag_seconds = Histogram(
            "brixmesh_kv_event_lag_seconds", "Engine event time to applied in this router's index",
            buckets=_LAG_BUCKETS, registry=registry,
        )  # fmt: skip
        self.tokenize_failures = Counter(
            "brixmesh_kv_tokenize_failures_total", "Requests the kv-aware scorer could not tokenize", registry=registry
        )
        self._registry = registry

    def watch(self, index: PrefixIndex, follower: IndexFollower, tokenizer: PromptTokenizer) -> None:
        """Gauges read from the index, follower and tokenizer at scrape time."""
        gauges = {
            "brixmesh_kv_index_blocks": ("Distinct blocks in the KV index", lambda: index.blocks),
            "brixmesh_kv_index_entries": ("(block, pod, medium) entries in the KV index", lambda: index.entries),
            "brixmesh_kv_index_pods": ("Pods known to the KV index", lambda: len(index.pods)),
            "brixmesh_kv_index_speculative_blocks": ("Speculative entries", lambda: index.speculative_blocks),
            "brixmesh_kv_index_ready": ("1 once the index is rebuilt from JetStream", lambda: float(follower.ready)),
            "brixmesh_kv_index_rebuild_seconds": ("Time the last rebuild took", lambda: follower.stats.rebuild_s),
            "brixmesh_kv_batches_applied": ("Event batches applied", lambda: follower.stats.batches_applied),
            "brixmesh_kv_batches_skipped": ("Batches a snapshot covered", lambda: follower.stats.batches_skipped),
            "brixmesh_kv_decode_errors": ("Undecodable KV messages", lambda: follower.stats.decode_errors),
            "brixmesh_kv_orphan_blocks": ("Stored blocks with unknown parent", lambda: index.counters.orphan_blocks),
            "brixmesh_kv_unknown_removals": ("Removals of unknown blocks", lambda: index.counters.unknown_removals),
            "brixmesh_kv_chat_prefix_reuses": (
                "Chat prompts tokenized from the cached tokens of an earlier turn",
                lambda: tokenizer.prefix_reuses,
            ),
            "brixmesh_kv_chat_turns_routed": (
                "Chat requests routed from a kept earlier turn, tokenized once sent unless remembered",
                lambda: tokenizer.turns_routed,
            ),
            "brixmesh_kv_chat_turns_remembered": (
                "Chat requests routed from a kept earlier turn and sent untokenized, for the next turn",
                lambda: tokenizer.turns_remembered,
            ),
            "brixmesh_kv_chat_prefix_misses": (
                "Chat prompts tokenized in full (first turn, evicted or edited)",
                lambda: tokenizer.prefix_misses,
            ),
        }
        for name, (documentation, read) in gauges.items():
            Gauge(name, documentation, registry=self._registry).set_function(read)
