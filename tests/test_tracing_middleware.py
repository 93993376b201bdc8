"""hub/tracing.py's HTTP server spans, in process (the chain across processes:
tests/test_tracing.py).

The middleware on a small aiohttp app, its tracer a local SDK provider's recording into
memory (never the process-wide provider): spans named by route template, a client's
``traceparent`` continued, 4xx raised as responses not marked as faults, a crash marked,
``/healthz`` untraced, and ``/mcp``'s span kept from being current. And the default: a
process that installed no SDK registers no middleware at all.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from aiohttp import web
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from hub import tracing
from protocol.tracecontext import in_trace

PARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


@pytest.fixture
def exporter(monkeypatch: pytest.MonkeyPatch) -> Iterator[InMemorySpanExporter]:
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    monkeypatch.setattr(tracing, "_TRACER", provider.get_tracer("spokehub.hub"))
    yield memory
    provider.shutdown()


async def test_requests_get_server_spans_named_by_their_route(
        aiohttp_client: Any, exporter: InMemorySpanExporter) -> None:
    seen: dict[str, bool] = {}

    async def box(request: web.Request) -> web.Response:
        seen["box"] = in_trace()  # what the handler's calls to spokes see
        return web.json_response({})

    async def healthz(request: web.Request) -> web.Response:
        seen["healthz"] = in_trace()
        return web.json_response({})

    async def missing(request: web.Request) -> web.Response:
        raise web.HTTPNotFound()

    async def boom(request: web.Request) -> web.Response:
        raise RuntimeError("a bug")

    async def mcp(request: web.Request) -> web.Response:
        seen["mcp"] = in_trace()
        seen["mcp_span"] = request.get(tracing.REQUEST_SPAN) is not None
        return web.json_response({})

    app = web.Application(middlewares=[tracing.tracing_middleware])
    app.router.add_get("/api/boxes/{id}", box)
    app.router.add_get("/api/missing", missing)
    app.router.add_get("/api/boom", boom)
    app.router.add_get("/healthz", healthz)
    app.router.add_post("/mcp", mcp)
    client = await aiohttp_client(app)

    assert (await client.get("/api/boxes/bx_1", headers={"traceparent": PARENT})).status == 200
    assert (await client.get("/api/missing")).status == 404
    assert (await client.get("/api/boom")).status == 500
    assert (await client.get("/healthz")).status == 200
    assert (await client.post("/mcp")).status == 200
    assert seen == {"box": True, "healthz": False, "mcp": False, "mcp_span": True}

    spans = {s.name: s for s in exporter.get_finished_spans()}
    assert set(spans) == {"GET /api/boxes/{id}", "GET /api/missing", "GET /api/boom", "POST /mcp"}
    box_span = spans["GET /api/boxes/{id}"]
    assert box_span.kind is trace.SpanKind.SERVER
    assert box_span.parent is not None and box_span.parent.span_id == int(PARENT[36:52], 16)
    assert box_span.context is not None and box_span.context.trace_id == int(PARENT[3:35], 16)
    assert box_span.attributes is not None and box_span.attributes["url.path"] == "/api/boxes/bx_1"
    assert box_span.attributes["http.response.status_code"] == 200
    assert spans["GET /api/missing"].status.status_code is trace.StatusCode.UNSET  # a 404 is no fault
    assert spans["GET /api/boom"].status.status_code is trace.StatusCode.ERROR
    assert spans["GET /api/boom"].events[0].name == "exception"


def test_no_middleware_without_an_sdk() -> None:
    # This process (the test runner) installed no tracer provider: the hub adds nothing.
    assert tracing.middlewares() == []
