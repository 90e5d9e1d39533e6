"""Shared pieces of the simulated-cache vs real-vLLM differential tests.

A *recording* is one sequential run against real vLLM 0.32 (64 blocks x 32, sha256, PYTHONHASHSEED=0,
after ``POST /reset_prefix_cache``): the jobs, the tokens the engine generated for each, and every KV event
it published. :func:`replay_through_sim` drives ``KvCacheManager`` with the same token sequences the way
vLLM's scheduler does and returns its events in the same (decoded msgpack) shape.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import msgspec
from brixmesh.engine_sim.hashing import BlockHasher
from brixmesh.engine_sim.kv_cache import KvCacheManager
from brixmesh.engine_sim.kv_event_types import encode_batch

from tests.engine_sim.cache_request import Req

BLOCK_SIZE = 32
NUM_BLOCKS = 64
LORA = "lora-a"
RECORDING = Path(__file__).resolve().parent.parent / "fixtures" / "vllm-0.32-cpu" / "kv_sequential_run.json"


@dataclass
class Job:
    prompt: list[int]
    max_tokens: int
    lora: bool = False
    cache_salt: str | None = None
    session_id: str | None = None


@dataclass
class Recording:
    jobs: list[Job]
    generated: list[list[int]]
    events: list[dict[str, Any]]
    lora_path: str
    lora_id: int | None
    meta: dict[str, Any] = field(default_factory=dict)

    def save(self, path: Path) -> None:
        data = asdict(self)
        path.write_text(json.dumps(data, separators=(",", ":")) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: Path) -> Recording:
        data = json.loads(path.read_text(encoding="utf-8"))
        data["jobs"] = [Job(**job) for job in data["jobs"]]
        return cls(**data)


def workload() -> list[Job]:
    """Repeats, shared prefixes, exact-block prompts, salt, LoRA, session id, and ~100 blocks of pressure."""
    rng = random.Random(20261121)

    def tokens(n: int) -> list[int]:
        return [rng.randrange(10, 2000) for _ in range(n)]

    a, b = tokens(100), tokens(64)
    jobs = [
        Job(a, 40),  # prompt + generated blocks
        Job(a, 40),  # hit capped below the prompt end: the recomputed block is stored again (duplicate)
        Job(b, 1),  # exactly two blocks
        Job(b, 1),  # hits one block, stores the second again
        Job(a[:64] + tokens(80), 10),  # shares two blocks with a
        Job(tokens(70), 5, cache_salt="tenant-1"),
        Job(tokens(70), 5, lora=True),
        Job(tokens(40), 30, session_id="conversation-7"),
    ]
    jobs += [Job(tokens(300), 20) for _ in range(10)]  # ~100 blocks into a 63-block pool: eviction
    jobs += [Job(a, 40), Job(b, 1)]
    return jobs


def replay_through_sim(recording: Recording) -> list[dict[str, Any]]:
    mgr = KvCacheManager(NUM_BLOCKS, BLOCK_SIZE, BlockHasher("sha256", environ={"PYTHONHASHSEED": "0"}))
    for i, (job, output) in enumerate(zip(recording.jobs, recording.generated, strict=True)):
        req = Req(f"r{i}", list(job.prompt), cache_salt=job.cache_salt, session_id=job.session_id)
        if job.lora:
            req.lora_name, req.lora_path, req.lora_int_id = LORA, recording.lora_path, recording.lora_id
        req.num_computed_tokens = mgr.get_computed_blocks(req)
        assert mgr.allocate_slots(req, len(job.prompt) - req.num_computed_tokens)
        req.num_computed_tokens = len(job.prompt)
        # Every sampled token but the last is fed back and computed in the next step.
        for token in output[:-1]:
            req.all_token_ids.append(token)
            assert mgr.allocate_slots(req, 1)
            req.num_computed_tokens += 1
        mgr.free(req)
    return msgspec.msgpack.decode(encode_batch(mgr.take_events(), 0.0, 0))[1]


def assert_same_events(recording: Recording) -> None:
    real = recording.events
    # The workload exercises what the comparison is about.
    stored = [h for e in real if e["type"] == "BlockStored" for h in e["block_hashes"]]
    removed = [h for e in real if e["type"] == "BlockRemoved" for h in e["block_hashes"]]
    assert len(removed) > 10 and len(set(stored)) < len(stored)
    assert any(e.get("extra_keys") == [["tenant-1"], None] for e in real)
    assert any(e.get("lora_name") == LORA for e in real)
    assert any(e.get("session_id") == "conversation-7" for e in real)
    assert all(e["type"] != "AllBlocksCleared" for e in real)

    ours = replay_through_sim(recording)
    assert len(ours) == len(real)
    for index, (sim_event, real_event) in enumerate(zip(ours, real, strict=True)):
        assert sim_event == real_event, f"event {index} differs"
