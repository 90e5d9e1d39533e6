"""Deterministic stand-in logprobs in vLLM's completion and chat shapes.

Values are pseudo-random but reproducible per (token, position): a random-weight model's distribution is
nearly flat, so every logprob sits around -7 (as the real tiny model reports).
"""

from __future__ import annotations

import random
from typing import Any

from brixmesh.engine_sim.tokenizer import SimTokenizer


class LogprobMaker:
    def __init__(self, tokenizer: SimTokenizer, first_regular_id: int) -> None:
        self._tok = tokenizer
        self._low = first_regular_id

    def _entry(self, token_id: int, position: int, k: int) -> tuple[str, float, list[tuple[str, float]]]:
        rng = random.Random((token_id << 24) ^ position)
        sampled = -7.0 - rng.random()
        alternatives = []
        for _ in range(k):
            alt = rng.randrange(self._low, self._tok.vocab_size)
            alternatives.append((self.token_text(alt), -6.8 - rng.random() * 0.3))
        return self.token_text(token_id), sampled, alternatives

    def token_text(self, token_id: int) -> str:
        return self._tok.decode([token_id], skip_special_tokens=False)

    def completion(
        self, token_ids: list[int], k: int, first_position: int = 0, offset: int = 0
    ) -> dict[str, Any]:
        """``{"text_offset", "token_logprobs", "tokens", "top_logprobs"}`` for ``token_ids``."""
        tokens, logprobs, tops, offsets = [], [], [], []
        for i, token_id in enumerate(token_ids):
            text, value, alternatives = self._entry(token_id, first_position + i, k)
            offsets.append(offset)
            offset += len(text)
            tokens.append(text)
            logprobs.append(value)
            tops.append({text: value, **dict(alternatives)})
        return {"text_offset": offsets, "token_logprobs": logprobs, "tokens": tokens, "top_logprobs": tops}

    def chat(self, token_ids: list[int], k: int, first_position: int = 0) -> dict[str, Any]:
        """``{"content": [{"token", "logprob", "bytes", "top_logprobs"}]}`` for ``token_ids``."""
        content = []
        for i, token_id in enumerate(token_ids):
            text, value, alternatives = self._entry(token_id, first_position + i, k)
            top = [(text, value), *alternatives][:k]
            content.append(
                {
                    "token": text,
                    "logprob": value,
                    "bytes": list(text.encode()),
                    "top_logprobs": [{"token": t, "logprob": v, "bytes": list(t.encode())} for t, v in top],
                }
            )
        return {"content": content}
