"""Build the tiny byte-level BPE tokenizer shared by the engine simulator and the real-vLLM test model.

Fully offline and deterministic: the training corpus is generated from a fixed seed, so two builds produce
byte-identical files. Output (default: the engine-sim package's ``assets/tiny-llama``):

- ``tokenizer.json``          the ``tokenizers`` model (vocab 2048, byte-level BPE)
- ``tokenizer_config.json``   ``PreTrainedTokenizerFast`` config, special tokens, ChatML chat template
- ``special_tokens_map.json``
- ``chat_template.jinja``     the same ChatML template (newer transformers read it from here)

Special tokens take ids 0-5: ``<unk> <s> </s> <pad> <|im_start|> <|im_end|>``; bos ``<s>``, eos
``<|im_end|>`` (so chat replies stop at the end of the assistant turn), pad ``<pad>``. Every encoding gets
``<s>`` prepended by the post-processor.

Usage: ``python scripts/build_tiny_tokenizer.py [--out DIR] [--seed N]``
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

VOCAB_SIZE = 2048
MODEL_MAX_LENGTH = 2048
CORPUS_LINES = 20_000
DEFAULT_SEED = 0

UNK, BOS, EOS_TEXT, PAD, IM_START, IM_END = "<unk>", "<s>", "</s>", "<pad>", "<|im_start|>", "<|im_end|>"
SPECIAL_TOKENS = [UNK, BOS, EOS_TEXT, PAD, IM_START, IM_END]
EOS = IM_END

CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

DEFAULT_OUT = (
    Path(__file__).resolve().parent.parent / "services/engine-sim/src/brixmesh/engine_sim/assets/tiny-llama"
)

COMMON_WORDS = """
the be to of and a in that have I it for not on with he as you do at this but his by from they we say her
she or an will my one all would there their what so up out if about who get which go me when make can like
time no just him know take people into year your good some could them see other than then now look only come
its over think also back after use two how our work first well way even new want because any these give day
most us is are was were has had been being hello world please thank thanks yes question answer model token
cache block request response server engine route router fleet service data system user assistant message
prompt reply help explain write code python number list table summary short long fast slow small large
""".split()

ONSETS = [
    "",
    "b",
    "c",
    "d",
    "f",
    "g",
    "h",
    "k",
    "l",
    "m",
    "n",
    "p",
    "r",
    "s",
    "t",
    "v",
    "w",
    "z",
    "br",
    "ch",
    "cl",
    "dr",
    "fl",
    "gr",
    "pl",
    "pr",
    "sh",
    "st",
    "th",
    "tr",
]
VOWELS = ["a", "e", "i", "o", "u", "ai", "ea", "ee", "io", "oo", "ou"]
CODAS = ["", "", "", "n", "r", "s", "t", "l", "m", "nd", "ng", "rk", "st"]
PUNCTUATION = [".", ".", ".", ",", "!", "?", ":", ";"]


def _syllable_word(rng: random.Random) -> str:
    syllables = rng.randint(1, 3)
    return "".join(rng.choice(ONSETS) + rng.choice(VOWELS) + rng.choice(CODAS) for _ in range(syllables))


def _word(rng: random.Random) -> str:
    roll = rng.random()
    if roll < 0.08:
        return str(rng.randint(0, 10 ** rng.randint(1, 5)))
    word = rng.choice(COMMON_WORDS) if roll < 0.6 else _syllable_word(rng)
    return word.capitalize() if rng.random() < 0.1 else word


def corpus(seed: int, lines: int = CORPUS_LINES) -> list[str]:
    """Seeded pseudo-English: common words mixed with random syllable words and occasional numbers."""
    rng = random.Random(seed)
    out = []
    for _ in range(lines):
        words = [_word(rng) for _ in range(rng.randint(3, 16))]
        words[0] = words[0].capitalize()
        out.append(" ".join(words) + rng.choice(PUNCTUATION))
    return out


def build_tokenizer(seed: int = DEFAULT_SEED) -> Tokenizer:
    tokenizer = Tokenizer(models.BPE(unk_token=UNK))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        min_frequency=2,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus(seed), trainer=trainer)
    bos_id = tokenizer.token_to_id(BOS)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B:1", special_tokens=[(BOS, bos_id)]
    )
    return tokenizer


def _check_special_ids(tokenizer: Tokenizer) -> None:
    for expected_id, token in enumerate(SPECIAL_TOKENS):
        actual = tokenizer.token_to_id(token)
        if actual != expected_id:
            raise RuntimeError(f"special token {token!r} got id {actual}, expected {expected_id}")
    if tokenizer.get_vocab_size() != VOCAB_SIZE:
        raise RuntimeError(f"vocab size {tokenizer.get_vocab_size()}, expected {VOCAB_SIZE}")


def tokenizer_config() -> dict:
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": MODEL_MAX_LENGTH,
        "bos_token": BOS,
        "eos_token": EOS,
        "unk_token": UNK,
        "pad_token": PAD,
        "additional_special_tokens": [IM_START],
        "clean_up_tokenization_spaces": False,
        "added_tokens_decoder": {
            str(i): {
                "content": token,
                "lstrip": False,
                "normalized": False,
                "rstrip": False,
                "single_word": False,
                "special": True,
            }
            for i, token in enumerate(SPECIAL_TOKENS)
        },
        "chat_template": CHAT_TEMPLATE,
    }


def special_tokens_map() -> dict:
    return {
        "bos_token": BOS,
        "eos_token": EOS,
        "unk_token": UNK,
        "pad_token": PAD,
        "additional_special_tokens": [IM_START],
    }


def _write_json(path: Path, obj: dict) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False, sort_keys=True) + "\n", encoding="utf-8")


def write_tokenizer(out_dir: Path, seed: int = DEFAULT_SEED) -> None:
    tokenizer = build_tokenizer(seed)
    _check_special_ids(tokenizer)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(out_dir / "tokenizer.json"), pretty=True)
    _write_json(out_dir / "tokenizer_config.json", tokenizer_config())
    _write_json(out_dir / "special_tokens_map.json", special_tokens_map())
    (out_dir / "chat_template.jinja").write_text(CHAT_TEMPLATE, encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help=f"output directory (default {DEFAULT_OUT})"
    )
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="corpus seed (default 0)")
    args = parser.parse_args(argv)
    try:
        write_tokenizer(args.out, args.seed)
    except (OSError, RuntimeError) as exc:
        print(f"build_tiny_tokenizer: {exc}", file=sys.stderr)
        return 1
    print(f"tiny tokenizer written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
