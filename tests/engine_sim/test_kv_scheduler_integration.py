"""The simulator's scheduler driving the simulated cache reproduces a recorded real vLLM 0.32 run.

Same recording as ``test_kv_vs_recorded_vllm``, but the requests go through ``Scheduler`` (admission,
chunk sizing, decode steps, finishing) instead of a hand-written driver, so the events check the way
the scheduler calls ``get_computed_blocks``/``allocate_slots``/``cache_full_blocks``/``free``.
"""

from __future__ import annotations

from typing import Any

import msgspec
from brixmesh.engine_sim.hashing import BlockHasher
from brixmesh.engine_sim.kv_cache import KvCacheManager
from brixmesh.engine_sim.kv_event_types import encode_batch
from brixmesh.engine_sim.request import SimRequest
from brixmesh.engine_sim.scheduler import Scheduler, SchedulerLimits

from tests.engine_sim.kv_differential import BLOCK_SIZE, LORA, NUM_BLOCKS, RECORDING, Recording


class _Replay:
    """Stands in for ``TokenStream``: yields the tokens the real engine generated."""

    def __init__(self, tokens: list[int]) -> None:
        self._tokens = iter(tokens)

    def next_token(self) -> int:
        return next(self._tokens)


def _run(recording: Recording) -> list[dict[str, Any]]:
    kv = KvCacheManager(NUM_BLOCKS, BLOCK_SIZE, BlockHasher("sha256", environ={"PYTHONHASHSEED": "0"}))
    scheduler = Scheduler(
        SchedulerLimits(max_num_seqs=256, max_num_batched_tokens=4096, max_model_len=1024), kv
    )
    now = 0.0
    for i, (job, output) in enumerate(zip(recording.jobs, recording.generated, strict=True)):
        request = SimRequest(
            request_id=f"r{i}",
            prompt_token_ids=list(job.prompt),
            max_tokens=job.max_tokens,
            tokens=_Replay(output),  # type: ignore[arg-type]
            arrival_time=now,
            ignore_eos=True,
            lora_name=LORA if job.lora else None,
            lora_path=recording.lora_path if job.lora else None,
            lora_int_id=recording.lora_id if job.lora else None,
            cache_salt=job.cache_salt,
        )
        scheduler.add(request)
        while not request.is_finished:
            now += 0.01
            scheduler.finish_step(scheduler.schedule(now), now)
        assert request.output_token_ids == output
    return msgspec.msgpack.decode(encode_batch(kv.take_events(), 0.0, 0))[1]


def test_scheduler_and_cache_reproduce_recorded_vllm_events() -> None:
    recording = Recording.load(RECORDING)
    # SimRequest has no session_id field (yet): compare everything else.
    real = [{k: v for k, v in e.items() if k != "session_id"} for e in recording.events]
    ours = [{k: v for k, v in e.items() if k != "session_id"} for e in _run(recording)]
    assert len(ours) == len(real)
    for index, (sim_event, real_event) in enumerate(zip(ours, real, strict=True)):
        assert sim_event == real_event, f"event {index} differs"
