"""A request as ``KvCacheManager`` reads it (its ``CacheRequest`` protocol, plus the optional ``session_id``),
for tests that drive the cache without the scheduler."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Req:
    request_id: str
    all_token_ids: list[int]
    num_computed_tokens: int = 0
    lora_name: str | None = None
    lora_path: str | None = None
    lora_int_id: int | None = None
    cache_salt: str | None = None
    num_preemptions: int = 0
    session_id: str | None = None
