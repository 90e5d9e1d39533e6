"""KV tier on real vLLM (CPU build): time to first token when a prompt's KV is loaded from the tier, against
computing it, on the same engine.

Two engines with our connector (``BrixTierConnector``) on one tier node. Per prompt length, fresh prompts
(never seen by any engine or the tier):

- **recompute**: engine B serves the prompt: the tier misses (one lookup), B computes everything;
- **tier load**: engine A serves the prompt first (its blocks go to the tier), then B serves it: B loads all
  full blocks from the tier and computes only the last partial block.

TTFT is the client's time to the first streamed token (temperature 0, 8 output tokens); B's own
``prompt_tokens_by_source`` counters confirm what was loaded. Both engines run with ``--enforce-eager`` on
a shared small CPU box, so figures are noisy: compare the two columns, not absolute values. The tiny test
model computes a prompt in milliseconds, less than the fixed cost of a load; ``--wide`` serves a wider
random Llama (same tokenizer; 4 layers, hidden 1024, 8 KV heads of 128: 512 KiB of KV per 32-token block,
built once into the brixmesh cache with vLLM's venv), where computing a prompt costs what it does for real
models and loading it is a transfer of megabytes.

Usage: ``.venv/bin/python bench/kv_tier_vllm.py [--quick] [--wide]``; headline on the last line.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

# The real-vLLM launcher the tests use (one place for vLLM's flags on a small CPU box).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from brixmesh.common.ports import free_port  # noqa: E402
from brixmesh.common.servers import NatsServer  # noqa: E402
from brixmesh.common.vllm_cpu import tier_kv_transfer_config  # noqa: E402
from brixmesh.common.vllm_cpu import cache_dir, find_install  # noqa: E402
from tests.plugins.vllm_engine import VllmEngine, vllm_engines  # noqa: E402

BY_SOURCE = re.compile(r'^vllm:prompt_tokens_by_source_total\{[^}]*source="(\w+)"[^}]*\} ([0-9.e+]+)$', re.M)
TIER_BLOCKS = re.compile(r"^brixmesh_kv_tier_blocks ([0-9.e+]+)$", re.M)
SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"

# Run by vLLM's venv python: the tiny model's builder with a wider config (argv[1]: target directory).
WIDE_MODEL_BUILD = f"""
import shutil, sys
from pathlib import Path
sys.path.insert(0, {str(SCRIPTS)!r})
import torch
import build_tiny_model as tiny
from transformers import GenerationConfig, LlamaForCausalLM
config = tiny.model_config()
config.hidden_size, config.intermediate_size, config.num_hidden_layers = 1024, 4096, 4
config.num_attention_heads = config.num_key_value_heads = 8
config.head_dim = 128
torch.manual_seed(0)
model = LlamaForCausalLM(config).to(torch.bfloat16)
model.generation_config = GenerationConfig(
    bos_token_id=tiny.BOS_ID, eos_token_id=tiny.EOS_ID, pad_token_id=tiny.PAD_ID
)
target = Path(sys.argv[1])
model.save_pretrained(target, safe_serialization=True)
for name in tiny.TOKENIZER_FILES:
    shutil.copyfile(tiny.TOKENIZER_ASSETS / name, target / name)
"""


def wide_model() -> Path:
    """The wide random model's directory, built on first use."""
    target = cache_dir() / "models" / "wide-llama"
    if not (target / "model.safetensors").is_file():
        staging = Path(tempfile.mkdtemp(prefix=".wide-llama-", dir=target.parent))
        python = find_install().venv / "bin" / "python"
        subprocess.run([str(python), "-c", WIDE_MODEL_BUILD, str(staging)], check=True, env={
            **os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
        })  # fmt: skip
        staging.rename(target)
    return target


