"""Leader election with a ``coordination.k8s.io`` Lease, as client-go's leaderelection does it: the holder
renews ``renewTime`` every ``renew_s``; a candidate takes the lease over once it has seen the same record,
unchanged, for ``lease_s`` by its own clock (no comparison of clocks across machines). Every write carries
the resourceVersion it read, so two candidates never both win: the second gets 409 and stays a candidate.

A leader that could not renew for ``lease_s`` must stop acting before anyone else starts: :meth:`hold`
returns then (or when it sees another holder), and the orchestrator exits to start over as a candidate.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import time
from typing import Any

from brixmesh.common.kube.api import Api, raw_json
from brixmesh.common.kube.watching import MERGE_PATCH
from kubernetes_asyncio.client.exceptions import ApiException

log = logging.getLogger(__name__)


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaseElection:
    def __init__(
        self,
        api: Api,
        namespace: str,
        name: str,
        identity: str,
        *,
        lease_s: float = 15.0,
        renew_s: float = 2.0,
    ) -> None:
        if not 0 < 3 * renew_s <= lease_s:
            raise ValueError(f"renew_s ({renew_s}) must be positive, at most a third of lease_s ({lease_s})")
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.lease_s = lease_s
        self.renew_s = renew_s
        self._api = api
        self._observed: tuple[Any, ...] | None = None
        self._observed_at = 0.0

    async def acquire(self) -> None:
        """Return once this candidate holds the lease."""
        while not await self.try_acquire():
            await asyncio.sleep(self.renew_s)
        log.info("leading (lease %s/%s as %s)", self.namespace, self.name, self.identity)

    async def hold(self) -> None:
        """Renew every ``renew_s`` until the lease is lost: another holder, or no successful renewal for
        ``lease_s - 2 * renew_s`` (each try bounded by ``renew_s``), so this leader has stopped before a
        candidate can take over (``lease_s`` after the last renewal it saw)."""
        last_renewal = time.monotonic()
        while True:
            await asyncio.sleep(self.renew_s)
            try:
                held = await asyncio.wait_for(self.try_acquire(), self.renew_s)
            except (ApiException, OSError, asyncio.TimeoutError) as exc:
                log.warning("lease renewal failed: %s", exc or type(exc).__name__)
            else:
                if not held:
                    log.error("lease %s/%s taken by another orchestrator", self.namespace, self.name)
                    return
                last_renewal = time.monotonic()
            if time.monotonic() - last_renewal >= self.lease_s - 2 * self.renew_s:
                log.error("lease %s/%s not renewed in time: stepping down", self.namespace, self.name)
                return

    async def release(self) -> None:
        """Give the lease up (graceful stop): a standby takes over at its next try instead of after expiry."""
        for _ in range(3):  # a renewal may write between our read and our write (409): read again
            try:
                lease = await self._read()
                if lease is None or lease["spec"].get("holderIdentity") != self.identity:
                    return
                patch = {"metadata": {"resourceVersion": lease["metadata"]["resourceVersion"]},
                         "spec": {"holderIdentity": None, "leaseDurationSeconds": 1,
                                  "renewTime": _now()}}  # fmt: skip
                await self._api.coordination.patch_namespaced_lease(
                    self.name, self.namespace, patch, _content_type=MERGE_PATCH
                )
                return
            except ApiException as exc:
                if exc.status != 409:
                    log.warning("lease not released (the standby takes over when it expires): %s", exc.reason)
                    return
            except OSError as exc:
                log.warning("lease not released (the standby takes over when it expires): %s", exc)
                return

    async def try_acquire(self) -> bool:
        lease = await self._read()
        if lease is None:
            return await self._create()
        spec = lease.get("spec") or {}
        holder = spec.get("holderIdentity")
        record = (holder, spec.get("renewTime"), spec.get("leaseDurationSeconds"))
        now = time.monotonic()
        if record != self._observed:
            self._observed, self._observed_at = record, now
        duration = float(spec.get("leaseDurationSeconds") or self.lease_s)
        if holder and holder != self.identity and now - self._observed_at < duration:
            return False
        transitions = int(spec.get("leaseTransitions") or 0) + (holder != self.identity)
        patch = {
            "metadata": {"resourceVersion": lease["metadata"]["resourceVersion"]},
            "spec": {
                "holderIdentity": self.identity,
                "leaseDurationSeconds": round(self.lease_s),
                "renewTime": _now(),
                "acquireTime": spec.get("acquireTime") if holder == self.identity else _now(),
                "leaseTransitions": transitions,
            },
        }
        try:
            await self._api.coordination.patch_namespaced_lease(
                self.name, self.namespace, patch, _content_type=MERGE_PATCH
            )
        except ApiException as exc:
            if exc.status == 409:  # another candidate wrote first
                return False
            raise
        return True

    async def _read(self) -> dict[str, Any] | None:
        try:
            response = await self._api.coordination.read_namespaced_lease(
                self.name, self.namespace, _preload_content=False
            )
            return await raw_json(response)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    async def _create(self) -> bool:
        body = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": self.name, "namespace": self.namespace},
            "spec": {
                "holderIdentity": self.identity, "leaseDurationSeconds": round(self.lease_s),
                "acquireTime": _now(), "renewTime": _now(), "leaseTransitions": 0,
            },
        }  # fmt: skip
        try:
            await self._api.coordination.create_namespaced_lease(self.namespace, body)
        except ApiException as exc:
            if exc.status == 409:
                return False
            raise
        return True
