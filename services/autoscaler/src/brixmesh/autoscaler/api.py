"""HTTP API of PodAutoscaler specs: ``GET/PUT/DELETE /v1/autoscalers/{name}`` and ``GET /v1/autoscalers``.

Bodies are JSON, or YAML with ``Content-Type: application/yaml``; errors are OpenAI-style JSON.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import msgspec
import yaml
from brixmesh.autoscaler.policy import AutoscalerPolicy
from brixmesh.autoscaler.registry import Autoscalers
from brixmesh.autoscaler.spec import SpecError, parse_spec
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse


def error(status: int, message: str, kind: str, code: str, param: str | None = None) -> JSONResponse:
    return JSONResponse(
        {"error": {"message": message, "type": kind, "param": param, "code": code}}, status_code=status
    )


def describe_policy(policy: AutoscalerPolicy) -> dict[str, Any]:
    return {
        "spec": policy.spec.model_dump(),
        "status": {
            "current_replicas": policy.current,
            "decisions": policy.decisions,
            "panicking": policy.kpa_state.panicking,
            "in_force": msgspec.to_builtins(policy.in_force) if policy.in_force is not None else None,
        },
    }


def add_routes(app: FastAPI, autoscalers: Autoscalers, known_deployments: Callable[[], set[str]]) -> None:
    """``known_deployments`` returns the deployments seen so far; a PUT naming another one is rejected
    once at least one is known (before that, nothing is known and any name is accepted)."""

    @app.get("/v1/autoscalers")
    async def list_autoscalers() -> dict[str, Any]:
        return {"autoscalers": [describe_policy(p) for p in autoscalers]}

    @app.get("/v1/autoscalers/{name}")
    async def get_autoscaler(name: str) -> Any:
        policy = autoscalers.get(name)
        if policy is None:
            return error(
                404, f"autoscaler {name!r} does not exist", "not_found_error", "autoscaler_not_found", "name"
            )
        return describe_policy(policy)

    @app.put("/v1/autoscalers/{name}")
    async def put_autoscaler(name: str, request: Request) -> Any:
        raw = await request.body()
        try:
            if "yaml" in request.headers.get("content-type", ""):
                data = yaml.safe_load(raw)
            else:
                data = json.loads(raw)
        except (ValueError, yaml.YAMLError) as exc:
            return error(
                400,
                f"body is not valid JSON/YAML: {str(exc).splitlines()[0]}",
                "invalid_request_error",
                "invalid_body",
            )
        try:
            spec = parse_spec(data, name=name)
        except SpecError as exc:
            return error(400, str(exc), "invalid_request_error", "invalid_spec")
        known = known_deployments()
        if known and spec.deployment not in known:
            return error(
                400,
                f"autoscaler {name!r}: unknown deployment {spec.deployment!r}; known: {', '.join(sorted(known))}",
                "invalid_request_error", "unknown_deployment", "deployment",
            )  # fmt: skip
        created = autoscalers.put(spec)
        return JSONResponse(describe_policy(autoscalers.get(name)), status_code=201 if created else 200)  # type: ignore[arg-type]

    @app.delete("/v1/autoscalers/{name}")
    async def delete_autoscaler(name: str) -> Any:
        if not autoscalers.delete(name):
            return error(
                404, f"autoscaler {name!r} does not exist", "not_found_error", "autoscaler_not_found", "name"
            )
        return {"deleted": name}
