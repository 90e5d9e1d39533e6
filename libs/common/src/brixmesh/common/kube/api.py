"""The Kubernetes API client, opened inside the event loop that uses it (its aiohttp session belongs to one
loop): in a pod from the service account, elsewhere from ``$KUBECONFIG`` / ``~/.kube/config``, or from an
explicit URL (an emulator, ``kubectl proxy``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from kubernetes_asyncio import client, config
from kubernetes_asyncio.client.exceptions import ApiException

SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")


class Api:
    def __init__(self, url: str = "") -> None:
        self.url = url
        self._client: client.ApiClient | None = None

    async def open(self) -> None:
        configuration = client.Configuration()
        if self.url:
            configuration.host = self.url.rstrip("/")
        elif (SERVICE_ACCOUNT / "token").exists():
            config.load_incluster_config(client_configuration=configuration)
        else:
            await config.load_kube_config(client_configuration=configuration)
        self._client = client.ApiClient(configuration)

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None

    @property
    def client(self) -> client.ApiClient:
        if self._client is None:
            raise RuntimeError("the Kubernetes API is used before Api.open()")
        return self._client

    @property
    def core(self) -> client.CoreV1Api:
        return client.CoreV1Api(self.client)

    @property
    def custom(self) -> client.CustomObjectsApi:
        return client.CustomObjectsApi(self.client)

    @property
    def coordination(self) -> client.CoordinationV1Api:
        return client.CoordinationV1Api(self.client)


async def raw_json(response: Any) -> dict[str, Any]:
    """The body of a call made with ``_preload_content=False`` (which does not raise on an error status)."""
    if response.status >= 400:
        error = ApiException(status=response.status, reason=response.reason)
        error.body = await response.text()
        raise error
    return await response.json()


def status_message(exc: ApiException) -> str:
    """The API server's one-line reason (the ``message`` of its Status body), else the HTTP status."""
    try:
        message = json.loads(exc.body or "{}").get("message", "")
    except (ValueError, AttributeError):
        message = ""
    return f"{exc.status} {message or exc.reason}"


def own_namespace() -> str:
    """The namespace of the pod this runs in ("" outside a cluster)."""
    try:
        return (SERVICE_ACCOUNT / "namespace").read_text().strip()
    except OSError:
        return ""


def resolved_namespace(configured: str) -> str:
    """``configured``, else the pod's own namespace; ValueError (one line) when neither is known."""
    namespace = configured or own_namespace()
    if not namespace:
        raise ValueError("BRIXMESH_K8S_NAMESPACE is not set and this is not running in a pod")
    return namespace
