"""PodAutoscaler HTTP API: PUT/GET/DELETE with OpenAI-style errors."""

from __future__ import annotations

import httpx
from brixmesh.autoscaler.api import add_routes
from brixmesh.autoscaler.registry import Autoscalers
from fastapi import FastAPI


def _client(known: set[str]) -> tuple[httpx.AsyncClient, Autoscalers]:
    app = FastAPI()
    autoscalers = Autoscalers()
    add_routes(app, autoscalers, lambda: known)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test"), autoscalers


async def test_put_get_list_delete() -> None:
    client, autoscalers = _client({"chat"})
    async with client:
        created = await client.put("/v1/autoscalers/a", json={"deployment": "chat", "strategy": "apa"})
        assert created.status_code == 201
        assert created.json()["spec"]["strategy"] == "apa"
        replaced = await client.put(
            "/v1/autoscalers/a",
            content="deployment: chat\nstrategy: hpa\n",
            headers={"content-type": "application/yaml"},
        )
        assert replaced.status_code == 200 and autoscalers.get("a").spec.strategy == "hpa"  # type: ignore[union-attr]
        assert (await client.get("/v1/autoscalers/a")).json()["status"]["decisions"] == 0
        assert [a["spec"]["name"] for a in (await client.get("/v1/autoscalers")).json()["autoscalers"]] == [
            "a"
        ]
        assert (await client.delete("/v1/autoscalers/a")).json() == {"deleted": "a"}
        missing = await client.get("/v1/autoscalers/a")
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "autoscaler_not_found"


async def test_bad_specs_get_openai_errors() -> None:
    client, autoscalers = _client({"chat"})
    async with client:
        cases = [
            ({"deployment": "chat", "strategy": "magic"}, "invalid_spec", "strategy"),
            (
                {"deployment": "chat", "min_replicas": 4, "max_replicas": 2},
                "invalid_spec",
                "min_replicas (4) > max_replicas (2)",
            ),
            ({"deployment": "nope"}, "unknown_deployment", "unknown deployment 'nope'; known: chat"),
        ]
        for body, code, text in cases:
            response = await client.put("/v1/autoscalers/a", json=body)
            assert response.status_code == 400
            error = response.json()["error"]
            assert (
                error["code"] == code
                and text in error["message"]
                and error["type"] == "invalid_request_error"
            )
        broken = await client.put(
            "/v1/autoscalers/a", content=b"{not json", headers={"content-type": "application/json"}
        )
        assert broken.status_code == 400 and broken.json()["error"]["code"] == "invalid_body"
        assert len(autoscalers) == 0


async def test_any_deployment_accepted_while_none_is_known() -> None:
    client, _ = _client(set())
    async with client:
        assert (await client.put("/v1/autoscalers/a", json={"deployment": "later"})).status_code == 201
