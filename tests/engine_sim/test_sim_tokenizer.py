"""Tokenizer wrapper: ChatML template from the assets, template override, incremental detokenization."""

from __future__ import annotations

from brixmesh.engine_sim.tokenizer import DEFAULT_TOKENIZER_DIR, SimTokenizer


def test_chat_template_renders_chatml_with_generation_prompt() -> None:
    tok = SimTokenizer(DEFAULT_TOKENIZER_DIR)
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}])
    assert text == "<s><|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    ids = tok.encode_chat([{"role": "user", "content": "hi"}])
    assert ids[:2] == [1, 4] and ids.count(1) == 1


def test_chat_template_override() -> None:
    tok = SimTokenizer(DEFAULT_TOKENIZER_DIR, "{% for m in messages %}[{{ m.content }}]{% endfor %}")
    assert (
        tok.apply_chat_template([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}])
        == "[a][b]"
    )


def test_incremental_decoder_concatenates_to_full_text() -> None:
    tok = SimTokenizer(DEFAULT_TOKENIZER_DIR)
    ids = tok.encode("Hello world, the quick brown fox", add_special_tokens=False)
    decoder = tok.incremental_decoder()
    assert "".join(decoder.push(i) for i in ids) == tok.decode(ids)
