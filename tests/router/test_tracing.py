"""Request traces: a real router exports its spans over OTLP/HTTP to a receiver in the test (protobuf
decoded with opentelemetry-proto), joins the client's trace, and hands the trace on to the engine as
``traceparent``. Without an endpoint nothing is exported and the client's ``traceparent`` passes through."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from brixmesh.common.ports import free_port
from brixmesh.common.servers import NatsServer
from brixmesh.router.tracing import traces_endpoint
from tests.router.fake_engine import fake_engine
from tests.router.harness import MODEL, endpoints_file, router_process
from tests.waiting import eventually

CLIENT_TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN_ID = "00f067aa0ba902b7"
CLIENT_TRACEPARENT = f"00-{CLIENT_TRACE_ID}-{CLIENT_SPAN_ID}-01"
SPANS = {"router.request", "router.parse", "router.decision", "router.upstream", "router.stream_relay"}


class OtlpReceiver:
    """An OTLP/HTTP traces endpoint: every span received, by name."""

    def __init__(self) -> None:
        self.spans: list = []
        self.paths: set[str] = set()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers["content-length"]))
                request = ExportTraceServiceRequest()
                request.ParseFromString(body)
                receiver.paths.add(self.path)
                for resource_spans in request.resource_spans:
                    for scope_spans in resource_spans.scope_spans:
                        receiver.spans.extend(scope_spans.spans)
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.port = free_port()
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def names(self) -> set[str]:
        return {span.name for span in self.spans}


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    found = OtlpReceiver()
    found.thread.start()
    try:
        yield found
    finally:
        found.server.shutdown()
        found.server.server_close()


def _attributes(span) -> dict:
    values = {}
    for item in span.attributes:
        value = item.value
        kind = value.WhichOneof("value")
        if kind == "array_value":
            values[item.key] = [v.string_value for v in value.array_value.values]
        else:
            values[item.key] = getattr(value, kind)
    return values


def test_spans_reach_an_otlp_receiver_and_the_trace_reaches_the_engine(
    nats_server: NatsServer, receiver: OtlpReceiver, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "100")  # export within 0.1 s instead of 5 s
    with fake_engine() as engine, router_process(
        nats_server.url, endpoints=endpoints_file(tmp_path, [engine]),
        otlp_endpoint=f"http://127.0.0.1:{receiver.port}",
    ) as router:  # fmt: skip
        body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": True}
        traced = {"traceparent": CLIENT_TRACEPARENT}
        reply = httpx.post(f"{router.url}/v1/chat/completions", json=body, headers=traced)
        assert reply.status_code == 200 and reply.text.endswith("data: [DONE]\n\n")
        asyncio.run(eventually(lambda: SPANS <= receiver.names(), 20, describe=lambda: str(receiver.names())))

    assert receiver.paths == {"/v1/traces"}
    by_name = {span.name: span for span in receiver.spans}
    assert {span.trace_id.hex() for span in receiver.spans} == {CLIENT_TRACE_ID}  # the client's trace, joined
    request, upstream = by_name["router.request"], by_name["router.upstream"]
    assert request.parent_span_id.hex() == CLIENT_SPAN_ID
    for child in ("router.parse", "router.decision", "router.upstream"):
        assert by_name[child].parent_span_id == request.span_id
    assert by_name["router.stream_relay"].parent_span_id == upstream.span_id
    # the engine got the attempt's span as its parent
    assert f"00-{CLIENT_TRACE_ID}-{upstream.span_id.hex()}-01" in reply.text

    decision = _attributes(by_name["router.decision"])
    assert decision["brixmesh.strategy"] == "kv-aware:3,least-request:2"
    assert decision["brixmesh.pod"] == "pod-0"
    assert decision["brixmesh.scores"][0].startswith("pod-0=") and decision["brixmesh.candidates"] == 1
    assert _attributes(upstream)["http.response.status_code"] == 200
    assert _attributes(by_name["router.parse"])["brixmesh.model"] == MODEL
    assert _attributes(request)["http.route"] == "/v1/chat/completions"


def test_without_an_endpoint_the_clients_traceparent_passes_through(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    with (
        fake_engine() as engine,
        router_process(nats_server.url, endpoints=endpoints_file(tmp_path, [engine])) as r,
    ):
        body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": True}
        client_trace = {"traceparent": CLIENT_TRACEPARENT}
        traced = httpx.post(f"{r.url}/v1/chat/completions", json=body, headers=client_trace)
        assert f'"content": "{CLIENT_TRACEPARENT}"' in traced.text
        untraced = httpx.post(f"{r.url}/v1/chat/completions", json=body)
        assert '"content": ""' in untraced.text  # the router starts no trace of its own


def test_endpoint_settings() -> None:
    assert traces_endpoint("http://collector:4318/") == "http://collector:4318/v1/traces"
    base = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}
    assert traces_endpoint("", base) == "http://c:4318/v1/traces"
    both = {**base, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://t/x"}
    assert traces_endpoint("", both) == "http://t/x"
    assert traces_endpoint("", {}) is None
