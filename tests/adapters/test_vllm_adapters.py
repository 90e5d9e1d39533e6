"""The adapter-manager with a real vLLM (CPU build, the tiny model and its two offline adapters)."""

from __future__ import annotations

import contextlib
from pathlib import Path

import httpx
import pytest

from brixmesh.common.bus import Bus
from brixmesh.common.servers import NatsServer

from tests.adapters.mesh import adapter, announced, pod_infos, register
from tests.plugins.vllm_engine import VllmEngine, start_vllm_engine
from tests.service_proc import ADMIN_HEADERS, service_process
from tests.waiting import eventually

pytestmark = pytest.mark.vllm


async def text(client: httpx.AsyncClient, router_url: str, model: str) -> str:
    answer = await client.post(
        f"{router_url}/v1/completions",
        json={"model": model, "prompt": "The quick brown fox", "max_tokens": 8, "temperature": 0},
        timeout=60,
    )
    assert answer.status_code == 200, answer.text
    return answer.json()["choices"][0]["text"]


async def loaded(client: httpx.AsyncClient, engine: VllmEngine) -> set[str]:
    cards = (await client.get(f"{engine.base_url}/v1/models")).json()["data"]
    return {card["id"] for card in cards if card.get("parent")}


async def test_two_adapters_loaded_routed_and_removed_on_real_vllm(
    real_vllm: VllmEngine, nats_server: NatsServer, bus: Bus, tmp_path: Path
) -> None:
    settings = {"BRIXMESH_STATE_DIR": str(tmp_path / "state"), "BRIXMESH_RECONCILE_INTERVAL_S": "0.2"}
    pods = pod_infos([real_vllm.base_url], max_loras=2, max_lora_rank=8)
    async with (
        announced(bus, pods),
        httpx.AsyncClient() as client,
        service_process("brixmesh.router", nats_server.url, tmp_path / "router.log") as router,
        service_process(
            "brixmesh.adapter_manager", nats_server.url, tmp_path / "am.log", settings
        ) as manager,
    ):
        for name in ("lora-a", "lora-b"):
            await register(client, manager.url, name=name, base_model=real_vllm.model,
                           artifact=str(real_vllm.lora_dirs[name]))  # fmt: skip

        async def running() -> bool:
            return all(
                [(await adapter(client, manager.url, n))["phase"] == "Running" for n in ("lora-a", "lora-b")]
            )

        await eventually(running, 60, describe=lambda: manager.log_tail())
        assert {"lora-a", "lora-b"} <= await loaded(client, real_vllm)
        base = await text(client, router.url, real_vllm.model)
        outputs = {name: await text(client, router.url, name) for name in ("lora-a", "lora-b")}
        assert base not in outputs.values(), (base, outputs)

        assert (
            await client.delete(f"{manager.url}/adapters/lora-b", headers=ADMIN_HEADERS)
        ).status_code == 200
        await eventually(lambda: _without(client, real_vllm, "lora-b"), 30)
        gone = await client.post(f"{router.url}/v1/completions", json={"model": "lora-b", "prompt": "x"})
        assert gone.status_code == 404

        # an engine that lost its adapters (as after a restart) gets them back
        await client.post(f"{real_vllm.base_url}/v1/unload_lora_adapter", json={"lora_name": "lora-a"})
        await eventually(lambda: _with(client, real_vllm, "lora-a"), 30)
        assert await text(client, router.url, "lora-a") == outputs["lora-a"]


async def _without(client: httpx.AsyncClient, engine: VllmEngine, name: str) -> bool:
    return name not in await loaded(client, engine)


async def _with(client: httpx.AsyncClient, engine: VllmEngine, name: str) -> bool:
    return name in await loaded(client, engine)


async def test_a_restarted_engine_gets_its_adapter_back(
    nats_server: NatsServer, bus: Bus, tmp_path: Path
) -> None:
    settings = {"BRIXMESH_STATE_DIR": str(tmp_path / "state"), "BRIXMESH_RECONCILE_INTERVAL_S": "0.2"}
    async with contextlib.AsyncExitStack() as first_engine:
        first = await first_engine.enter_async_context(start_vllm_engine(log_dir=tmp_path))
        pods = pod_infos([first.base_url], max_loras=2, max_lora_rank=8)
        async with (
            announced(bus, pods) as reannounce,
            httpx.AsyncClient() as client,
            service_process("brixmesh.router", nats_server.url, tmp_path / "router.log") as router,
            service_process(
                "brixmesh.adapter_manager", nats_server.url, tmp_path / "am.log", settings
            ) as manager,
        ):
            await register(client, manager.url, name="lora-a", base_model=first.model,
                           artifact=str(first.lora_dirs["lora-a"]))  # fmt: skip
            await eventually(lambda: _with(client, first, "lora-a"), 60, describe=lambda: manager.log_tail())
            await eventually(lambda: _answers(client, router.url, "lora-a"), 30)
            before = await text(client, router.url, "lora-a")
            await first_engine.aclose()
            # the orchestrator restarts the pod's engine: the same pod, a new process holding no adapters
            async with start_vllm_engine(log_dir=tmp_path) as second:
                await reannounce(pod_infos([second.base_url], max_loras=2, max_lora_rank=8)[0])
                await eventually(
                    lambda: _with(client, second, "lora-a"), 60, describe=lambda: manager.log_tail()
                )
                await eventually(lambda: _answers(client, router.url, "lora-a"), 30)
                assert await text(client, router.url, "lora-a") == before


async def _answers(client: httpx.AsyncClient, router_url: str, model: str) -> bool:
    answer = await client.post(
        f"{router_url}/v1/completions", json={"model": model, "prompt": "x", "max_tokens": 1}
    )
    return answer.status_code == 200
