"""An adapter's spec, from the HTTP API or YAML files.

name: support-bot                 # the model name clients ask for
base_model: tiny-llama            # pods serving this model can load it
artifact: s3://bucket/adapters/support-bot/   # or /local/dir, or hf://org/name[@revision] (offline cache)
replicas: 2                       # pods holding it, or "all" (every pod of the base model)
min_replicas: 1                   # optional: follow demand between min_replicas and replicas (0: unload
                                  # when idle, load again on the next request)
policy: least-adapters            # or bin-pack, latency-aware
credentials: team-a               # optional: <credentials_dir>/team-a.yaml for s3:// artifacts
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

Policy = Literal["least-adapters", "bin-pack", "latency-aware"]
Replicas = int | Literal["all"]
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._\-]{0,127}$"


class SpecError(Exception):
    """A spec that cannot be registered; ``str()`` is one line."""


class AdapterSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=NAME_PATTERN)
    base_model: str = Field(min_length=1)
    artifact: str = Field(min_length=1)
    replicas: Replicas = 1
    min_replicas: int | None = Field(default=None, ge=0)
    policy: Policy = "least-adapters"
    credentials: str | None = Field(default=None, pattern=NAME_PATTERN)

    @model_validator(mode="after")
    def _consistent(self) -> "AdapterSpec":
        if isinstance(self.replicas, int) and self.replicas < 1:
            raise ValueError('replicas must be at least 1, or "all"')
        if self.name == self.base_model:
            raise ValueError("an adapter's name must differ from its base model")
        if (
            self.min_replicas is not None
            and isinstance(self.replicas, int)
            and self.min_replicas > self.replicas
        ):
            raise ValueError("min_replicas may not exceed replicas")
        if not self.artifact.startswith(("s3://", "hf://")) and not Path(self.artifact).is_absolute():
            raise ValueError("artifact must be an absolute local path, s3://bucket/prefix or hf://org/name")
        return self


def parse_spec(data: Any) -> AdapterSpec:
    try:
        return AdapterSpec.model_validate(data)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            where = ".".join(str(part) for part in error["loc"])
            message = error["msg"].removeprefix("Value error, ")
            problems.append(f"{where}: {message}" if where else message)
        raise SpecError("invalid adapter spec: " + "; ".join(problems)) from None


def load_spec_files(path: Path) -> list[AdapterSpec]:
    """Specs of a YAML file (documents holding one spec, a list, or ``adapters: [...]``) or of every
    ``*.yaml``/``*.yml`` file of a directory."""
    files = sorted([*path.glob("*.yaml"), *path.glob("*.yml")]) if path.is_dir() else [path]
    specs: list[AdapterSpec] = []
    for file in files:
        try:
            documents = list(yaml.safe_load_all(file.read_text()))
        except (OSError, yaml.YAMLError) as exc:
            raise SpecError(f"{file}: cannot read adapter specs: {exc}") from None
        for document in documents:
            items = document.get("adapters", document) if isinstance(document, dict) else document
            for item in items if isinstance(items, list) else [items]:
                if item is None:
                    continue
                try:
                    specs.append(parse_spec(item))
                except SpecError as exc:
                    raise SpecError(f"{file}: {exc}") from None
    return specs
