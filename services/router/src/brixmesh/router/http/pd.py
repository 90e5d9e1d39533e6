"""The prefill/decode protocols on the wire (strategy ``pd``; the pair choice is ``routing.pd``).

- ``nixl`` (vLLM's NixlConnector and compatible; also pods that name no transfer): the prefill pod gets the
  request with ``max_tokens: 1``, ``stream: false`` and ``kv_transfer_params: {do_remote_decode: true, ...}``;
  the ``kv_transfer_params`` of its answer (``remote_host`` set to the prefill pod's host, as the side
  channel host an engine reports is often ``localhost``) go into the decode request, whose answer the client
  gets, streamed or not. Usage comes from the decode answer.
- ``shared-storage`` (ExampleConnector and the like): the same two phases without parameters.
- ``sglang``: both pods get the request at once with ``bootstrap_host``/``bootstrap_port``/``bootstrap_room``;
  the decode pod pulls the KV from the prefill pod's bootstrap server.

Failures: a prefill pod that fails (connection, timeout, 5xx) is replaced by the next prefill pod of the
plan; when that fails too, or a prefill pod rejects the request (4xx), the decode pod serves it colocated,
counted in ``brixmesh_router_pd_fallbacks_total``. The decode phase is the gateway's ordinary forwarding: a
decode pod that fails before its first byte is replaced by the next one paired with the same prefill pod.
With SGLang there is one prefill attempt: a decode pod whose bootstrap fails recomputes the prompt itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any
from urllib.parse import urlsplit

import msgspec
from brixmesh.common.messages import PAYLOAD_ERRORS

from brixmesh.router.metrics import RouterMetrics
from brixmesh.router.routing import RequestContext, RoutingDecision, Usage
from brixmesh.router.routing.endpoint import Endpoint
from brixmesh.router.sync import RoutingSync
from brixmesh.router.upstream import UpstreamError, UpstreamPool, UpstreamTimeout

SGLANG_BOOTSTRAP_PORT = 8998
"""SGLang's default ``--disaggregation-bootstrap-port``, for prefill pods that announce none."""
PREFILL_ATTEMPTS = 2
PREFILL_KV_PARAMS = {
    "do_remote_decode": True,
    "do_remote_prefill": False,
    "remote_engine_id": None,
    "remote_block_ids": None,
    "remote_host": None,
    "remote_port": None,
}

Forward = Callable[[RequestContext, RoutingDecision, str, bytes], Awaitable[tuple[bool, Usage | None]]]
"""The gateway's forwarding of one request to ``decision.ranked`` (retries, relay to the client)."""
MarkFailed = Callable[[RequestContext, Endpoint, str, str], str]

_encode = msgspec.json.encode


class _KvParamsOnly(msgspec.Struct):
    kv_transfer_params: dict[str, Any] | None = None


_kv_params_decoder = msgspec.json.Decoder(_KvParamsOnly)


def prefill_body(body: dict[str, Any], kind: str) -> bytes:
    """The prefill phase's request: one token, not streamed; NIXL-style parameters unless shared storage."""
    sent = {k: v for k, v in body.items() if k not in ("stream_options", "max_completion_tokens")}
    sent.update(max_tokens=1, stream=False)
    if kind != "shared-storage":
        sent["kv_transfer_params"] = PREFILL_KV_PARAMS
    return _encode(sent)


def decode_kv_params(answer: bytes, prefill: Endpoint) -> dict[str, Any] | None:
    """The prefill answer's ``kv_transfer_params`` with ``remote_host`` pointing at the prefill pod."""
    try:
        params = _kv_params_decoder.decode(answer).kv_transfer_params
    except PAYLOAD_ERRORS:
        return None
    if params is None:
        return None
    host = urlsplit(prefill.url).hostname
    return {**params, "remote_host": host} if host else params


def with_fields(body: dict[str, Any], **fields: Any) -> bytes:
    return _encode({**body, **fields})


