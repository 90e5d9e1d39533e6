"""Byte-level BPE through tiktoken: the same token ids as the Hugging Face tokenizer, about 4x cheaper.

Most of the router's CPU per chat request is tokenizing it. The Hugging Face ``tokenizers`` library builds a
full ``Encoding`` (offsets, masks, word ids) per call; tiktoken only splits, merges and returns ids. Both
implement byte-level BPE, so a tokenizer of that shape converts exactly when:

- the model is plain BPE (no dropout, no subword prefix/suffix, no byte fallback) whose vocabulary holds all
  256 single bytes, and whose merges produce tokens in id order (tiktoken merges the pair whose result has
  the lowest id; Hugging Face applies the earliest merge rule);
- the pre-tokenizer is ``ByteLevel`` with its GPT-2 regex, or a regex ``Split`` (isolated) before a
  regex-less ``ByteLevel`` (Llama 3, Qwen 2 and most current models);
- there is no normalizer, or NFC;
- added tokens match literally (no lstrip/rstrip/single-word), as tiktoken's special tokens do.

tiktoken may still join two pieces whose concatenation is a vocabulary token that no merge rule of the
Hugging Face model produces from them; :class:`CheckedEncoder` compares a sample of encodes with the Hugging
Face tokenizer and falls back to it for good at the first difference.
"""

from __future__ import annotations

import logging
import unicodedata
from typing import Any

import tiktoken
from tokenizers import Tokenizer

log = logging.getLogger(__name__)

GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
"""The split regex of ``ByteLevel(use_regex=True)`` (GPT-2's)."""

CHECK_FIRST = 16
"""Encodes compared with the Hugging Face tokenizer before sampling starts."""
CHECK_EVERY = 1024
"""After those, one encode in this many is compared (a full Hugging Face encode of a long chat costs as much as
a few hundred tiktoken encodes of one turn)."""


def _byte_decoder() -> dict[str, int]:
    """The inverse of byte-level BPE's byte -> printable character table (GPT-2's ``bytes_to_unicode``)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars = {byte: chr(byte) for byte in printable}
    shifted = 0
    for byte in range(256):
        if byte not in chars:
            chars[byte] = chr(256 + shifted)
            shifted += 1
    return {char: byte for byte, char in chars.items()}


def _split_pattern(pre_tokenizer: dict[str, Any] | None) -> str | None:
    if pre_tokenizer is None:
        return None
    kind = pre_tokenizer.get("type")
    if kind == "ByteLevel":
        plain = pre_tokenizer.get("use_regex", True) and not pre_tokenizer.get("add_prefix_space", False)
        return GPT2_PATTERN if plain else None
    if kind != "Sequence" or len(pre_tokenizer.get("pretokenizers", [])) != 2:
        return None
    split, byte_level = pre_tokenizer["pretokenizers"]
    regex = split.get("pattern", {}).get("Regex") if split.get("type") == "Split" else None
    if (
        regex is None or split.get("behavior") != "Isolated" or split.get("invert")
        or byte_level.get("type") != "ByteLevel" or byte_level.get("use_regex", True)
        or byte_level.get("add_prefix_space", False)
    ):  # fmt: skip
        return None
    return str(regex)


def _ranks(model: dict[str, Any], added: set[str]) -> dict[bytes, int] | None:
    """tiktoken's mergeable ranks (bytes -> id), or None when the vocabulary does not convert exactly."""
    to_byte = _byte_decoder()
    ranks: dict[bytes, int] = {}
    for token, token_id in model["vocab"].items():
        if token in added:
            continue
        try:
            ranks[bytes(to_byte[char] for char in token)] = token_id
        except KeyError:  # not a byte-level token
            return None
    if len(ranks) != len(model["vocab"]) - len(added & model["vocab"].keys()):
        return None
    if any(bytes([byte]) not in ranks for byte in range(256)):
        return None
    last = -1
    for merge in model.get("merges", []):
        left, right = merge.split(" ", 1) if isinstance(merge, str) else merge
        token_id = model["vocab"].get(left + right)
        if token_id is None or token_id <= last:
            return None
        last = token_id
    return ranks


def tiktoken_encoding(config: dict[str, Any], name: str) -> tiktoken.Encoding | None:
    """The tiktoken equivalent of a ``tokenizer.json``, or None when its shape does not convert exactly."""
    model = config.get("model") or {}
    if (
        model.get("type") != "BPE" or model.get("dropout") or model.get("continuing_subword_prefix")
        or model.get("end_of_word_suffix") or model.get("byte_fallback")
    ):  # fmt: skip
        return None
    normalizer = config.get("normalizer")
    if normalizer is not None and normalizer.get("type") != "NFC":
        return None
    pattern = _split_pattern(config.get("pre_tokenizer"))
    if pattern is None:
        return None
    added_tokens = config.get("added_tokens", [])
    if any(token.get("lstrip") or token.get("rstrip") or token.get("single_word") for token in added_tokens):
        return None
    special = {token["content"]: token["id"] for token in added_tokens if token.get("content")}
    ranks = _ranks(model, set(special))
    if ranks is None:
        return None
    try:
        return tiktoken.Encoding(name, pat_str=pattern, mergeable_ranks=ranks, special_tokens=special)
    except ValueError:  # e.g. a pattern tiktoken's regex engine rejects
        return None


class CheckedEncoder:
    """``encode(text) -> ids`` (no special tokens added) through tiktoken, checked against the Hugging Face
    tokenizer on a sample; the Hugging Face tokenizer alone once a check failed or when none converts."""

    def __init__(self, tokenizer: Tokenizer, config: dict[str, Any], name: str) -> None:
        self._tokenizer = tokenizer
        self._fast = tiktoken_encoding(config, name)
        self._nfc = (config.get("normalizer") or {}).get("type") == "NFC"
        self._calls = 0
        self.name = name
        self.mismatches = 0

    @property
    def fast(self) -> bool:
        return self._fast is not None

    def encode(self, text: str) -> list[int]:
        fast = self._fast
        if fast is None:
            return self._tokenizer.encode(text, add_special_tokens=False).ids
        if self._nfc and not unicodedata.is_normalized("NFC", text):
            text = unicodedata.normalize("NFC", text)
        ids = fast.encode(text, allowed_special="all")
        self._calls += 1
        if self._calls <= CHECK_FIRST or self._calls % CHECK_EVERY == 0:
            expected = self._tokenizer.encode(text, add_special_tokens=False).ids
            if ids != expected:
                self._disable(text)
                return expected
        return ids

    def _disable(self, text: str) -> None:
        self._fast = None
        self.mismatches += 1
        log.warning(
            "tokenizer %s: tiktoken's ids differ from the Hugging Face tokenizer's on a %d-character text; "
            "the router uses the Hugging Face tokenizer from now on", self.name, len(text)
        )


def special_tokens_around(tokenizer: Tokenizer) -> tuple[list[int], list[int]]:
    """The ids ``encode(..., add_special_tokens=True)`` puts before and after a text's own (BOS, EOS)."""
    plain = tokenizer.encode("a", add_special_tokens=False).ids
    full = tokenizer.encode("a", add_special_tokens=True).ids
    for start in range(len(full) - len(plain) + 1):
        if full[start : start + len(plain)] == plain:
            return full[:start], full[start + len(plain) :]
    return [], []
