"""One trace from the hub's API to the Docker call, across real hub and spoke processes.

A real ``hub serve`` and ``spoke join`` (with real Docker and the sandbox image) both export
their spans over OTLP/HTTP to :class:`Collector`, a small collector this test runs on
127.0.0.1 that decodes the protobuf export requests (``opentelemetry-proto`` comes with the
exporter), configured by nothing but the standard ``OTEL_*`` variables. A ``hub box exec``
(REST ``POST /api/boxes/{id}/exec``) and an MCP ``exec`` must each give one trace:

    hub    POST /api/boxes/{id}/exec   SERVER  (hub/tracing.py)  or  POST /mcp → tools/call exec
    hub    box.exec                    CLIENT  (protocol/link.py, its traceparent in the frame's tp)
    spoke  box.exec                    SERVER  (spoke/dispatcher.py)
    spoke  agent exec                  CLIENT  (spoke/boxes/docker_boxes.py: the frame to the
                                                in-box supervisor; "docker exec" for a box
                                                without one)

and both processes, run with ``--log-format json``, write one JSON object a line, those
logged under a span carrying its ``trace_id``. The pure half (frames, propagation, the
drivers in memory) is tests/protocol/test_tracecontext.py.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.trace.v1.trace_pb2 import Span as PbSpan

from tests.cluster import Hub, Spoke, wait_until
from tests.test_mcp import call, mcp_session


@dataclass(frozen=True)
class Exported:
    service: str
    name: str
    kind: int
    trace_id: str
    span_id: str
    parent_id: str  # "" for a root span
    attributes: dict[str, Any]


class Collector:
    """An OTLP/HTTP trace receiver on loopback: ``POST /v1/traces`` (protobuf) → spans."""

    def __init__(self) -> None:
        self.spans: list[Exported] = []
        self.lock = threading.Lock()
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                ok = self.path == "/v1/traces"
                if ok:
                    collector.receive(ExportTraceServiceRequest.FromString(body))
                reply = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200 if ok else 404)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def receive(self, request: ExportTraceServiceRequest) -> None:
        for resource_spans in request.resource_spans:
            attrs = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    with self.lock:
                        self.spans.append(Exported(
                            service=attrs.get("service.name", ""), name=span.name, kind=span.kind,
                            trace_id=span.trace_id.hex(), span_id=span.span_id.hex(),
                            parent_id=span.parent_span_id.hex(),
                            attributes={a.key: a.value.string_value or a.value.int_value
                                        for a in span.attributes}))

    def trace(self, trace_id: str) -> list[Exported]:
        with self.lock:
            return [s for s in self.spans if s.trace_id == trace_id]

    def named(self, service: str, name: str) -> list[Exported]:
        with self.lock:
            return [s for s in self.spans if s.service == service and s.name == name]

    def __enter__(self) -> Collector:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def collector() -> Iterator[Collector]:
    with Collector() as c:
        yield c


@pytest.fixture
def traced(tmp_path: Path, sandbox_image: str, collector: Collector, spokes: list[Spoke],
           monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Hub, Spoke]]:
    """A hub and a spoke exporting to ``collector`` (standard variables only), JSON logs."""
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", collector.url)
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "100")  # ms: export within the test's wait
    hub = Hub(tmp_path)
    hub.extra = ["--log-format", "json"]
    hub.start()
    spoke = Spoke(tmp_path, hub, extra=["--log-format", "json", "--log-level", "DEBUG"])
    spokes.append(spoke)
    try:
        spoke.join()
    except BaseException:
        hub.stop()
        raise
    yield hub, spoke
    hub.stop()


def chain(collector: Collector, root: Exported) -> list[Exported]:
    """``root`` and the rest of the box.exec chain under it, waiting for the spoke's export."""

    def complete() -> list[Exported] | None:
        spans = {s.span_id: s for s in collector.trace(root.trace_id)}
        path = [root]
        for service, name in (("spokehub-hub", "box.exec"), ("spokehub-spoke", "box.exec"),
                              ("spokehub-spoke", "agent exec")):
            child = [s for s in spans.values() if s.parent_id == path[-1].span_id
                     and s.service == service and s.name == name]
            if not child:
                return None
            path.append(child[0])
        return path

    found: list[Exported] = wait_until(complete, timeout=30, what="the spoke's spans of the exec")
    return found


