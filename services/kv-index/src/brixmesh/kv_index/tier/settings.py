from typing import Literal

from pydantic import Field

from brixmesh.common.settings import ServiceSettings


class KvTierSettings(ServiceSettings):
    """Settings of a KV tier node (environment variables ``BRIXMESH_*``); ``HOST``/``PORT`` are its HTTP
    side (health, metrics), ``TIER_HOST``/``TIER_PORT`` its block protocol."""

    tier_host: str = "127.0.0.1"
    tier_port: int = Field(default=7390, ge=0, le=65535)
    tier_memory_mb: int = Field(default=1024, gt=0)
    """L1 byte budget (CPU DRAM slabs)."""
    tier_preallocate: bool = False
    """Take (and touch) the whole budget at start: puts then land in mapped memory, about twice as fast as
    into fresh pages. Off by default so a development mesh does not hold a GiB it never uses."""
    tier_policy: Literal["s3fifo", "lru"] = "s3fifo"
    tier_max_value_kb: int = Field(default=16384, gt=0)
    """Largest block accepted; larger ones are refused with ``value_too_large``."""
    tier_max_frame_mb: int = Field(default=512, gt=0)
    """Largest frame (one batch); a larger header closes the connection with ``frame_too_large``."""
    tier_redis_url: str = ""
    """L2: ``redis://host:port/db``; empty means no L2."""
    tier_l2_policy: Literal["evict", "through"] = "evict"
    tier_l2_ttl_s: int = Field(default=3600, ge=0)
    """Expiry of L2 values (0: none; Redis's own ``maxmemory-policy`` then decides)."""
