"""Loaded LoRA adapters with vLLM's load/unload rules and messages.

An adapter path must be an existing directory (a path containing ``nonexistent`` always fails, the AIBrix
mock convention). Integer ids follow load order 1, 2, ... and are never reused, as in vLLM.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class Adapter:
    name: str
    path: str
    int_id: int
    created: int


class LoraError(Exception):
    def __init__(self, status: int, error_type: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.error_type = error_type
        self.message = message


class LoraRegistry:
    def __init__(self, base_model_names: list[str]) -> None:
        self._base = set(base_model_names)
        self._adapters: dict[str, Adapter] = {}
        self._next_id = 1

    def __contains__(self, name: str) -> bool:
        return name in self._adapters

    def get(self, name: str) -> Adapter | None:
        return self._adapters.get(name)

    def adapters(self) -> list[Adapter]:
        return list(self._adapters.values())

    def check_load(self, name: str, path: str, load_inplace: bool = False) -> None:
        """Raises the error vLLM would give for this load request, before any (slow) loading starts."""
        if not name or not path:
            raise LoraError(400, "InvalidUserInput", "Both 'lora_name' and 'lora_path' must be provided.")
        if name in self._base:
            raise LoraError(
                400, "InvalidUserInput", f"The lora adapter '{name}' conflicts with a served base model."
            )
        if name in self._adapters and not load_inplace:
            raise LoraError(
                400,
                "InvalidUserInput",
                f"The lora adapter '{name}' has already been loaded. If you want to load the adapter in place, "
                "set 'load_inplace' to True.",
            )
        if "nonexistent" in path or not Path(path).is_dir():
            raise LoraError(404, "NotFoundError", f"Loading lora {name} failed: No adapter found for {path}")

    def load(self, name: str, path: str, load_inplace: bool = False) -> Adapter:
        self.check_load(name, path, load_inplace)
        existing = self._adapters.get(name)
        int_id = existing.int_id if existing else self._next_id
        if not existing:
            self._next_id += 1
        adapter = Adapter(name, str(Path(path)), int_id, int(time.time()))
        self._adapters[name] = adapter
        return adapter

    def unload(self, name: str) -> Adapter:
        if not name:
            raise LoraError(400, "InvalidUserInput", "'lora_name' must be provided.")
        adapter = self._adapters.pop(name, None)
        if adapter is None:
            raise LoraError(404, "NotFoundError", f"The lora adapter '{name}' cannot be found.")
        return adapter


def parse_lora_modules(specs: list[str]) -> list[tuple[str, str]]:
    """``name=path`` items, or vLLM's JSON form ``{"name":…,"path":…}``."""
    out: list[tuple[str, str]] = []
    for spec in specs:
        spec = spec.strip()
        if spec.startswith("{"):
            try:
                obj = json.loads(spec)
                out.append((str(obj["name"]), str(obj["path"])))
            except (ValueError, KeyError, TypeError):
                raise ValueError(f"invalid --lora-modules JSON {spec!r}: need name and path") from None
            continue
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise ValueError(f"invalid --lora-modules item {spec!r}: expected name=path")
        out.append((name, path))
    return out