class PdProxy:
    def __init__(
        self,
        pool: UpstreamPool,
        metrics: RouterMetrics,
        sync: RoutingSync,
        mark_failed: MarkFailed,
        rng: random.Random | None = None,
    ) -> None:
        self.pool = pool
        self.metrics = metrics
        self.sync = sync
        self.mark_failed = mark_failed
        self.rng = rng or random.Random()

    async def serve(
        self,
        ctx: RequestContext,
        decision: RoutingDecision,
        path: str,
        raw: bytes,
        headers: bytes,
        deadline: float,
        forward: Forward,
    ) -> tuple[bool, Usage | None]:
        body = msgspec.json.decode(raw)  # the gateway parsed it already: a JSON object
        assert decision.pd is not None
        pairs = decision.pd.pairs
        if pairs[0][0].kv_transfer == "sglang":
            return await self._sglang(ctx, decision, path, body, headers, deadline, forward)
        pairing = decision.strategy.pairing
        reason = "prefill_failed"
        for prefill, decodes in pairs[:PREFILL_ATTEMPTS]:
            kind = prefill.kv_transfer
            answer = await self._prefill(ctx, prefill, path, prefill_body(body, kind), headers, deadline)
            if answer is None:
                continue
            status, data = answer
            if status >= 400:
                reason = "prefill_rejected"
                break
            if pairing is not None:
                pairing.prefilled(ctx, prefill)
            params = decode_kv_params(data, prefill) if kind != "shared-storage" else None
            decode_raw = with_fields(body, kv_transfer_params=params) if params is not None else raw
            return await forward(ctx, replace(decision, ranked=decodes), path, decode_raw)
        self.metrics.pd_fallback(ctx.model, reason)
        return await forward(ctx, replace(decision, ranked=pairs[0][1]), path, raw)

    async def _prefill(
        self, ctx: RequestContext, pod: Endpoint, path: str, body: bytes, headers: bytes, deadline: float
    ) -> tuple[int, bytes] | None:
        """(status, body) of the prefill pod's answer, None when it failed (connection, timeout, 5xx)."""
        load_key = ctx.request_id + "/prefill"  # apart from the decode phase, which may run at the same time
        self.sync.routed(load_key, ctx.model, pod.name, ctx.prefix_hashes)
        response = None
        try:
            response = await self.pool.post(pod.url, path, body, headers, deadline)
            data = await response.read()
        except UpstreamError as exc:
            self.mark_failed(ctx, pod, f"prefill_{type(exc).__name__}", str(exc))
            return None
        except UpstreamTimeout:
            self.metrics.retries.labels(ctx.model, "prefill_timeout").inc()
            return None
        finally:
            if response is not None:
                response.close()
            self.sync.done(load_key, ctx.model, pod.name)
        if response.status >= 500:
            self.metrics.retries.labels(ctx.model, f"prefill_http_{response.status}").inc()
            return None
        return response.status, data

    async def _sglang(
        self,
        ctx: RequestContext,
        decision: RoutingDecision,
        path: str,
        body: dict[str, Any],
        headers: bytes,
        deadline: float,
        forward: Forward,
    ) -> tuple[bool, Usage | None]:
        assert decision.pd is not None
        prefill, decodes = decision.pd.pairs[0]
        bootstrap = {
            "bootstrap_host": urlsplit(prefill.url).hostname,
            "bootstrap_port": prefill.bootstrap_port or SGLANG_BOOTSTRAP_PORT,
            "bootstrap_room": self.rng.getrandbits(63),
        }
        unstreamed = {k: v for k, v in body.items() if k != "stream_options"}
        prefill_raw = with_fields(unstreamed, **bootstrap, stream=False)
        prefill_task = asyncio.ensure_future(
            self._prefill(ctx, prefill, path, prefill_raw, headers, deadline)
        )
        decode_raw = with_fields(body, **bootstrap)
        try:
            outcome = await forward(ctx, replace(decision, ranked=decodes), path, decode_raw)
            answer = await prefill_task
        finally:
            if not prefill_task.done():
                prefill_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await prefill_task
        if answer is None or answer[0] >= 400:
            self.metrics.pd_fallback(ctx.model, "prefill_failed")
        elif decision.strategy.pairing is not None:
            decision.strategy.pairing.prefilled(ctx, prefill)
        return outcome