def test_a_box_exec_is_one_trace_from_the_api_to_docker(
        traced: tuple[Hub, Spoke], collector: Collector, sandbox_image: str) -> None:
    hub, spoke = traced
    box = hub.cli_json("box", "create", "--spoke", spoke.name, "--image", sandbox_image)["id"]
    done = hub.cli("box", "exec", box, "--", "sh", "-c", "echo traced")
    assert done.returncode == 0 and done.stdout == "traced\n", done.stderr

    [api] = wait_until(lambda: collector.named("spokehub-hub", "POST /api/boxes/{id}/exec"),
                       what="the hub's span of the exec request")
    assert api.parent_id == "" and api.kind == PbSpan.SPAN_KIND_SERVER
    assert api.attributes["http.route"] == "/api/boxes/{id}/exec"
    assert api.attributes["http.response.status_code"] == 200
    _, dispatch, handler, docker_call = chain(collector, api)
    assert dispatch.kind == PbSpan.SPAN_KIND_CLIENT and dispatch.attributes["spokehub.spoke"] == spoke.name
    assert handler.kind == PbSpan.SPAN_KIND_SERVER and handler.attributes["spokehub.box_id"] == box
    assert docker_call.kind == PbSpan.SPAN_KIND_CLIENT and docker_call.attributes["spokehub.box_id"] == box
    assert {s.trace_id for s in (api, dispatch, handler, docker_call)} == {api.trace_id}
    # Untraced calls (the reconcile at connect, heartbeats) make no traces of their own.
    assert not collector.named("spokehub-hub", "box.reap") and not collector.named("spokehub-spoke", "box.list")

    # The MCP exec tool: the same chain under the /mcp request that carried the tools/call
    # (the MCP SDK's own span, hub/mcp/tracing.py), in a session opened by another request.
    async def mcp_exec() -> dict[str, Any]:
        async with mcp_session(hub) as session:
            return await call(session, "exec", box=box, cmd="echo via-mcp")

    assert asyncio.run(mcp_exec())["stdout"] == "via-mcp\n"
    [tool] = wait_until(lambda: collector.named("spokehub-hub", "tools/call exec"),
                        what="the MCP SDK's span of the tool call")
    # The request's span ends (and is exported) after the tool's: wait for it too.
    request = wait_until(lambda: [s for s in collector.trace(tool.trace_id)
                                  if s.span_id == tool.parent_id],
                         what="the span of the /mcp request that carried the tool call")
    assert [s.name for s in request] == ["POST /mcp"] and request[0].parent_id == ""
    assert len(chain(collector, tool)) == 4
    # Each message is in its own request's trace, never in the session's first one.
    [initialize] = collector.named("spokehub-hub", "initialize")
    assert initialize.trace_id != tool.trace_id and initialize.parent_id != ""

    # JSON logs: every log line of both processes one object (their logs go to stderr; the
    # few lines for people on stdout — where the hub listens, the first admin password, the
    # spoke connected — stay text, and the log holds both); the spoke's lines logged while
    # it served the traced exec carry the trace's id.
    assert hub.proc is not None and spoke.proc is not None
    stdout_lines = ("admin password (shown once):", "hub listening on ",
                    f"spoke {spoke.name} connected to ")
    for proc in (hub.proc, spoke.proc):
        text = [line for line in proc.output().splitlines() if line.strip()]
        assert all(line.startswith(("{", *stdout_lines)) for line in text), text
        lines = [json.loads(line) for line in text if line.startswith("{")]
        assert len(lines) > 5 and all({"ts", "level", "logger", "message"} <= set(line)
                                      for line in lines)
    spoke_lines = [json.loads(line) for line in spoke.proc.output().splitlines()
                   if line.startswith("{")]
    assert any(line.get("trace_id") == api.trace_id and len(line.get("span_id", "")) == 16
               for line in spoke_lines), "no spoke log line carried the exec's trace id"
