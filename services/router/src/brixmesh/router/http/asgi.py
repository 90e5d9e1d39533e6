"""Puts the gateway in front of the service shell's FastAPI app: ``/v1/*`` and vLLM's other model routes
(``/tokenize``, ``/score``, ``/rerank``, ``/pooling``, ...) go straight to the raw ASGI gateway (no framework
routing on the hot path); everything else (health, readiness, metrics, admin routes) to FastAPI."""

from __future__ import annotations

from typing import Any

from brixmesh.router.http.gateway import Gateway, Receive, Scope, Send
from brixmesh.router.http.request import API_BY_PATH


class OpenAIRoutes:
    def __init__(self, app: Any, gateway: Gateway) -> None:
        self.app = app
        self.gateway = gateway

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and (scope["path"].startswith("/v1/") or scope["path"] in API_BY_PATH):
            await self.gateway(scope, receive, send)
        else:
            await self.app(scope, receive, send)
