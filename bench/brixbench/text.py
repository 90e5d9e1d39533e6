"""Deterministic prompt text whose token count is known.

Prompts are sequences of words that the engine tokenizer maps to one token each, so ``n`` words are about
``n`` tokens and a shared text prefix is a shared token-id prefix (what every prefix cache keys on).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

# Used when no tokenizer is at hand (unit tests, foreign engines): short common English words.
FALLBACK_WORDS: tuple[str, ...] = (
    "the", "of", "and", "to", "in", "is", "was", "for", "that", "with", "as", "on", "by", "at", "from",
    "his", "her", "they", "this", "which", "but", "not", "are", "have", "had", "one", "all", "were", "we",
    "when", "there", "can", "an", "your", "more", "would", "their", "will", "some", "been", "has", "who",
    "out", "into", "other", "than", "then", "time", "about", "only", "could", "these", "them", "two",
    "may", "first", "any", "like", "over", "such", "our", "what", "new", "most", "also", "did", "many",
    "after", "way", "where", "made", "very", "through", "back", "much", "before", "good", "well", "just",
    "year", "must", "people", "those", "under",
)


def single_token_words(tokenizer_json: Path, min_chars: int = 3) -> tuple[str, ...]:
    """Lower-case alphabetic words that a byte-level BPE vocabulary holds as one space-prefixed token."""
    vocab = json.loads(tokenizer_json.read_text())["model"]["vocab"]
    words = sorted(
        token[1:]
        for token in vocab
        if token.startswith("\u0120") and token[1:].isalpha() and token[1:].islower() and len(token) > min_chars
    )
    if len(words) < 50:
        raise ValueError(f"{tokenizer_json}: only {len(words)} single-token words; need at least 50")
    return tuple(words)


class TextSource:
    """Seeded word sequences; the same ``(seed, n)`` always gives the same text."""

    def __init__(self, words: tuple[str, ...] = FALLBACK_WORDS) -> None:
        if not words:
            raise ValueError("TextSource needs at least one word")
        self.words = words

    def text(self, rng: random.Random, n_words: int) -> str:
        return " ".join(rng.choices(self.words, k=max(1, n_words)))
