"""An emulated Kubernetes API server (tests/k8s/emulator.py) with the project's CRDs installed."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import yaml
from kmock import resource

from brixmesh.common.kube.api import Api
from tests.k8s.emulator import ApiServer, Server

ROOT = Path(__file__).resolve().parents[2]
CRDS = sorted((ROOT / "deploy" / "k8s" / "base" / "crds").glob("*.yaml"))
NAMESPACE = "brixmesh"


@pytest.fixture
async def apiserver() -> AsyncIterator[tuple[ApiServer, str]]:
    async with ApiServer() as emulator, Server(emulator) as server:
        emulator.resources[resource("", "v1", "pods")] = {"kind": "Pod", "namespaced": True}
        emulator.resources[resource("", "v1", "services")] = {"kind": "Service", "namespaced": True}
        emulator.resources[resource("", "v1", "configmaps")] = {"kind": "ConfigMap", "namespaced": True}
        emulator.resources[resource("coordination.k8s.io", "v1", "leases")] = {
            "kind": "Lease",
            "namespaced": True,
        }
        for path in CRDS:
            emulator.add_crd(yaml.safe_load(path.read_text()))
        yield emulator, str(server.url).rstrip("/")


@pytest.fixture
async def api(apiserver: tuple[ApiServer, str]) -> AsyncIterator[Api]:
    client = Api(apiserver[1])
    await client.open()
    yield client
    await client.close()
