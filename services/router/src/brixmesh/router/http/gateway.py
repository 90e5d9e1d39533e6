"""The OpenAI routes as a raw ASGI app (the hot path): parse, authenticate, limit, route, forward, account.

Data flow of one request::

    body -> RequestContext -> auth + RPM check -> strategy -> Router.route (held while no pod is ready)
         -> forward to the best pod (next best on connection failure / 5xx before the first byte)
         -> stream or send the answer -> hooks, shared in-flight, TPM, stats, metrics

Errors are OpenAI-shaped JSON; once a stream has started, a failure becomes an SSE error event and the
stream ends cleanly. A client disconnect cancels the upstream request (its connection is closed).

Nothing a client sends becomes an internal key: every request gets its own id (the client's ``x-request-id``
is only echoed back), strategies named in a ``routing-strategy`` header are labelled ``other`` in metrics
unless configured, and the number of requests held for scale from zero is capped.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import msgspec

from brixmesh.router.discovery.pod_table import PodTable
from brixmesh.router.http.errors import ApiError, bad_request, sse_error_event
from brixmesh.router.http.pd import PdProxy
from brixmesh.router.http.request import API_BY_PATH, build_context, parse_body
from brixmesh.router.limits import Authenticator, RateLimiter
from brixmesh.router.metrics import RouterMetrics
from brixmesh.router.routing import (
    NoEndpoint,
    RequestContext,
    Router,
    RoutingDecision,
    UnknownStrategy,
    Usage,
)
from brixmesh.router.routing.endpoint import Endpoint
from brixmesh.router.routing.registry import Strategy
from brixmesh.router.settings import RouterSettings
from brixmesh.router.stats import StatsCollector
from brixmesh.router.sync import RoutingSync
from brixmesh.router.tracing import NO_SPAN, RequestTracing, traceparent
from brixmesh.router.upstream import (
    StreamUsage,
    UpstreamDeadline,
    UpstreamError,
    UpstreamPool,
    UpstreamResponse,
    UpstreamTimeout,
    usage_of_body,
)

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

_json = msgspec.json.Encoder()


class _Disconnected(Exception):
    """The client went away; the request is abandoned without an answer."""


class Gateway:
    def __init__(
        self,
        *,
        settings: RouterSettings,
        router: Router,
        pods: PodTable,
        sync: RoutingSync,
        stats: StatsCollector,
        metrics: RouterMetrics,
        auth: Authenticator,
        limiter: RateLimiter,
        tracing: RequestTracing | None = None,
    ) -> None:
        self.settings = settings
        self.router = router
        self.registry = router.registry
        self.pods = pods
        self.sync = sync
        self.stats = stats
        self.metrics = metrics
        self.auth = auth
        self.limiter = limiter
        self.tracing = tracing
        self.known_models: dict[str, str] = dict.fromkeys(settings.models, "")
        self._pool = UpstreamPool(settings.connect_timeout_s, settings.upstream_timeout_s)
        self._pd = PdProxy(self._pool, metrics, sync, self._connection_failed, router.env.rng)
        self._background: set[asyncio.Task[None]] = set()
        self._held = 0
        # request ids: unique per process by the counter, across processes and restarts by the random prefix
        # (a uuid4 per request cost a getrandom syscall and a UUID object)
        self._id_prefix = os.urandom(8).hex()
        self._ids = itertools.count(1)
        self._strategy_labels = {
            self.registry.strategy(spec).name
            for spec in (settings.default_strategy, *settings.model_strategies.values())
        }

    async def stop(self) -> None:
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
        self._pool.close()
        await self.limiter.close()

    # --- ASGI entry -------------------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        request_id = f"{self._id_prefix}{next(self._ids):016x}"  # 32 hex digits, like a uuid4 hex
        echoed_id = headers.get("x-request-id") or request_id
        path, method = scope["path"], scope["method"]
        try:
            if path == "/v1/models":
                if method != "GET":
                    raise ApiError(405, f"method {method} not allowed on {path}", "invalid_request_error")
                self.auth.identity(headers.get("authorization"))
                await _send_json(send, 200, self._models_body(), echoed_id)
                return
            api = API_BY_PATH.get(path)
            if api is None:
                raise ApiError(404, f"unknown path {path}", "invalid_request_error", code="unknown_url")
            if method != "POST":
                raise ApiError(
                    405, f"method {method} not allowed on {path}; use POST", "invalid_request_error"
                )
            raw = await self._read_body(headers, receive)
            if self.tracing is None:
                await self._handle(api, raw, headers, request_id, scope, receive, send)
            else:
                with self.tracing.request_span(path, request_id, headers):
                    await self._handle(api, raw, headers, request_id, scope, receive, send)
        except ApiError as exc:
            await _send_error(send, exc, echoed_id)
        except _Disconnected:
            self.metrics.client_disconnects.inc()
        except Exception:
            log.exception("request %s failed in the router", request_id)
            await _send_error(send, ApiError(500, "internal router error", "internal_error"), echoed_id)

    async def _read_body(self, headers: dict[str, str], receive: Receive) -> bytes:
        limit = self.settings.max_body_bytes
        declared = headers.get("content-length")
        too_large = ApiError(
            413, f"request body exceeds {limit} bytes", "invalid_request_error", code="request_too_large"
        )
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise too_large
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _Disconnected
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise too_large
            chunks.append(chunk)
            if not message.get("more_body", False):
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    # --- one request ------------------------------------------------------------------------------------

    async def _handle(
        self,
        api: Any,
        raw: bytes,
        headers: dict[str, str],
        request_id: str,
        scope: Scope,
        receive: Receive,
        send: Send,
    ) -> None:
        key_id = self.auth.identity(headers.get("authorization"))
        tracing = self.tracing
        with tracing.span("router.parse") if tracing else NO_SPAN as span:
            ctx = build_context(api, parse_body(raw), headers, request_id)
            base = self._base_model(ctx.model)
            if base is None:
                raise ApiError(
                    404,
                    f"The model `{ctx.model}` does not exist.",
                    "invalid_request_error",
                    param="model",
                    code="model_not_found",
                )
            ctx.base_model = base
            ctx.adapter = ctx.model if base != ctx.model else None
            if span is not None:
                span.set_attributes(
                    {"brixmesh.api": api, "brixmesh.model": ctx.model, "brixmesh.stream": ctx.stream}
                )
        strategy = self._strategy(ctx.model, headers.get("routing-strategy"))
        identities = ([f"key:{key_id}"] if key_id else []) + ([f"user:{ctx.user}"] if ctx.user else [])
        await self.limiter.check(identities)

        self.stats.arrived(ctx.model)
        outcome: tuple[bool, Usage | None] = (False, None)
        watch = _DisconnectWatch(receive, asyncio.current_task())
        send = _Finishing(send, watch)
        try:
            with tracing.span("router.decision") if tracing else NO_SPAN as span:
                decision = await self._decide(ctx, strategy)
                if span is not None:
                    _describe_decision(span, decision)
            self.metrics.decision_seconds.observe(decision.decision_s)
            if decision.pd is not None and decision.pd.pairs:
                deadline = time.monotonic() + self.settings.request_timeout_s
                outcome = await self._pd.serve(
                    ctx,
                    decision,
                    scope["path"],
                    raw,
                    self._upstream_headers(ctx),
                    deadline,
                    lambda ctx, decision, path, raw: self._forward(ctx, decision, path, raw, send, deadline),
                )
            else:
                outcome = await self._forward(ctx, decision, scope["path"], raw, send)
        except asyncio.CancelledError:
            if not watch.disconnected:
                raise
            raise _Disconnected from None
        finally:
            watch.stop()
            ok, usage = outcome
            prompt, completion = (usage.prompt_tokens, usage.completion_tokens) if usage else (0, 0)
            self.stats.finished(ctx.model, ok, prompt, completion)
            if usage is not None and identities:
                self._in_background(
                    self.limiter.add_tokens(identities, usage.total_tokens or prompt + completion)
                )

    def _base_model(self, model: str) -> str | None:
        base = self.pods.base_model_of(model)
        if base is not None:
            if model not in self.pods.registered_adapters:  # those are known while registered, no longer
                self.known_models[model] = base
            return base
        remembered = self.known_models.get(model)
        if remembered is None:
            return None
        return remembered or model

    def _strategy(self, model: str, requested: str | None) -> Strategy:
        spec = requested or self.settings.model_strategies.get(model) or self.settings.default_strategy
        try:
            return self.registry.strategy(spec)
        except UnknownStrategy as exc:
            raise bad_request(str(exc), "routing-strategy") from None

    async def _decide(self, ctx: RequestContext, strategy: Strategy) -> RoutingDecision:
        """Route now, or hold the request (bounded in time and number) until a pod of its model is ready:
        scale from zero."""
        try:
            return await self.router.route(ctx, self.pods.all(), strategy)
        except NoEndpoint:
            pass
        no_ready_pod = ApiError(
            503,
            f"no ready pod serves model `{ctx.model}`; retry later",
            "service_unavailable",
            code="no_ready_pod",
            retry_after_s=self.settings.retry_after_s,
        )
        if self.settings.cold_start_wait_s <= 0:
            raise no_ready_pod
        if self._held >= self.settings.max_held_requests:
            raise ApiError(
                503,
                f"no ready pod serves model `{ctx.model}` and {self._held} requests already wait for one; "
                "retry later",
                "service_unavailable",
                code="too_many_held_requests",
                retry_after_s=self.settings.retry_after_s,
            )
        deadline = time.monotonic() + self.settings.cold_start_wait_s
        self._held += 1
        self.stats.queued(ctx.model, 1)
        self.metrics.held.inc()
        try:
            while (remaining := deadline - time.monotonic()) > 0:
                # woken by a ready pod, or after a short while to re-check pods that turn healthy again
                await self.pods.wait_ready(ctx.model, min(remaining, 0.5))
                try:
                    return await self.router.route(ctx, self.pods.all(), strategy)
                except NoEndpoint:
                    pass
            raise no_ready_pod
        finally:
            self._held -= 1
            self.stats.queued(ctx.model, -1)
            self.metrics.held.dec()

    async def _forward(
        self,
        ctx: RequestContext,
        decision: RoutingDecision,
        path: str,
        raw: bytes,
        send: Send,
        deadline: float | None = None,
    ) -> tuple[bool, Usage | None]:
        """Send to ``decision.ranked`` in order until one answers; ``deadline``: the request's overall one
        when earlier phases (P/D prefill) started it."""
        attempts = decision.ranked[: self.settings.max_retries + 1]
        extra_headers = self._upstream_headers(ctx)
        tracing = self.tracing
        if deadline is None:
            deadline = time.monotonic() + self.settings.request_timeout_s
        strategy_label = decision.strategy.name
        if strategy_label not in self._strategy_labels:
            strategy_label = "other"
        failure = "no pod answered"
        for attempt, pod in enumerate(attempts):
            with tracing.span("router.upstream") if tracing else NO_SPAN as span:
                sent_headers = extra_headers if span is None else extra_headers + traceparent(span)
                last = attempt == len(attempts) - 1
                announced = False

                def announce() -> None:
                    """The routing hooks (speculative KV entries, shared in-flight counts), run once the
                    request is on its way: the engine works meanwhile, and nothing else is routed before."""
                    nonlocal announced
                    announced = True
                    self.router.routed(ctx, decision, pod)
                    self.sync.routed(ctx.request_id, ctx.model, pod.name, ctx.prefix_hashes)

                finished = False

                def finish() -> None:
                    """The pod's in-flight count drops before the client can have the whole answer: a
                    conversation's next turn must not find its own last turn still counted on its pod."""
                    nonlocal finished
                    if not finished:
                        finished = True
                        self.sync.done(ctx.request_id, ctx.model, pod.name)

                usage: Usage | None = None
                status = 502
                response: UpstreamResponse | None = None
                try:
                    started = time.perf_counter()
                    try:
                        response = await self._pool.post(
                            pod.url, path, raw, sent_headers, deadline, on_sent=announce
                        )
                        if response.status >= 500 and not last:
                            failure = f"pod {pod.name} answered {response.status}"
                            self.metrics.retries.labels(ctx.model, f"http_{response.status}").inc()
                            continue
                        streamed = response.header(b"content-type").startswith(b"text/event-stream")
                        first = await (response.next_chunk() if streamed else response.read())
                    except UpstreamDeadline:
                        status = 504
                        raise ApiError(
                            504,
                            f"upstream pod {pod.name} did not finish within the request deadline of "
                            f"{self.settings.request_timeout_s:g} s",
                            "timeout",
                        ) from None
                    except UpstreamTimeout:
                        status = 504
                        raise ApiError(
                            504, f"upstream pod {pod.name} did not answer in time", "timeout"
                        ) from None
                    except UpstreamError as exc:
                        failure = self._connection_failed(ctx, pod, type(exc).__name__, str(exc))
                        continue
                    self.metrics.ttft(ctx.model, time.perf_counter() - started)
                    self.router.first_byte(ctx, decision, pod)
                    status = response.status
                    if status >= 500:
                        detail = first[:300].decode("utf-8", "replace")
                        status = 502
                        raise ApiError(
                            502,
                            f"upstream pod {pod.name} answered {response.status}: {detail}",
                            "upstream_error",
                        )
                    if streamed:
                        with tracing.span("router.stream_relay") if tracing else NO_SPAN as relay:
                            ok, usage = await self._relay_stream(
                                ctx, decision, pod, response, first, send, finish
                            )
                            if relay is not None:
                                relay.set_attributes(
                                    {"brixmesh.ok": ok, "brixmesh.completion_tokens": usage.completion_tokens}
                                )
                        return ok, usage
                    ok = status < 400
                    usage = usage_of_body(first) if ok else None
                    headers = self._headers(response, ctx, decision, pod)
                    headers.append((b"content-length", str(len(first)).encode()))
                    finish()
                    await send({"type": "http.response.start", "status": status, "headers": headers})
                    await send({"type": "http.response.body", "body": first})
                    return ok, usage
                finally:
                    if not announced:  # the request failed before it was written: hooks pair as before
                        announce()
                    if response is not None:
                        response.close()
                    finish()
                    self.router.completed(ctx, decision, pod, usage)
                    self.metrics.count(ctx.model, strategy_label, pod.name, status)
                    if span is not None:
                        span.set_attributes(
                            {
                                "brixmesh.pod": pod.name,
                                "brixmesh.attempt": attempt,
                                "http.response.status_code": status,
                            }
                        )
        raise ApiError(502, f"upstream failure after {len(attempts)} attempt(s): {failure}", "upstream_error")

    async def _relay_stream(
        self,
        ctx: RequestContext,
        decision: RoutingDecision,
        pod: Endpoint,
        response: UpstreamResponse,
        first: bytes,
        send: Send,
        finish: Callable[[], None],
    ) -> tuple[bool, Usage | None]:
        """Relay the upstream's events; ``finish`` runs just before the one that ends the stream is sent."""
        counter = StreamUsage()
        counter.feed(first)
        responses = ctx.api == "responses"

        def ends_stream(recent: bytes, ended: bool) -> bool:
            if responses:
                return ended or _responses_stream_ended(recent)
            return recent.rstrip().endswith(b"data: [DONE]")  # completions and chat streams end with it

        ended = ends_stream(first, False)
        if ended:
            finish()
        await send(
            {
                "type": "http.response.start",
                "status": response.status,
                "headers": self._headers(response, ctx, decision, pod),
            }
        )
        await send({"type": "http.response.body", "body": first, "more_body": True})
        ok = response.status < 400
        tail = first[-32:]
        reason = ""
        error_type, error_code = "upstream_error", 502
        try:
            while chunk := await response.next_chunk():
                counter.feed(chunk)
                recent = tail + chunk
                ended = ends_stream(recent, ended)
                tail = recent[-32:]
                if ended:
                    finish()
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            if not ended:
                reason = "ended the stream early"
        except UpstreamDeadline:
            reason = f"passed the request deadline of {self.settings.request_timeout_s:g} s"
            error_type, error_code = "timeout", 504
        except (UpstreamTimeout, UpstreamError) as exc:
            reason = "timed out" if isinstance(exc, UpstreamTimeout) else "lost its connection"
        if reason:
            self.metrics.stream_errors.labels(ctx.model).inc()
            await send(
                {
                    "type": "http.response.body",
                    "more_body": True,
                    "body": sse_error_event(
                        f"upstream pod {pod.name} {reason} mid-stream", error_type, error_code
                    ),
                }
            )
            ok = False
        await send({"type": "http.response.body", "body": b""})
        return ok, counter.result(ctx.estimated_prompt_tokens())

    def _upstream_headers(self, ctx: RequestContext) -> bytes:
        headers = b"X-Request-Id: " + ctx.request_id.encode("latin-1") + b"\r\n"
        client_trace = ctx.headers.get("traceparent")
        if client_trace and self.tracing is None:  # not traced here: engine spans join the client's trace
            headers += b"traceparent: " + client_trace.encode("latin-1") + b"\r\n"
        return headers

    def _connection_failed(self, ctx: RequestContext, pod: Endpoint, reason: str, detail: str) -> str:
        pod.unhealthy_until = time.monotonic() + self.settings.unhealthy_s
        self.metrics.retries.labels(ctx.model, reason).inc()
        return f"pod {pod.name}: {detail}"

    def _headers(
        self, response: UpstreamResponse, ctx: RequestContext, decision: RoutingDecision, pod: Endpoint
    ) -> list[tuple[bytes, bytes]]:
        return [
            (b"content-type", response.header(b"content-type", b"application/json")),
            (b"x-request-id", ctx.client_request_id.encode("latin-1")),
            (b"x-brixmesh-pod", pod.name.encode("latin-1")),
            (b"x-brixmesh-strategy", decision.strategy.name.encode("latin-1")),
        ]

    def _models_body(self) -> bytes:
        now = int(time.time())
        data = [
            {
                "id": name,
                "object": "model",
                "created": now,
                "owned_by": "brixmesh",
                "root": base or name,
                "parent": base,
            }
            for name, base in sorted(self.pods.models().items())
        ]
        return _json.encode({"object": "list", "data": data})

    def _in_background(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)


