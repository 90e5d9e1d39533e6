"""Workloads: what the client sends. Pure and seeded: the same arguments always give the same jobs.

A :class:`Job` is one conversation: a system text and one or more user turns, each with its output budget.
Single-turn jobs go to ``/v1/completions`` (prompt = system + "\\n\\n" + question, as SGLang's and llm-d's
shared-prefix generators); multi-turn jobs go to ``/v1/chat/completions`` and resend the whole history,
including the engine's own answers, on every turn. Lengths are in words of a :class:`TextSource`, which are
single tokens of the engine tokenizer, so they are token counts (up to a few boundary tokens).
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from brixbench.text import TextSource

Api = Literal["completions", "chat"]


@dataclass(frozen=True, slots=True)
class Job:
    id: str
    system: str
    turns: tuple[str, ...]
    max_tokens: tuple[int, ...]
    api: Api = "completions"
    group: str = ""
    """Jobs of one group share ``system`` (the shared prefix)."""
    at_s: float | None = None
    """Arrival time from a trace (modelled seconds); None: the arrival process decides."""

    def __post_init__(self) -> None:
        if not self.turns or len(self.turns) != len(self.max_tokens):
            raise ValueError(f"job {self.id}: needs as many max_tokens as turns (and at least one turn)")
        if self.api == "completions" and len(self.turns) != 1:
            raise ValueError(f"job {self.id}: completions jobs have exactly one turn")

    @property
    def prompt(self) -> str:
        """The single-turn prompt text."""
        return f"{self.system}\n\n{self.turns[0]}" if self.system else self.turns[0]


def _lengths(rng: random.Random, length: int, range_ratio: float) -> int:
    if range_ratio >= 1.0:
        return length
    return rng.randint(max(1, int(length * range_ratio)), length)


def shared_prefix(
    source: TextSource,
    *,
    groups: int = 64,
    prompts_per_group: int = 16,
    system_len: int = 2048,
    question_len: int = 128,
    output_len: int = 256,
    range_ratio: float = 1.0,
    shuffle: bool = True,
    seed: int = 0,
) -> list[Job]:
    """SGLang's ``generated-shared-prefix`` (defaults) and llm-d's ``shared_prefix`` (other parameters).

    With ``range_ratio`` < 1 each length is drawn from U[ratio * L, L]. Jobs are shuffled unless ``shuffle``
    is False (then group by group).
    """
    if groups < 1 or prompts_per_group < 1:
        raise ValueError("shared_prefix needs groups >= 1 and prompts_per_group >= 1")
    rng = random.Random(seed)
    jobs = []
    for g in range(groups):
        system = source.text(rng, _lengths(rng, system_len, range_ratio))
        for p in range(prompts_per_group):
            question = source.text(rng, _lengths(rng, question_len, range_ratio))
            out = _lengths(rng, output_len, range_ratio)
            jobs.append(Job(f"g{g}-p{p}", system, (question,), (out,), group=f"g{g}"))
    if shuffle:
        rng.shuffle(jobs)
    return jobs


def llmd_shared_prefix(source: TextSource, *, scale: float = 1.0, seed: int = 0) -> list[Job]:
    """llm-d's "73%-capacity" set: 150 groups x 5 prompts, system 6000, question 1200, output 1000.

    ``scale`` shrinks every length (and nothing else) so the set runs on a small machine; pair it with a KV
    capacity shrunk by the same factor to keep the cache pressure of the original.
    """
    return shared_prefix(source, groups=150, prompts_per_group=5, system_len=round(6000 * scale),
                         question_len=round(1200 * scale), output_len=max(2, round(1000 * scale)), seed=seed)


def pareto_sample(rng: random.Random, mean: float, std: float) -> float:
    """A Pareto draw with the given mean and standard deviation (shape from the coefficient of variation)."""
    cv = std / mean
    alpha = 1.0 + math.sqrt(1.0 + 1.0 / (cv * cv))
    x_m = mean * (alpha - 1.0) / alpha
    return x_m / (1.0 - rng.random()) ** (1.0 / alpha)


def multi_turn(
    source: TextSource,
    *,
    sessions: int = 1000,
    turns_mean: float = 3.55,
    turns_std: float = 2.89,
    turn_len_mean: float = 2000,
    turn_len_std: float = 500,
    max_turn_len: int | None = None,
    system_len: int = 0,
    output_len: int = 256,
    seed: int = 0,
) -> list[Job]:
    """AIBrix's multi-turn set: turns ~ N(3.55, 2.89) (min 1), Pareto per-turn lengths, full history resent."""
    rng = random.Random(seed)
    shared_system = source.text(rng, system_len) if system_len else ""
    jobs = []
    for s in range(sessions):
        n_turns = max(1, round(rng.gauss(turns_mean, turns_std)))
        turns = []
        for _ in range(n_turns):
            n = round(pareto_sample(rng, turn_len_mean, turn_len_std))
            turns.append(source.text(rng, min(n, max_turn_len) if max_turn_len else n))
        jobs.append(Job(f"s{s}", shared_system, tuple(turns), (output_len,) * n_turns, api="chat",
                        group=f"s{s}"))
    return jobs


