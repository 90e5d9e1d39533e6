"""The adapter-manager against simulated engines, a router and NATS (real processes): registration, phases,
routing only to holders, bad specs, refused loads, removal, held requests and restarts."""

from __future__ import annotations

from pathlib import Path

import httpx

from brixmesh.common.bus import Bus
from brixmesh.common.servers import NatsServer

from tests.adapters.conftest import make_adapter
from tests.adapters.mesh import adapter, announced, pod_infos, register
from tests.engine_sim.sim_engine import sim_engine
from tests.service_proc import ADMIN_HEADERS, service_process
from tests.waiting import eventually

MANAGER_SETTINGS = {
    "BRIXMESH_RECONCILE_INTERVAL_S": "0.2",
    "BRIXMESH_LOAD_BACKOFF_S": "0.05",
    "BRIXMESH_DEMAND_WINDOW_S": "2",
}


async def engine_adapters(client: httpx.AsyncClient, url: str) -> set[str]:
    cards = (await client.get(f"{url}/v1/models")).json()["data"]
    return {card["id"] for card in cards if card.get("parent")}


async def complete(client: httpx.AsyncClient, router_url: str, model: str) -> httpx.Response:
    return await client.post(
        f"{router_url}/v1/completions", json={"model": model, "prompt": "hello", "max_tokens": 4}, timeout=30
    )