@contextmanager
def tier_node(nats_url: str, workdir: Path) -> Iterator[tuple[str, str]]:
    """A tier node process: (block-protocol address, HTTP URL)."""
    port, http_port = free_port(), free_port()
    env = {
        **os.environ,
        "BRIXMESH_NATS_URL": nats_url,
        "BRIXMESH_PORT": str(http_port),
        "BRIXMESH_TIER_PORT": str(port),
        "BRIXMESH_TIER_MEMORY_MB": "512",
        "BRIXMESH_LOG_FORMAT": "text",
    }
    with open(workdir / "kv-tier.log", "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "brixmesh.kv_index.tier"], env=env, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    url = f"http://127.0.0.1:{http_port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"tier node did not start; log: {workdir / 'kv-tier.log'}")
            time.sleep(0.1)
        yield f"127.0.0.1:{port}", url
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(10)


def fresh_prompt(items: int) -> str:
    tag = uuid.uuid4().hex[:8]
    return f"{tag} " + " ".join(f"item{i} beta gamma" for i in range(items))


def ttft(client: httpx.Client, engine: VllmEngine, prompt: str) -> float:
    body = {
        "model": engine.model, "prompt": prompt, "max_tokens": 8, "temperature": 0, "ignore_eos": True,
        "stream": True,
    }  # fmt: skip
    started = time.perf_counter()
    with client.stream("POST", f"{engine.base_url}/v1/completions", json=body, timeout=120) as response:
        response.raise_for_status()
        first = None
        for line in response.iter_lines():
            if first is None and line.startswith("data: {"):
                first = time.perf_counter() - started
    if first is None:
        raise RuntimeError("the engine streamed no token")
    return first


def by_source(client: httpx.Client, engine: VllmEngine) -> dict[str, float]:
    text = client.get(f"{engine.base_url}/metrics").text
    return {source: float(value) for source, value in BY_SOURCE.findall(text)}


def tier_blocks(client: httpx.Client, tier_url: str) -> float:
    match = TIER_BLOCKS.search(client.get(f"{tier_url}/metrics").text)
    return float(match.group(1)) if match else 0.0


def wait_tier_blocks(client: httpx.Client, tier_url: str, at_least: float) -> None:
    deadline = time.monotonic() + 30
    while tier_blocks(client, tier_url) < at_least:
        if time.monotonic() > deadline:
            raise RuntimeError(f"tier holds {tier_blocks(client, tier_url)} blocks, expected {at_least}")
        time.sleep(0.02)


def prompt_tokens(client: httpx.Client, engine: VllmEngine, prompt: str) -> int:
    reply = client.post(f"{engine.base_url}/tokenize", json={"model": engine.model, "prompt": prompt}).json()
    return len(reply["tokens"])


def measure(engines: list[VllmEngine], tier_url: str, items: int, rounds: int) -> dict[str, float]:
    engine_a, engine_b = engines
    recompute, loaded_ttft, tokens = [], [], []
    with httpx.Client() as client:

        def served(engine: VllmEngine, prompt: str) -> float:
            """TTFT, then waits until the engine's saves of the prompt are all in the tier, so that the next
            measurement neither races them nor counts them as another engine's."""
            held = tier_blocks(client, tier_url)
            first = ttft(client, engine, prompt)
            wait_tier_blocks(client, tier_url, held + prompt_tokens(client, engine, prompt) // 32)
            return first

        served(engine_b, fresh_prompt(items))  # warm this shape
        before = by_source(client, engine_b)
        for _ in range(rounds):
            recompute.append(served(engine_b, fresh_prompt(items)))
            prompt = fresh_prompt(items)
            tokens.append(prompt_tokens(client, engine_b, prompt))
            served(engine_a, prompt)
            loaded_ttft.append(ttft(client, engine_b, prompt))
        after = by_source(client, engine_b)
    loaded = after["external_kv_transfer"] - before["external_kv_transfer"]
    return {
        "tokens": statistics.median(tokens),
        "recompute_ms": statistics.median(recompute) * 1000,
        "load_ms": statistics.median(loaded_ttft) * 1000,
        "loaded_per_prompt": loaded / rounds,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds and lengths (~3 min)")
    parser.add_argument("--wide", action="store_true", help="serve a wider random model (see the doc)")
    args = parser.parse_args()
    lengths = [60, 115] if args.quick else [15, 30, 60, 115]  # items: ~0.13k .. ~0.95k tokens
    model_dir = wide_model() if args.wide else None
    rounds = 3 if args.quick else 7
    workdir = Path(tempfile.mkdtemp(prefix="bench-kv-tier-vllm-"))
    nats = NatsServer(workdir / "nats").start()
    results = []
    try:
        with tier_node(nats.url, workdir) as (tier_address, tier_url):
            config = tier_kv_transfer_config([tier_address])
            extra_args = ["--kv-transfer-config", config]
            with vllm_engines(2, extra_args=extra_args, log_dir=workdir, model_dir=model_dir) as engines:
                header = ("prompt tokens", "loaded/prompt", "TTFT recompute ms", "TTFT tier ms")
                print("{:>13} {:>13} {:>18} {:>13}".format(*header))
                for items in lengths:
                    row = measure(engines, tier_url, items, rounds)
                    results.append(row)
                    print(
                        f"{row['tokens']:>13.0f} {row['loaded_per_prompt']:>13.0f} "
                        f"{row['recompute_ms']:>18.1f} {row['load_ms']:>13.1f}",
                        flush=True,
                    )
    finally:
        nats.stop()
    longest = results[-1]
    print(
        f"kv_tier_vllm: {longest['tokens']:.0f}-token prompt, TTFT tier load {longest['load_ms']:.1f} ms vs "
        f"recompute {longest['recompute_ms']:.1f} ms (x{longest['recompute_ms'] / longest['load_ms']:.2f}), "
        f"{longest['loaded_per_prompt']:.0f} tokens loaded per prompt"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
