"""Settings of the router's KV module (environment variables ``BRIXMESH_KV_*``)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from brixmesh.router.kv.index import SPECULATIVE_TTL_S


class KvSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="BRIXMESH_KV_", extra="ignore", frozen=True)

    tokenizer_dirs: dict[str, Path] = Field(default_factory=dict)
    """Model -> Hugging Face tokenizer directory, as JSON: ``{"tiny-llama": "/models/tiny-llama"}``. Models
    without one are tokenized by an engine's ``POST /tokenize`` (cached)."""
    chat_prefix_cache: int = Field(default=1024, ge=0)
    """Chat prompts whose token ids are kept (per model) so a conversation's next turn encodes only its new
    messages; about 8 bytes per token each. 0 turns the reuse off."""
    speculative_ttl_s: float = Field(default=SPECULATIVE_TTL_S, ge=0)
    speculative: bool = True

    @field_validator("tokenizer_dirs")
    @classmethod
    def _directories_exist(cls, value: dict[str, Path]) -> dict[str, Path]:
        for model, directory in value.items():
            if not (directory / "tokenizer.json").is_file():
                raise ValueError(f"tokenizer directory of {model!r} has no tokenizer.json: {directory}")
        return value
