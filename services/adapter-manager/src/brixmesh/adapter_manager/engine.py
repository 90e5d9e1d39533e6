"""vLLM's LoRA admin API as the adapter-manager uses it: what an engine holds, load, unload."""

from __future__ import annotations

from typing import Any

import httpx


class EngineCallError(Exception):
    """The engine refused or did not answer; ``str()`` is the engine's message or the transport error."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


def _message(response: httpx.Response) -> str:
    try:
        body: Any = response.json()
        error = body.get("error", body) if isinstance(body, dict) else body
        return (
            str(error.get("message") or error.get("detail") or error)
            if isinstance(error, dict)
            else str(error)
        )
    except ValueError:
        return response.text[:300] or f"HTTP {response.status_code}"


class EngineClient:
    def __init__(self, timeout_s: float) -> None:
        self._http = httpx.AsyncClient(timeout=timeout_s)

    async def close(self) -> None:
        await self._http.aclose()

    async def _call(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        try:
            return await self._http.request(method, url, **kwargs)
        except httpx.HTTPError as exc:
            raise EngineCallError(f"{type(exc).__name__}: {exc or 'no answer'}") from None

    async def loaded(self, base_url: str) -> set[str]:
        """The adapters an engine serves now: the entries of ``GET /v1/models`` that have a parent model."""
        response = await self._call("GET", f"{base_url}/v1/models")
        if response.status_code != 200:
            raise EngineCallError(_message(response), response.status_code)
        try:
            return {card["id"] for card in response.json()["data"] if card.get("parent")}
        except (ValueError, KeyError, TypeError):
            raise EngineCallError("/v1/models answered something other than a model list") from None

    async def load(self, base_url: str, name: str, path: str) -> None:
        response = await self._call(
            "POST", f"{base_url}/v1/load_lora_adapter", json={"lora_name": name, "lora_path": path}
        )
        if response.status_code != 200 and "already been loaded" not in _message(response):
            raise EngineCallError(_message(response), response.status_code)

    async def unload(self, base_url: str, name: str) -> None:
        response = await self._call("POST", f"{base_url}/v1/unload_lora_adapter", json={"lora_name": name})
        if response.status_code not in (200, 404):  # 404: gone already (engine restarted)
            raise EngineCallError(_message(response), response.status_code)
