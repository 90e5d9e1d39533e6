"""The HTTP API: list deployments and pods with status; apply (PUT, YAML or JSON), patch and delete a
deployment. Bad specs get a 400 naming the field, unknown deployments a 404 (OpenAI-style error JSON).

Changes are durable (the state directory) before the response. A deployment that an autoscaler scales shows
``autoscaled: true``; a PUT or PATCH setting its ``replicas`` is applied but answered with a ``warning``: the
autoscaler owns ``replicas`` and restores its own count at its next evaluation (the Kubernetes HPA rule)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec
import yaml
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from brixmesh.orchestrator.backend import Pod
from brixmesh.orchestrator.controller import Deployment, Orchestrator, UnknownDeployment
from brixmesh.orchestrator.errors import invalid_request, not_found
from brixmesh.orchestrator.spec import SpecError, parse_spec
from brixmesh.orchestrator.status import deployment_status


def add_routes(app: FastAPI, orchestrator: Orchestrator) -> None:
    @app.get("/v1/deployments")
    async def list_deployments() -> JSONResponse:
        data = [deployment_view(d, orchestrator) for d in orchestrator.deployments.values()]
        return JSONResponse({"object": "list", "data": data})

    @app.get("/v1/deployments/{name}")
    async def get_deployment(name: str) -> JSONResponse:
        try:
            return JSONResponse(deployment_view(orchestrator.get(name), orchestrator))
        except UnknownDeployment as exc:
            return not_found(str(exc))

    @app.put("/v1/deployments/{name}")
    async def put_deployment(name: str, request: Request) -> JSONResponse:
        try:
            body = await _mapping_body(request)
            if body.get("name", name) != name:
                raise SpecError(f"name {body['name']!r} in the body differs from {name!r} in the path", "name")
            spec = parse_spec({**body, "name": name}, source="request body")
            deployment, created = orchestrator.apply(spec)
        except SpecError as exc:
            return invalid_request(str(exc), exc.param)
        view = deployment_view(deployment, orchestrator, replicas_set="replicas" in body)
        return JSONResponse(view, status_code=201 if created else 200)

    @app.patch("/v1/deployments/{name}")
    async def patch_deployment(name: str, request: Request) -> JSONResponse:
        try:
            changes = await _mapping_body(request)
            deployment = orchestrator.patch(name, changes)
        except UnknownDeployment as exc:
            return not_found(str(exc))
        except SpecError as exc:
            return invalid_request(str(exc), exc.param)
        return JSONResponse(deployment_view(deployment, orchestrator, replicas_set="replicas" in changes))

    @app.delete("/v1/deployments/{name}")
    async def delete_deployment(name: str) -> JSONResponse:
        try:
            draining = orchestrator.delete(name)
        except UnknownDeployment as exc:
            return not_found(str(exc))
        return JSONResponse({"name": name, "deleted": True, "draining_pods": draining})

    @app.get("/v1/cordons")
    async def list_cordons() -> JSONResponse:
        data = [msgspec.to_builtins(cordon) for cordon in orchestrator.backend.cordons.all()]
        return JSONResponse({"object": "list", "data": data})

    @app.delete("/v1/cordons/{node}")
    async def uncordon(node: str, gpu: str | None = None) -> JSONResponse:
        """Lift a node's cordons (``?gpu=N``: only that GPU's) once it is fixed; new pods may land there
        again."""
        lifted = orchestrator.backend.cordons.uncordon(node, gpu)
        if not lifted:
            return not_found(f"no cordon on node {node!r}" + (f" gpu {gpu!r}" if gpu is not None else ""))
        orchestrator.wake()
        return JSONResponse({"object": "list", "data": [msgspec.to_builtins(cordon) for cordon in lifted]})

    @app.get("/v1/pods")
    async def list_pods(deployment: str | None = None, model: str | None = None) -> JSONResponse:
        pods = [
            pod_view(pod)
            for pod in orchestrator.backend.list_pods(deployment)
            if model is None or pod.info.model == model
        ]
        return JSONResponse({"object": "list", "data": pods})


async def _mapping_body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if not raw.strip():
        raise SpecError("the request body is empty; send a deployment spec as YAML or JSON")
    try:
        # YAML 1.2 is a superset of JSON, so one parser takes both content types.
        body = yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        raise SpecError(f"the request body is not valid YAML or JSON: {getattr(exc, 'problem', exc)}{where}") from None
    if not isinstance(body, Mapping):
        raise SpecError(f"the request body must be a mapping of spec fields, got {type(body).__name__}")
    return dict(body)


def deployment_view(
    deployment: Deployment, orchestrator: Orchestrator, *, replicas_set: bool = False
) -> dict[str, Any]:
    pods = orchestrator.backend.list_pods(deployment.name)
    active = [pod for pod in pods if not pod.draining]
    decision = deployment.last_decision
    autoscaled = orchestrator.autoscaled(deployment)
    view = {
        "name": deployment.name,
        "spec": deployment.spec.public_dict(),
        "generation": deployment.generation,
        "replicas": deployment.replicas,
        "status": {
            "pods": len(active),
            "ready": sum(pod.ready for pod in active),
            "updated": sum(deployment.is_current(pod) for pod in active),
            "draining": sum(pod.draining for pod in pods),
            "pod_names": [pod.name for pod in pods],
        },
        "autoscaled": autoscaled,
        "last_decision": msgspec.to_builtins(decision) if decision is not None else None,
        "origin": deployment.origin,
        "error": deployment.error,
        "created_at": deployment.created_at,
        "updated_at": deployment.updated_at,
    }
    if deployment.spec.has_roles:
        status = deployment_status(orchestrator, deployment, "")
        view["status"]["role_sets"] = [msgspec.to_builtins(role_set) for role_set in status.role_sets]
        view["status"]["roles"] = [msgspec.to_builtins(role) for role in status.roles]
        view["role_replicas"] = deployment.role_replicas
    if replicas_set and autoscaled:
        view["warning"] = (
            f"deployment {deployment.name!r} is scaled by an autoscaler, which owns its replicas: it will "
            "restore its own count at its next evaluation; delete or edit the autoscaler to scale by hand"
        )
    return view


def pod_view(pod: Pod) -> dict[str, Any]:
    view = msgspec.to_builtins(pod.status())
    view["generation"] = pod.generation
    view["last_exit_code"] = pod.last_exit_code
    view["external"] = pod.external
    return view
