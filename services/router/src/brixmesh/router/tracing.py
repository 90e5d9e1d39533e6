"""OpenTelemetry traces of requests through the router, exported over OTLP/HTTP.

On only when an endpoint is configured (``BRIXMESH_OTLP_ENDPOINT``, else the standard
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` / ``OTEL_EXPORTER_OTLP_ENDPOINT``): without one the gateway holds no
tracer and its hot path makes no span at all. Spans of one request (kind SERVER, joined to the client's
``traceparent`` if it sent one)::

    router.request            route, request id
      router.parse            api, model, stream
      router.decision         strategy, scores per pod, chosen pod, candidates
      router.upstream         one per attempt: pod, url, attempt, status or error
        router.stream_relay   chunks relayed, outcome

The attempt's span context goes to the engine as ``traceparent`` (vLLM continues the trace with
``--otlp-traces-endpoint``). Spans leave in batches from a background thread.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping

from opentelemetry.context import Context
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import Span, SpanKind, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

_propagator = TraceContextTextMapPropagator()


def traces_endpoint(brixmesh_endpoint: str, environ: Mapping[str, str] = os.environ) -> str | None:
    """The OTLP/HTTP traces URL, or None (tracing off). Base endpoints get ``/v1/traces`` appended, as the
    OpenTelemetry specification says for ``OTEL_EXPORTER_OTLP_ENDPOINT``."""
    if brixmesh_endpoint:
        return brixmesh_endpoint.rstrip("/") + "/v1/traces"
    if environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        return environ["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"]
    if environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        return environ["OTEL_EXPORTER_OTLP_ENDPOINT"].rstrip("/") + "/v1/traces"
    return None


class RequestTracing:
    def __init__(self, endpoint: str, instance_id: str) -> None:
        resource = Resource.create({"service.name": "brixmesh-router", "service.instance.id": instance_id})
        self._provider = TracerProvider(resource=resource)
        self._provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
        self.tracer: Tracer = self._provider.get_tracer("brixmesh.router")

    def request_span(
        self, route: str, request_id: str, headers: Mapping[str, str]
    ) -> contextlib.AbstractContextManager[Span]:
        parent: Context | None = _propagator.extract(headers) if "traceparent" in headers else None
        return self.tracer.start_as_current_span(
            "router.request",
            context=parent,
            kind=SpanKind.SERVER,
            attributes={"http.route": route, "brixmesh.request_id": request_id},
        )

    def span(self, name: str) -> contextlib.AbstractContextManager[Span]:
        return self.tracer.start_as_current_span(name)

    def shutdown(self) -> None:
        """Flush the spans still batched (blocks: call from a thread)."""
        self._provider.shutdown()


def traceparent(span: Span) -> bytes:
    """The W3C ``traceparent`` header line (with CRLF) continuing ``span``'s trace upstream."""
    context = span.get_span_context()
    ids = f"{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}"
    return f"traceparent: 00-{ids}\r\n".encode()


NO_SPAN: contextlib.nullcontext[None] = contextlib.nullcontext()
"""Entered instead of a span while tracing is off (reusable; costs one ``with``)."""
