"""Puts the gateway in front of the service shell's FastAPI app: ``/v1/*`` goes straight to the raw ASGI
gateway (no framework routing on the hot path); everything else (health, readiness, metrics, admin routes)
to FastAPI."""

from __future__ import annotations

from typing import Any

from brixmesh.router.http.gateway import Gateway, Receive, Scope, Send


class OpenAIRoutes:
    def __init__(self, app: Any, gateway: Gateway) -> None:
        self.app = app
        self.gateway = gateway

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/v1/"):
            await self.gateway(scope, receive, send)
        else:
            await self.app(scope, receive, send)