async def test_adapters_placed_routed_refused_removed_and_kept_across_restarts(
    nats_server: NatsServer, bus: Bus, tmp_path: Path
) -> None:
    good = make_adapter(tmp_path / "good")
    settings = {**MANAGER_SETTINGS, "BRIXMESH_STATE_DIR": str(tmp_path / "state")}
    with sim_engine(replicas=2, kv_events=False) as sim:
        urls = list(sim.urls)
        pods = pod_infos(urls, max_loras=2, max_cpu_loras=4, max_lora_rank=8)
        async with (
            announced(bus, pods),
            httpx.AsyncClient() as client,
            service_process("brixmesh.router", nats_server.url, tmp_path / "router.log") as router,
        ):
            async with service_process(
                "brixmesh.adapter_manager", nats_server.url, tmp_path / "am.log", settings
            ) as manager:
                assert (await client.post(f"{manager.url}/adapters", json={})).status_code == 401
                assert (await register(client, manager.url, name="a", base_model="tiny-llama",
                                       artifact=str(good))).status_code == 201  # fmt: skip
                await register(client, manager.url, name="b", base_model="tiny-llama", artifact=str(good),
                               replicas="all", policy="bin-pack")  # fmt: skip
                bad = await register(client, manager.url, name="x", base_model="tiny", artifact="rel")
                assert bad.status_code == 400 and "absolute" in bad.json()["error"]["message"]
                failing = {
                    "missing": str(tmp_path / "nowhere"),
                    "wrong-base": str(make_adapter(tmp_path / "wb", base="other-model")),
                    "big-rank": str(make_adapter(tmp_path / "br", rank=64)),
                }
                for name, path in failing.items():
                    await register(client, manager.url, name=name, base_model="tiny-llama", artifact=path)

                async def phases() -> dict[str, str]:
                    listed = (await client.get(f"{manager.url}/adapters")).json()["adapters"]
                    return {item["name"]: item["phase"] for item in listed}

                expected = {"a": "Running", "b": "Running", "missing": "Failed", "wrong-base": "Failed",
                            "big-rank": "Failed"}  # fmt: skip
                await eventually(lambda: _has(phases, **expected), 20)
                reasons = {n: (await adapter(client, manager.url, n))["reason"] for n in failing}
                assert "no adapter directory" in reasons["missing"]
                assert "wrong base model" in reasons["wrong-base"]
                assert "rank 64 exceeds" in reasons["big-rank"] and "--max-lora-rank 8" in reasons["big-rank"]
                b = await adapter(client, manager.url, "b")
                assert b["pods"] == ["pod-0", "pod-1"]
                holder = (await adapter(client, manager.url, "a"))["pods"]
                assert len(holder) == 1

                # routers send an adapter only to its holders; unknown and failed adapters are 404
                async def routed_to_holder() -> bool:
                    answer = await complete(client, router.url, "a")
                    return answer.status_code == 200 and answer.headers["x-brixmesh-pod"] == holder[0]

                await eventually(routed_to_holder, 10)
                for _ in range(4):
                    assert (await complete(client, router.url, "a")).headers["x-brixmesh-pod"] == holder[0]
                assert (await complete(client, router.url, "nope")).status_code == 404
                assert (await complete(client, router.url, "missing")).status_code == 404

                # a pod that refuses a load: retried, then the adapter runs elsewhere and says so
                refusing = urls[0]
                await client.post(f"{refusing}/admin/faults", json={"lora_load_fail": True})
                await register(client, manager.url, name="c", base_model="tiny-llama", artifact=str(good),
                               replicas="all")  # fmt: skip

                async def refused_and_running_elsewhere() -> bool:
                    c = await adapter(client, manager.url, "c")
                    return c["phase"] == "Running" and "pod pod-0 refused it" in c["reason"]

                await eventually(refused_and_running_elsewhere, 20)
                assert (await adapter(client, manager.url, "c"))["pods"] == ["pod-1"]
                await client.post(f"{refusing}/admin/faults", json={"lora_load_fail": False})

                # removal unloads it everywhere
                assert (
                    await client.delete(f"{manager.url}/adapters/c", headers=ADMIN_HEADERS)
                ).status_code == 200
                await eventually(lambda: _nowhere(client, urls, "c"), 10)

                # cold adapter (min_replicas 0) is unloaded once idle; a request is held while it is loaded
                await register(client, manager.url, name="d", base_model="tiny-llama", artifact=str(good),
                               min_replicas=0)  # fmt: skip
                await eventually(lambda: _idle(client, manager.url, "d"), 20)
                assert (await complete(client, router.url, "d")).status_code == 200
                assert (await adapter(client, manager.url, "d"))["phase"] == "Running"

            held_before = {url: await engine_adapters(client, url) for url in urls}
            # a restarted engine loses its adapters: simulated by unloading behind the manager's back
            async with service_process(
                "brixmesh.adapter_manager", nats_server.url, tmp_path / "am2.log", settings
            ) as manager:
                assert (await phases_of(client, manager.url))["b"] == "Running"
                await client.post(f"{urls[1]}/v1/unload_lora_adapter", json={"lora_name": "b"})
                await eventually(lambda: _holds(client, urls[1], "b"), 10)
                held_after = {url: await engine_adapters(client, url) for url in urls}
                assert {u: h - {"d"} for u, h in held_after.items()} == {
                    u: h - {"d"} for u, h in held_before.items()
                }
                assert (await complete(client, router.url, "a")).status_code == 200

                # a new router replica routes adapters at once (it asks for the placements as it starts)
                async with service_process("brixmesh.router", nats_server.url, tmp_path / "r2.log") as second:
                    answer = await complete(client, second.url, "a")
                    assert answer.status_code == 200 and answer.headers["x-brixmesh-pod"] == holder[0]


async def phases_of(client: httpx.AsyncClient, url: str) -> dict[str, str]:
    return {a["name"]: a["phase"] for a in (await client.get(f"{url}/adapters")).json()["adapters"]}


async def _has(phases, **expected: str) -> bool:  # type: ignore[no-untyped-def]
    found = await phases()
    return all(found.get(name) == phase for name, phase in expected.items())


async def _nowhere(client: httpx.AsyncClient, urls: list[str], name: str) -> bool:
    return all([name not in await engine_adapters(client, url) for url in urls])


async def _holds(client: httpx.AsyncClient, url: str, name: str) -> bool:
    return name in await engine_adapters(client, url)


async def _idle(client: httpx.AsyncClient, manager_url: str, name: str) -> bool:
    found = await adapter(client, manager_url, name)
    return found["phase"] == "Pending" and found["pods"] == [] and "idle" in found["reason"]
