"""JetStream streams that carry KV-cache state: written by kv-index, replayed by every router.

Both sides provision them with :meth:`brixmesh.common.bus.Bus.ensure_stream` (idempotent), so whichever
starts first creates them with the same limits.

- ``KV_EVENTS`` (``kv.events.>``): normalized event batches. Bounded by age and per-subject count; the bridge
  also purges a pod's batches that two newer snapshots cover. ``Nats-Msg-Id`` dedupes retried publishes.
- ``KV_SNAPSHOTS`` (``kv.snapshots.>``): chunked per-pod snapshots; the bridge purges superseded ones.
"""

from __future__ import annotations

from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig

from brixmesh.common.subjects import KV_EVENTS, KV_EVENTS_STREAM, KV_SNAPSHOTS, KV_SNAPSHOTS_STREAM

EVENTS_MAX_AGE_S = 30 * 60.0
EVENTS_MAX_PER_POD = 200_000
EVENTS_MAX_BYTES = 2 * 1024**3
SNAPSHOTS_MAX_PER_POD = 512
DUPLICATE_WINDOW_S = 120.0


def events_stream(max_age_s: float = EVENTS_MAX_AGE_S) -> StreamConfig:
    return StreamConfig(
        name=KV_EVENTS_STREAM,
        subjects=[KV_EVENTS.pattern()],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        discard=DiscardPolicy.OLD,
        max_age=max_age_s,
        max_bytes=EVENTS_MAX_BYTES,
        max_msgs_per_subject=EVENTS_MAX_PER_POD,
        duplicate_window=DUPLICATE_WINDOW_S,
    )


def snapshots_stream(max_age_s: float = 2 * EVENTS_MAX_AGE_S) -> StreamConfig:
    return StreamConfig(
        name=KV_SNAPSHOTS_STREAM,
        subjects=[KV_SNAPSHOTS.pattern()],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        discard=DiscardPolicy.OLD,
        max_age=max_age_s,
        max_msgs_per_subject=SNAPSHOTS_MAX_PER_POD,
        duplicate_window=DUPLICATE_WINDOW_S,
    )