def sharegpt_like(
    source: TextSource,
    *,
    requests: int = 1000,
    prompt_median: float = 120,
    prompt_sigma: float = 1.1,
    output_median: float = 140,
    output_sigma: float = 1.0,
    seed: int = 0,
) -> list[Job]:
    """Lognormal prompt/output lengths shaped like ShareGPT V3, kept by vLLM's benchmark filter.

    The filter: drop prompt or output < 4 tokens, prompt > 1024, prompt + output > 2048. No prefix sharing.
    """
    rng = random.Random(seed)
    jobs = []
    while len(jobs) < requests:
        n_in = round(rng.lognormvariate(math.log(prompt_median), prompt_sigma))
        n_out = round(rng.lognormvariate(math.log(output_median), output_sigma))
        if n_in < 4 or n_out < 4 or n_in > 1024 or n_in + n_out > 2048:
            continue
        jobs.append(Job(f"r{len(jobs)}", "", (source.text(rng, n_in),), (n_out,)))
    return jobs


MOONCAKE_BLOCK_TOKENS = 512


class TraceError(ValueError):
    """A trace line is malformed; ``str()`` names the line."""


def mooncake_trace(
    lines: Iterable[str], source: TextSource, *, block_tokens: int = MOONCAKE_BLOCK_TOKENS,
    limit: int | None = None,
) -> list[Job]:
    """Mooncake JSONL (``timestamp`` ms, ``input_length``, ``output_length``, ``hash_ids``) as jobs.

    Every hash id expands to the same ``block_tokens`` words wherever it appears (seeded by the id), so
    requests that share hash-id prefixes share prompt prefixes; the last block is cut to ``input_length``.
    """
    blocks: dict[int, list[str]] = {}
    jobs = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            at_ms = float(record["timestamp"])
            n_in = int(record["input_length"])
            n_out = int(record["output_length"])
            hash_ids = [int(h) for h in record["hash_ids"]]
        except (ValueError, KeyError, TypeError) as exc:
            raise TraceError(f"trace line {number}: {exc.__class__.__name__}: {exc}") from None
        words: list[str] = []
        for hash_id in hash_ids:
            block = blocks.get(hash_id)
            if block is None:
                block = blocks[hash_id] = source.text(random.Random(hash_id), block_tokens).split(" ")
            words.extend(block)
            if len(words) >= n_in:
                break
        if len(words) < n_in:  # a trace whose hash ids cover less than input_length: pad deterministically
            words.extend(source.text(random.Random(f"pad-{number}"), n_in - len(words)).split(" "))
        jobs.append(Job(f"t{number}", "", (" ".join(words[:n_in]),), (max(1, n_out),), at_s=at_ms / 1000.0))
        if limit is not None and len(jobs) >= limit:
            break
    return jobs
