"""The admin token: one lock on every mutating or admin HTTP route of every service.

The service shell installs :class:`AdminGuard` on its FastAPI app, so a service cannot add a route that
escapes it: every method other than GET/HEAD/OPTIONS, and every method under ``/admin/``, needs
``Authorization: Bearer <BRIXMESH_ADMIN_TOKEN>``. ``/healthz``, ``/readyz``, ``/metrics`` and read-only routes
stay open; the router's OpenAI ``/v1/*`` routes never reach this app (they have their own API keys).

Without a configured token the guarded routes are locked, not open: they answer 401 saying so.
"""

from __future__ import annotations

import hmac
import json

from starlette.types import ASGIApp, Receive, Scope, Send

ADMIN_PREFIX = "/admin/"
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def needs_admin(method: str, path: str) -> bool:
    return method not in READ_METHODS or path.startswith(ADMIN_PREFIX)


def bearer_header(token: str) -> dict[str, str]:
    """The header a client sends on admin routes."""
    return {"Authorization": f"Bearer {token}"}


class AdminGuard:
    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self._expected = f"Bearer {token}".encode() if token else b""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and needs_admin(scope["method"], scope["path"]):
            problem = self._problem(scope)
            if problem is not None:
                await _unauthorized(problem, send)
                return
        await self.app(scope, receive, send)

    def _problem(self, scope: Scope) -> str | None:
        if not self._expected:
            return "admin routes are locked: this service has no BRIXMESH_ADMIN_TOKEN"
        for name, value in scope["headers"]:
            if name == b"authorization":
                if hmac.compare_digest(value, self._expected):
                    return None
                return "incorrect admin token"
        return "missing admin token: send 'Authorization: Bearer <BRIXMESH_ADMIN_TOKEN>'"


async def _unauthorized(message: str, send: Send) -> None:
    body = json.dumps(
        {
            "error": {
                "message": message,
                "type": "authentication_error",
                "param": None,
                "code": "invalid_admin_token",
            }
        }
    ).encode()
    await send({
        "type": "http.response.start",
        "status": 401,
        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                    (b"www-authenticate", b'Bearer realm="brixmesh-admin"')],
    })  # fmt: skip
    await send({"type": "http.response.body", "body": body})
