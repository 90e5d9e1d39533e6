"""The adapter-manager process with ``BRIXMESH_K8S_MODELADAPTERS=true`` on the emulated API: ModelAdapter
resources become adapters (origin ``resource``), a spec the model refuses is left out (``Accepted: False`` on
its status), deleting a resource unregisters its adapter, and after a restart the first list drops the
adapters whose resource went while the service was down, never one registered over the HTTP API."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx

from brixmesh.common.kube.api import Api
from brixmesh.common.servers import NatsServer
from tests.k8s.conftest import NAMESPACE
from tests.k8s.emulator import ApiServer
from tests.service_proc import ADMIN_HEADERS, ServiceProcess, service_process
from tests.waiting import eventually

MA = ("brixmesh.io", "v1alpha1", NAMESPACE, "modeladapters")


def model_adapter(name: str, artifact: str) -> dict[str, Any]:
    return {
        "apiVersion": "brixmesh.io/v1alpha1",
        "kind": "ModelAdapter",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {"base_model": "tiny-llama", "artifact": artifact, "replicas": 2},
    }


async def adapters(service: ServiceProcess) -> dict[str, str]:
    async with httpx.AsyncClient() as client:
        found = (await client.get(f"{service.url}/adapters")).json()["adapters"]
    return {adapter["name"]: adapter["origin"] for adapter in found}


async def test_model_adapter_resources_are_registered_and_unregistered_across_restarts(
    apiserver: tuple[ApiServer, str], api: Api, nats_server: NatsServer, tmp_path: Path
) -> None:
    _emulator, url = apiserver
    settings = {
        "BRIXMESH_K8S_MODELADAPTERS": "true", "BRIXMESH_K8S_API_URL": url, "BRIXMESH_K8S_NAMESPACE": NAMESPACE,
        "BRIXMESH_STATE_DIR": str(tmp_path / "state"),
    }  # fmt: skip

    @asynccontextmanager
    async def manager(log: str) -> AsyncIterator[ServiceProcess]:
        async with service_process(
            "brixmesh.adapter_manager", nats_server.url, tmp_path / log, settings, startup_timeout_s=60
        ) as svc:
            yield svc

    async def create(name: str, artifact: str = "s3://adapters/x") -> None:
        await api.custom.create_namespaced_custom_object(*MA[:3], MA[3], model_adapter(name, artifact))

    await create("sql-lora")
    await create("bad-lora", artifact="relative/dir")  # a string for the CRD, not a place for the model
    async with manager("first.log") as service:
        await eventually(lambda: _equals(adapters(service), {"sql-lora": "resource"}), 20)
        async with httpx.AsyncClient() as client:
            posted = await client.post(
                f"{service.url}/adapters", headers=ADMIN_HEADERS,
                json={"name": "api-lora", "base_model": "tiny-llama", "artifact": "s3://adapters/api"},
            )  # fmt: skip
        assert posted.status_code == 201
        await api.custom.delete_namespaced_custom_object(*MA, "sql-lora")
        await create("chat-lora")
        await eventually(lambda: _equals(adapters(service), {"api-lora": "api", "chat-lora": "resource"}), 20)
        log = service.log_path.read_text()
        assert "bad-lora refused" in log and "artifact must be" in log
        # on the resources too (kubectl get modeladapters shows it)
        await eventually(lambda: _equals(accepted(api, "chat-lora"), "True"))
        assert await accepted(api, "bad-lora") == "False"
        refused_since = await transition(api, "bad-lora")

    await api.custom.delete_namespaced_custom_object(*MA, "chat-lora")  # while the service is down
    async with manager("second.log") as service:
        await eventually(lambda: _equals(adapters(service), {"api-lora": "api"}), 20)
        assert await transition(api, "bad-lora") == refused_since, "a restart rewrites no standing verdict"


async def accepted(api: Api, name: str) -> str:
    status = (await api.custom.get_namespaced_custom_object(*MA, name)).get("status") or {}
    return next((c["status"] for c in status.get("conditions", []) if c["type"] == "Accepted"), "")


async def transition(api: Api, name: str) -> str:
    status = (await api.custom.get_namespaced_custom_object(*MA, name)).get("status") or {}
    return next(c["lastTransitionTime"] for c in status["conditions"] if c["type"] == "Accepted")


async def _equals(found: Any, expected: object) -> bool:
    return await found == expected
