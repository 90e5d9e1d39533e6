"""The tiny tokenizer build is deterministic, matches the committed assets and has the agreed special ids."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from tokenizers import Tokenizer

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts/build_tiny_tokenizer.py"
ASSETS = REPO / "services/engine-sim/src/brixmesh/engine_sim/assets/tiny-llama"
FILES = ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja"]


def _load_builder():
    spec = importlib.util.spec_from_file_location("build_tiny_tokenizer", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_two_builds_are_byte_identical_and_match_committed_assets(tmp_path: Path) -> None:
    builder = _load_builder()
    builder.write_tokenizer(tmp_path / "a")
    builder.write_tokenizer(tmp_path / "b")
    for name in FILES:
        first = (tmp_path / "a" / name).read_bytes()
        assert first == (tmp_path / "b" / name).read_bytes(), name
        assert first == (ASSETS / name).read_bytes(), f"{name} differs from the committed asset; rebuild it"


def test_special_token_ids_and_post_processor() -> None:
    tokenizer = Tokenizer.from_file(str(ASSETS / "tokenizer.json"))
    assert tokenizer.get_vocab_size() == 2048
    expected = ["<unk>", "<s>", "</s>", "<pad>", "<|im_start|>", "<|im_end|>"]
    assert [tokenizer.token_to_id(token) for token in expected] == [0, 1, 2, 3, 4, 5]
    ids = tokenizer.encode("Hello world").ids
    assert ids[0] == 1 and 1 not in ids[1:]
    assert tokenizer.decode(ids) == "Hello world"
    assert tokenizer.encode("Hello world", add_special_tokens=False).ids == ids[1:]


def test_config_declares_chatml_and_eos_im_end() -> None:
    config = json.loads((ASSETS / "tokenizer_config.json").read_text())
    assert config["bos_token"] == "<s>"
    assert config["eos_token"] == "<|im_end|>"
    assert config["pad_token"] == "<pad>"
    assert config["model_max_length"] == 2048
    assert config["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert config["chat_template"] == (ASSETS / "chat_template.jinja").read_text()
    assert "<|im_start|>assistant\\n" in config["chat_template"]