def _describe_decision(span: Any, decision: RoutingDecision) -> None:
    best = sorted(decision.scores.items(), key=lambda item: -item[1])[:16]
    span.set_attributes(
        {
            "brixmesh.strategy": decision.strategy.name,
            "brixmesh.pod": decision.ranked[0].name,
            "brixmesh.candidates": len(decision.ranked),
            "brixmesh.scores": [f"{pod}={score:.4g}" for pod, score in best],
        }
    )


_RESPONSES_LAST_EVENTS = (
    b"event: response.completed", b"event: response.incomplete", b"event: response.failed"
)


def _responses_stream_ended(data: bytes) -> bool:
    """A Responses API stream ends with one of these events (no ``[DONE]``)."""
    return any(event in data for event in _RESPONSES_LAST_EVENTS)


class _DisconnectWatch:
    """Cancels the request's task when the client disconnects. The watching task only starts once a request
    has lasted ``grace_s``: most requests end sooner and never pay for it."""

    __slots__ = ("_receive", "_task", "_timer", "_watcher", "disconnected")

    def __init__(self, receive: Receive, task: asyncio.Task[Any] | None, grace_s: float = 0.05) -> None:
        self._receive = receive
        self._task = task
        self._watcher: asyncio.Task[None] | None = None
        self.disconnected = False
        self._timer = asyncio.get_running_loop().call_later(grace_s, self._start)

    def _start(self) -> None:
        self._watcher = asyncio.get_running_loop().create_task(self._watch())

    async def _watch(self) -> None:
        message = await self._receive()
        while message["type"] != "http.disconnect":  # the body was read already: only a disconnect comes
            message = await self._receive()
        self.disconnected = True
        if self._task is not None:
            self._task.cancel()

    def stop(self) -> None:
        self._timer.cancel()
        if self._watcher is not None:
            self._watcher.cancel()


class _Finishing:
    """Wraps ``send``: once the last body message is sent, the disconnect watch is stopped first (the server
    reports a completed response as a disconnect, which must not cancel the request's bookkeeping)."""

    __slots__ = ("_send", "_watch")

    def __init__(self, send: Send, watch: _DisconnectWatch) -> None:
        self._send = send
        self._watch = watch

    async def __call__(self, message: MutableMapping[str, Any]) -> None:
        if message["type"] == "http.response.body" and not message.get("more_body", False):
            self._watch.stop()
        await self._send(message)


async def _send_json(send: Send, status: int, body: bytes, request_id: str) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"x-request-id", request_id.encode("latin-1")),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def _send_error(send: Send, error: ApiError, request_id: str) -> None:
    try:
        await send(
            {
                "type": "http.response.start",
                "status": error.status,
                "headers": [*error.headers(), (b"x-request-id", request_id.encode("latin-1"))],
            }
        )
        await send({"type": "http.response.body", "body": error.body()})
    except (OSError, RuntimeError):  # the response had already started or the client is gone
        log.debug("could not send error %s for %s", error.status, request_id)
