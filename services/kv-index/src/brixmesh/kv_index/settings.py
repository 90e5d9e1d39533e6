from pydantic import Field

from brixmesh.common.settings import ServiceSettings


class KvIndexSettings(ServiceSettings):
    """Settings of the kv-index service (environment variables ``BRIXMESH_*``)."""

    kv_snapshot_interval_s: float = Field(default=30.0, gt=0)
    """How often each pod's blocks are snapshotted (and older history purged from JetStream)."""
    kv_replay_timeout_s: float = Field(default=2.0, gt=0)
    """How long to wait for an engine's replay socket to answer a gap."""
    kv_events_max_age_s: float = Field(default=1800.0, gt=0)
    """Retention of the KV_EVENTS stream."""
