"""The ``optimizer`` strategy as a process on a real NATS server: profiles from a file and from the bus,
traffic shapes from router stats, decisions per GPU-type deployment; an infeasible load keeps the plan."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import msgspec
import pytest
import yaml
from brixmesh.common.bus import Bus
from brixmesh.common.messages import (
    DeploymentStatus,
    GpuPlan,
    GpuProfile,
    PodEvent,
    PodInfo,
    ProfileCell,
    RouterStats,
    ScaleDecision,
    ShapeCount,
    Slo,
)  # fmt: skip
from brixmesh.common.servers import NatsServer
from brixmesh.common.subjects import (
    DEPLOYMENTS_STATUS,
    GPU_PLANS,
    GPU_PROFILES,
    PODS,
    ROUTER_STATS,
    SCALE_DECISIONS,
)

from tests.autoscaler.autoscaler_proc import autoscaler_process
from tests.waiting import eventually

MODEL = "mix-model"
SHORT, LONG = (7, 6), (11, 8)
SLO = Slo(ttft_s=1.0, tpot_s=0.1)


def profile(gpu: str, cost: float, short: float, long: float) -> GpuProfile:
    cells = [ProfileCell(input_bucket=SHORT[0], output_bucket=SHORT[1], max_rate=short),
             ProfileCell(input_bucket=LONG[0], output_bucket=LONG[1], max_rate=long)]
    return GpuProfile(model=MODEL, gpu=gpu, cost_per_hour=cost, slo=SLO, cells=cells, created_at=time.time())


async def test_optimizer_strategy_scales_gpu_type_deployments(
    nats_server: NatsServer, bus: Bus, tmp_path: Path
) -> None:
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    (profiles / "a10.json").write_bytes(msgspec.json.encode(profile("a10", 1.0, 4.0, 0.5)))
    spec = {"name": "mix", "model": MODEL, "deployments": {"a10": "chat-a10", "l20": "chat-l20"},
            "profiles_dir": str(profiles), "window_s": 3, "min_window_s": 1, "scale_down_delay_s": 0}
    spec_file = tmp_path / "optimizers.yaml"
    spec_file.write_text(yaml.safe_dump({"gpu_optimizers": [spec]}))
    decisions: dict[str, ScaleDecision] = {}
    await bus.subscribe(SCALE_DECISIONS.pattern(), ScaleDecision,
                        lambda _s, d: decisions.__setitem__(d.deployment, d))
    plans: list[GpuPlan] = []
    await bus.subscribe(GPU_PLANS.pattern(), GpuPlan, lambda _s, p: plans.append(p))

    async with autoscaler_process(nats_server.url, spec_file, tmp_path / "autoscaler.log",
                                  autoscaler_specs="", gpu_optimizer_specs=str(spec_file),
                                  evaluate_interval_s="0.2") as url:
        for deployment in ("chat-a10", "chat-l20"):
            pod = PodInfo(pod=f"{deployment}-0", deployment=deployment, model=MODEL, engine="sim",
                          endpoint="http://127.0.0.1:9")
            await bus.publish(PODS.format(kind="ready", deployment=deployment, pod=pod.pod),
                              PodEvent(kind="ready", pod=pod, ts=time.time()))
        # the l20 profile arrives over the bus (as `brixmesh profile` publishes it)
        await bus.publish(GPU_PROFILES.format(model=MODEL, gpu="l20"), profile("l20", 1.6, 6.0, 2.0))

        shapes: list[ShapeCount] = []

        async def router_stats() -> None:
            while True:
                await bus.publish(ROUTER_STATS.format(model=MODEL, router="r1"), RouterStats(
                    router="r1", model=MODEL, ts=time.time(), window_s=1.0, arrivals=0, completions=0,
                    failures=0, in_flight=0, queued=0, prompt_tokens=0, completion_tokens=0,
                    shapes=[ShapeCount(s.input_bucket, s.output_bucket, s.count) for s in shapes]))
                await asyncio.sleep(0.25)

        def replicas() -> dict[str, int]:
            return {d: decision.desired_replicas for d, decision in decisions.items()}

        publisher = asyncio.create_task(router_stats())
        try:
            shapes[:] = [ShapeCount(*SHORT, 8)]  # 8 req/s short: 2 a10 (2.0/h) beat 2 l20 (3.2/h)
            await eventually(lambda: replicas() == {"chat-a10": 2, "chat-l20": 0}, 15,
                             describe=lambda: str(replicas()))
            assert decisions["chat-a10"].algorithm == "optimizer"
            assert "2xa10 at 2.00/h" in decisions["chat-a10"].reason

            # 10 short + 3 long req/s: the mix of 2 a10 + 2 l20 (5.2/h; l20 alone 6.4/h, a10 alone 9/h)
            shapes[:] = [ShapeCount(*SHORT, 10), ShapeCount(*LONG, 3)]
            await eventually(lambda: replicas() == {"chat-a10": 2, "chat-l20": 2}, 15,
                             describe=lambda: str(replicas()))
            # the routers get the plan: long requests mostly to l20 (2 a10 cannot take more than 1 of the 3
            # long req/s and still serve their share of the short ones)
            await eventually(lambda: plans and plans[-1].replicas == {"a10": 2, "l20": 2}, 10)
            long_route = next(r for r in plans[-1].routes if (r.input_bucket, r.output_bucket) == LONG)
            assert long_route.shares["l20"] >= 2 / 3 - 0.01
            assert sum(long_route.shares.values()) == pytest.approx(1.0, abs=0.01)

            # a bucket no GPU type was profiled for: the last plan stays, and the status says why
            shapes[:] = [ShapeCount(12, 8, 1)]
            async with httpx.AsyncClient() as client:
                async def infeasible() -> bool:
                    status = (await client.get(f"{url}/v1/gpu-optimizers/mix")).json()
                    return "no GPU type meets the SLO" in status["infeasible"]

                await eventually(infeasible, 15)
                status = (await client.get(f"{url}/v1/gpu-optimizers/mix")).json()
                assert status["plan"]["replicas"] == {"a10": 2, "l20": 2}
                missing = await client.get(f"{url}/v1/gpu-optimizers/nope")
                assert missing.status_code == 404
            assert replicas() == {"chat-a10": 2, "chat-l20": 2}

            # someone set chat-a10 to 5 by hand: the decision in force goes out again
            await bus.publish(DEPLOYMENTS_STATUS.format(deployment="chat-a10"), DeploymentStatus(
                deployment="chat-a10", generation=2, desired_replicas=5, ready_replicas=5, pods=5,
                last_decision_ts=decisions["chat-a10"].ts, ts=time.time()))
            await eventually(lambda: "changed to 5" in decisions["chat-a10"].reason, 10,
                             describe=lambda: decisions["chat-a10"].reason)
            assert decisions["chat-a10"].resent and decisions["chat-a10"].desired_replicas == 2
        finally:
            publisher.cancel()
