"""Settings of the router's KV module (environment variables ``BRIXMESH_KV_*``)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from brixmesh.router.kv.index import SPECULATIVE_TTL_S
from brixmesh.router.kv.tokenizer import CHAT_PREFIX_CACHE_BYTES


class KvSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="BRIXMESH_KV_", extra="ignore", frozen=True)

    tokenizer_dirs: dict[str, Path] = Field(default_factory=dict)
    """Model -> Hugging Face tokenizer directory, as JSON: ``{"tiny-llama": "/models/tiny-llama"}``. Models
    without one are tokenized by an engine's ``POST /tokenize`` (cached)."""
    chat_prefix_cache_bytes: int = Field(default=CHAT_PREFIX_CACHE_BYTES, ge=0)
    """Bytes of chat prompts (text and token ids, per model) kept so a conversation's next turn encodes only
    its new messages, least recently used out first; about 8 bytes per token. 0 turns the reuse off."""
    speculative_ttl_s: float = Field(default=SPECULATIVE_TTL_S, ge=0)
    speculative: bool = True
    turn_routing: bool = True
    """Route a chat request that continues a kept conversation turn from that turn's ids, and tokenize the
    rest once it is written to its pod, while the engine works (``kv-aware`` scorer; see
    :mod:`brixmesh.router.kv.tokenizer`): ~0.1 ms less between a request's arrival and its pod, at the same
    CPU. On real vLLM engines it routed as well as tokenizing first (``docs/kv-routing.md``, sixth pass)."""

    @field_validator("tokenizer_dirs")
    @classmethod
    def _directories_exist(cls, value: dict[str, Path]) -> dict[str, Path]:
        for model, directory in value.items():
            if not (directory / "tokenizer.json").is_file():
                raise ValueError(f"tokenizer directory of {model!r} has no tokenizer.json: {directory}")
        return value
