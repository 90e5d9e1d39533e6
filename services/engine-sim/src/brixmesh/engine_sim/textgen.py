"""Deterministic output tokens: the same prompt, adapter and seed always produce the same ids.

Like a real engine at temperature 0 with random weights, output is gibberish but reproducible across
requests and restarts. Special tokens are never sampled; EOS appears only when asked for via
``eos_probability`` (real random-weight models practically never emit it).
"""

from __future__ import annotations

import hashlib
import random
import struct


class TokenStream:
    __slots__ = ("_rng", "_low", "_high", "_eos_id", "_eos_probability")

    def __init__(
        self,
        prompt_ids: list[int],
        vocab_size: int,
        first_regular_id: int,
        eos_id: int | None,
        eos_probability: float = 0.0,
        seed: int = 0,
        adapter: str | None = None,
    ) -> None:
        digest = hashlib.blake2b(digest_size=16)
        digest.update(struct.pack("<q", seed))
        digest.update((adapter or "").encode())
        digest.update(struct.pack(f"<{len(prompt_ids)}I", *prompt_ids))
        self._rng = random.Random(digest.digest())
        self._low = first_regular_id
        self._high = vocab_size
        self._eos_id = eos_id
        self._eos_probability = eos_probability

    def next_token(self) -> int:
        if (
            self._eos_id is not None
            and self._eos_probability > 0
            and self._rng.random() < self._eos_probability
        ):
            return self._eos_id
        return self._rng.randrange(self._low, self._high)
