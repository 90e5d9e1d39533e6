"""tiktoken in place of the Hugging Face tokenizer: the same ids on every text, refused for tokenizers
it cannot reproduce, and abandoned for good at the first sampled difference."""

from __future__ import annotations

import copy
import json
import logging
import random
from pathlib import Path
from typing import Any

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from tokenizers import Regex as HfRegex

from brixmesh.router.kv.fast_bpe import CheckedEncoder, tiktoken_encoding
from brixmesh.router.kv.tokenizer import LocalTokenizer
from tests.engine_sim.sim_engine import ASSETS

LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
    r"|\s+(?!\S)|\s+"
)


def texts() -> list[str]:
    """Prose, code, digits, whitespace runs, accents, emoji, CJK and the chat template's added tokens."""
    rng = random.Random(7)
    words = ["the", "harbour", "ship's", "they'll", "ünïcode", "naïve", "日本語", "🙂", "x=1;", "  ", "\n\n", "\t",
             "12345678", "3.14", "<|im_start|>", "<|im_end|>", "<s>", "don't", "URL:", "https://a.b/c?d=e"]  # fmt: skip
    samples = ["", " ", "a", "\n", "hello world", "  leading and trailing  ", "<|im_start|>user\nhi<|im_end|>\n"]
    for _ in range(300):
        samples.append("".join(rng.choice(words) + rng.choice(["", " ", " ", "\n"]) for _ in range(rng.randint(1, 60))))
    return samples


def config_of(directory: Path) -> dict[str, Any]:
    return json.loads((directory / "tokenizer.json").read_text())


def test_the_models_tokenizer_converts_and_encodes_every_text_like_hugging_face() -> None:
    hf = Tokenizer.from_file(str(ASSETS / "tokenizer.json"))
    encoding = tiktoken_encoding(config_of(ASSETS), "tiny-llama")
    assert encoding is not None
    for text in texts():
        assert encoding.encode(text, allowed_special="all") == hf.encode(text, add_special_tokens=False).ids, text


def test_a_split_then_byte_level_tokenizer_converts_like_llama_3(tmp_path: Path) -> None:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(HfRegex(LLAMA3_SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])  # fmt: skip
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600, special_tokens=["<|begin_of_text|>", "<|eot_id|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )  # fmt: skip
    tokenizer.train_from_iterator(texts(), trainer)
    encoding = tiktoken_encoding(json.loads(tokenizer.to_str()), "llama-3-like")
    assert encoding is not None
    for text in [*texts(), "<|begin_of_text|>system<|eot_id|>1234567 ok"]:
        assert encoding.encode(text, allowed_special="all") == tokenizer.encode(text).ids, text


def _broken(config: dict[str, Any], case: str) -> dict[str, Any]:
    broken = copy.deepcopy(config)
    if case == "byte fallback":
        broken["model"]["byte_fallback"] = True
    elif case == "metaspace pre-tokenizer":
        broken["pre_tokenizer"] = {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "always"}
    elif case == "lowercasing normalizer":
        broken["normalizer"] = {"type": "Lowercase"}
    elif case == "added token that strips":
        broken["added_tokens"][4]["lstrip"] = True
    elif case == "merges out of id order":
        merges = broken["model"]["merges"]
        merges[0], merges[-1] = merges[-1], merges[0]
    elif case == "a byte missing from the vocabulary":
        vocab = broken["model"]["vocab"]
        del vocab[next(token for token in vocab if token == "Ā")]
    return broken


@pytest.mark.parametrize("case", [
    "byte fallback", "metaspace pre-tokenizer", "lowercasing normalizer", "added token that strips",
    "merges out of id order", "a byte missing from the vocabulary",
])  # fmt: skip
def test_tokenizers_tiktoken_cannot_reproduce_are_refused(case: str) -> None:
    assert tiktoken_encoding(_broken(config_of(ASSETS), case), "x") is None


class _OffByOne:
    """A reference tokenizer that disagrees with tiktoken on texts containing ``"harbour"``."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self._tokenizer = tokenizer

    def encode(self, text: str, add_special_tokens: bool = True) -> Any:
        encoding = self._tokenizer.encode(text, add_special_tokens=add_special_tokens)
        return type("E", (), {"ids": [i + 1 for i in encoding.ids] if "harbour" in text else encoding.ids})


def test_the_first_sampled_difference_returns_the_reference_ids_and_ends_the_fast_path(caplog: Any) -> None:
    hf = Tokenizer.from_file(str(ASSETS / "tokenizer.json"))
    encoder = CheckedEncoder(_OffByOne(hf), config_of(ASSETS), "tiny-llama")  # type: ignore[arg-type]
    assert encoder.fast and encoder.encode("calm sea") == hf.encode("calm sea", add_special_tokens=False).ids
    with caplog.at_level(logging.WARNING, "brixmesh.router.kv.fast_bpe"):
        shifted = encoder.encode("the harbour")
    assert shifted == [i + 1 for i in hf.encode("the harbour", add_special_tokens=False).ids]
    assert not encoder.fast and encoder.mismatches == 1 and "uses the Hugging Face tokenizer" in caplog.text


def test_the_router_tokenizer_adds_the_models_special_tokens_around_a_completion_prompt() -> None:
    hf = Tokenizer.from_file(str(ASSETS / "tokenizer.json"))
    tokenizer = LocalTokenizer(ASSETS)
    assert tokenizer.fast
    for text in texts()[:50]:
        assert tokenizer.encode_prompt(text).tolist() == hf.encode(text, add_special_tokens=True).ids
