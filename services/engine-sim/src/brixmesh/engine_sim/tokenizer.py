"""Hugging Face tokenizer directory (tokenizer.json + tokenizer_config.json) without transformers.

Chat templates render with a sandboxed jinja2 environment, as transformers does, so any directory with
a template works; the built-in default is the offline-built tiny Llama tokenizer.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import Tokenizer

DEFAULT_TOKENIZER_DIR = Path(__file__).resolve().parent / "assets" / "tiny-llama"


def _special_token_text(value: Any) -> str | None:
    if isinstance(value, dict):
        return value.get("content")
    return value


@dataclass(slots=True)
class IncrementalDecoder:
    """Turns generated ids into text deltas, holding back incomplete UTF-8 (vLLM's prefix/read offsets)."""

    tokenizer: Tokenizer
    ids: list[int]
    prefix_offset: int = 0
    read_offset: int = 0

    def push(self, token_id: int) -> str:
        self.ids.append(token_id)
        prefix_text = self.tokenizer.decode(self.ids[self.prefix_offset : self.read_offset])
        new_text = self.tokenizer.decode(self.ids[self.prefix_offset :])
        if len(new_text) > len(prefix_text) and not new_text.endswith("\ufffd"):
            self.prefix_offset = self.read_offset
            self.read_offset = len(self.ids)
            return new_text[len(prefix_text) :]
        return ""


class SimTokenizer:
    def __init__(self, directory: Path, chat_template: str | None = None) -> None:
        tokenizer_file = directory / "tokenizer.json"
        if not tokenizer_file.is_file():
            raise ValueError(f"no tokenizer.json in {directory}")
        self.directory = directory
        self._tok = Tokenizer.from_file(str(tokenizer_file))
        config_file = directory / "tokenizer_config.json"
        config = json.loads(config_file.read_text()) if config_file.is_file() else {}
        template_file = directory / "chat_template.jinja"
        template = config.get("chat_template")
        if template_file.is_file():
            template = template_file.read_text()
        if chat_template is not None:
            template = chat_template
        self.bos_token = _special_token_text(config.get("bos_token"))
        self.eos_token = _special_token_text(config.get("eos_token"))
        self.eos_token_id = self._tok.token_to_id(self.eos_token) if self.eos_token else None
        self.model_max_length = int(config.get("model_max_length", 2048))
        self.vocab_size = self._tok.get_vocab_size()
        special = {self._tok.token_to_id(t.content) for t in self._tok.get_added_tokens_decoder().values()}
        self.special_ids = frozenset(i for i in special if i is not None)
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        self._template = env.from_string(template) if template else None

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self._tok.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return self._tok.decode(ids, skip_special_tokens=skip_special_tokens)

    def id_to_token(self, token_id: int) -> str | None:
        return self._tok.id_to_token(token_id)

    def apply_chat_template(
        self,
        messages: list[dict[str, Any]],
        add_generation_prompt: bool = True,
        chat_template_kwargs: dict[str, Any] | None = None,
    ) -> str:
        if self._template is None:
            raise ValueError("this tokenizer has no chat template; chat completions are unavailable")
        return self._template.render(
            messages=messages,
            add_generation_prompt=add_generation_prompt,
            bos_token=self.bos_token or "",
            eos_token=self.eos_token or "",
            **(chat_template_kwargs or {}),
        )

    def encode_chat(self, messages: list[dict[str, Any]], add_generation_prompt: bool = True) -> list[int]:
        # The template already emits BOS, as vLLM does for chat: no second one from the post-processor.
        return self.encode(
            self.apply_chat_template(messages, add_generation_prompt), add_special_tokens=False
        )

    def incremental_decoder(self) -> IncrementalDecoder:
        return IncrementalDecoder(self._tok, [])


class StopStringMatcher:
    """Finds the first stop string in the generated text, as vLLM checks ``stop`` after each token."""

    def __init__(
        self, decoder: IncrementalDecoder, stops: list[str], include_in_output: bool = False
    ) -> None:
        self._decoder = decoder
        self._stops = stops
        self._longest = max(len(s) for s in stops)
        self._include = include_in_output
        self.text = ""
        self.cut: int | None = None

    def push(self, token_id: int) -> str | None:
        delta = self._decoder.push(token_id)
        if not delta:
            return None
        search_from = max(0, len(self.text) - self._longest + 1)
        self.text += delta
        found: tuple[int, str] | None = None
        for stop in self._stops:
            at = self.text.find(stop, search_from)
            if at >= 0 and (found is None or at < found[0]):
                found = (at, stop)
        if found is None:
            return None
        self.cut = found[0] + (len(found[1]) if self._include else 0)
        return found[1]

    @property
    def final_text(self) -> str:
        return self.text if self.cut is None else self.text[: self.cut]
