"""The adapter registry over HTTP (mutating routes need the admin token; the service shell enforces it).

GET    /adapters            every adapter: spec, phase, reason, pods holding it, desired pods
GET    /adapters/{name}
POST   /adapters            register (or replace) from a JSON spec -> 201
PUT    /adapters/{name}     the same, the name from the path
DELETE /adapters/{name}     unregister: unloaded from every engine
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from brixmesh.adapter_manager.controller import AdapterController
from brixmesh.adapter_manager.spec import SpecError, parse_spec
from brixmesh.adapter_manager.state import AdapterRecord


def _error(status: int, message: str, error_type: str = "invalid_request_error") -> JSONResponse:
    return JSONResponse(
        {"error": {"message": message, "type": error_type, "param": None, "code": None}}, status
    )


def adapter_view(name: str, record: AdapterRecord) -> dict[str, Any]:
    return {
        "name": name,
        "spec": record.spec,
        "phase": record.phase,
        "reason": record.reason,
        "pods": record.pods,
        "desired": record.desired,
        "origin": record.origin,
        "created_at": record.created_at,
        "updated_at": record.updated_at,
    }


def add_routes(app: FastAPI, controller: AdapterController) -> None:
    async def body_of(request: Request) -> Any:
        try:
            return await request.json()
        except ValueError:
            return None

    def register(data: Any) -> JSONResponse:
        try:
            spec = parse_spec(data)
        except SpecError as exc:
            return _error(400, str(exc))
        created = spec.name not in controller.records
        record = controller.register(spec, "api")
        return JSONResponse(adapter_view(spec.name, record), 201 if created else 200)

    @app.get("/adapters")
    async def list_adapters() -> JSONResponse:
        return JSONResponse({"adapters": [adapter_view(n, r) for n, r in sorted(controller.records.items())]})

    @app.get("/adapters/{name}")
    async def get_adapter(name: str) -> JSONResponse:
        record = controller.records.get(name)
        if record is None:
            return _error(404, f"no adapter named {name!r}", "not_found_error")
        return JSONResponse(adapter_view(name, record))

    @app.post("/adapters")
    async def post_adapter(request: Request) -> JSONResponse:
        data = await body_of(request)
        if not isinstance(data, dict):
            return _error(400, "the body must be a JSON adapter spec")
        return register(data)

    @app.put("/adapters/{name}")
    async def put_adapter(name: str, request: Request) -> JSONResponse:
        data = await body_of(request)
        if not isinstance(data, dict):
            return _error(400, "the body must be a JSON adapter spec")
        if data.setdefault("name", name) != name:
            return _error(400, f"the spec's name {data['name']!r} differs from the path's {name!r}")
        return register(data)

    @app.delete("/adapters/{name}")
    async def delete_adapter(name: str) -> JSONResponse:
        if not controller.remove(name):
            return _error(404, f"no adapter named {name!r}", "not_found_error")
        return JSONResponse({"deleted": name})
