"""List, then watch from the list's resourceVersion, for as long as it runs: a watch that ends or breaks is
resumed from the last version seen; one the server no longer has history for (410 Gone) is replaced by a
fresh list, which the caller takes as the whole truth (objects missing from it are gone)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from kubernetes_asyncio import watch
from kubernetes_asyncio.client.exceptions import ApiException

from brixmesh.common.kube.api import raw_json

log = logging.getLogger(__name__)

Obj = dict[str, Any]
MERGE_PATCH = "application/merge-patch+json"
"""Every patch is a JSON merge patch: custom resources take no strategic merge patch, and the client's default
for a dict body on them would be a JSON patch."""


async def list_and_watch(
    list_fn: Callable[..., Awaitable[Any]],
    *args: Any,
    on_list: Callable[[list[Obj]], Awaitable[None]],
    on_event: Callable[[str, Obj], Awaitable[None]],
    label_selector: str = "",
    retry_s: float = 1.0,
) -> None:
    version: str | None = None
    while True:
        try:
            if version is None:
                response = await list_fn(*args, label_selector=label_selector, _preload_content=False)
                body = await raw_json(response)
                version = body["metadata"]["resourceVersion"]
                await on_list(body["items"])
            async with watch.Watch() as stream:
                # bookmarks move the version on while nothing changes, so a resumed watch rarely gets 410
                async for event in stream.stream(
                    list_fn, *args, label_selector=label_selector, resource_version=version,
                    allow_watch_bookmarks=True,
                ):
                    obj = event["raw_object"]
                    version = obj.get("metadata", {}).get("resourceVersion") or version
                    await on_event(event["type"], obj)
        except ApiException as exc:
            if exc.status == 410:
                log.info("watch history expired (410 Gone): listing again")
                version = None
                continue
            log.warning("watch failed (%s %s); retrying in %.0fs", exc.status, exc.reason, retry_s)
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            log.warning("watch broken (%s); resuming in %.0fs", exc or type(exc).__name__, retry_s)
        await asyncio.sleep(retry_s)
