"""Cordons on Kubernetes, kept in a ConfigMap of the namespace: the orchestrator's own disk is scratch space
there, and a standby that takes over (or this replica, restarted) must keep a node a gpu-doctor took out of
service out of it, as the doctor stops re-sending its decision once the node's pods are gone.

Each change is written in the background (the latest state, retried until it lands); the leader reads the
ConfigMap before it places any pod.
"""

from __future__ import annotations

import asyncio
import logging

import msgspec
from brixmesh.common.kube.api import Api, status_message
from brixmesh.common.kube.watching import MERGE_PATCH
from kubernetes_asyncio.client.exceptions import ApiException

from brixmesh.orchestrator.cordons import Cordons

log = logging.getLogger(__name__)

CONFIG_MAP = "brixmesh-cordons"
KEY = "cordons.json"
RETRY_S = 2.0


class ConfigMapCordons(Cordons):
    def __init__(self, api: Api, namespace: str, *, retry_s: float = RETRY_S) -> None:
        super().__init__(None)
        self._api = api
        self._namespace = namespace
        self._retry_s = retry_s
        self._dirty = False
        self._writer: asyncio.Task[None] | None = None

    async def load(self) -> None:
        """Add the stored cordons to those held here (and store the union when it holds more)."""
        try:
            stored = await self._api.core.read_namespaced_config_map(CONFIG_MAP, self._namespace)
        except ApiException as exc:
            if exc.status == 404:
                return
            raise
        try:
            stored_count = self._merge(((stored.data or {}).get(KEY) or "[]").encode())
        except msgspec.DecodeError as exc:
            log.warning("configmap %s: %s holds no cordons (%s); starting from none", CONFIG_MAP, KEY, exc)
            return
        if len(self.all()) > stored_count:
            self._save()

    async def flushed(self) -> None:
        """Wait until every change so far is written."""
        while self._writer is not None and not self._writer.done():
            await asyncio.shield(self._writer)

    def _save(self) -> None:
        self._dirty = True
        if self._writer is None or self._writer.done():
            self._writer = asyncio.get_running_loop().create_task(self._write(), name="cordons-configmap")

    async def _write(self) -> None:
        while self._dirty:
            self._dirty = False
            body = {"data": {KEY: self.encoded().decode()}}
            try:
                await self._store(body)
            except ApiException as exc:
                log.warning(
                    "cordons not stored in configmap %s (%s); retrying", CONFIG_MAP, status_message(exc)
                )
                self._dirty = True
                await asyncio.sleep(self._retry_s)

    async def _store(self, body: dict[str, dict[str, str]]) -> None:
        core = self._api.core
        try:
            await core.patch_namespaced_config_map(
                CONFIG_MAP, self._namespace, body, _content_type=MERGE_PATCH
            )
        except ApiException as exc:
            if exc.status != 404:
                raise
            manifest = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": CONFIG_MAP}, **body}
            try:
                await core.create_namespaced_config_map(self._namespace, manifest)
            except ApiException as created:
                if created.status != 409:  # made meanwhile: the next pass patches it
                    raise
                self._dirty = True
