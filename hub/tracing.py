"""Server spans for the hub's HTTP requests (OpenTelemetry), the root of a traced call.

When the process installed an SDK tracer provider (``hub serve`` with
``OTEL_EXPORTER_OTLP_ENDPOINT`` set: cli/telemetry.py), :func:`middlewares` returns one
aiohttp middleware, outermost, that wraps each request in a SERVER span named after its
route template (``POST /api/boxes/{id}/exec``: low cardinality, never a box id), continuing
the caller's trace when it sent a W3C ``traceparent`` header. Everything the handler does
runs under that span, so the hub's verb calls become its children (protocol/link.py), and
through the frame's ``tp`` the spoke's handler and Docker spans join the same trace. When
tracing is off it returns no middleware at all: the request path is what it was.

Not traced: the spokes' WebSocket (``/spoke/connect`` lives for days), ``/healthz`` and
``/metrics`` (probes and scrapes every few seconds), and requests no route matched.

``/mcp`` gets its span but not as the current one: the MCP SDK runs a session's work in a task
started by the session's first request, which would inherit that request's span (and put
every later tool call of the session in the first request's trace). hub/mcp/tracing.py makes
each message's own request span current while the SDK serves it instead (found through
:data:`REQUEST_SPAN`). Pinned by tests/test_tracing_middleware.py (in process) and
tests/test_tracing.py (hub and spoke processes).
"""

from __future__ import annotations

import contextlib
from typing import Any

from aiohttp import web
from opentelemetry import trace

from hub.http_util import Handler
from protocol.tracecontext import context_from, tracing_enabled, valid_traceparent

_TRACER = trace.get_tracer("spokehub.hub")
UNTRACED = frozenset({"/spoke/connect", "/healthz", "/metrics"})
NOT_CURRENT = frozenset({"/mcp"})  # spans its work names explicitly (see above)
REQUEST_SPAN = web.RequestKey("spokehub.span", trace.Span)


def middlewares() -> list[Any]:
    """The tracing middleware when this process traces, else none (zero cost when off)."""
    return [tracing_middleware] if tracing_enabled() else []


@web.middleware
async def tracing_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    resource = request.match_info.route.resource
    route = resource.canonical if resource is not None else ""
    if not route or route in UNTRACED:
        return await handler(request)
    incoming = valid_traceparent(request.headers.get("traceparent"))
    parent = context_from(incoming) if incoming is not None else None
    span = _TRACER.start_span(
        f"{request.method} {route}", context=parent, kind=trace.SpanKind.SERVER,
        attributes={"http.request.method": request.method, "http.route": route,
                    "url.path": request.path})
    request[REQUEST_SPAN] = span
    current = (trace.use_span(span, record_exception=False, set_status_on_exception=False)
               if route not in NOT_CURRENT else contextlib.nullcontext())
    try:
        with current:
            response = await handler(request)
    except web.HTTPException as exc:  # a redirect or a status raised as a response: not a fault
        _status(span, exc.status)
        raise
    except BaseException as exc:  # a bug (errors_middleware answers the typed errors), a cancel
        span.record_exception(exc)
        span.set_status(trace.StatusCode.ERROR, type(exc).__name__)
        raise
    else:
        _status(span, response.status)
        return response
    finally:
        span.end()


def _status(span: trace.Span, status: int) -> None:
    span.set_attribute("http.response.status_code", status)
    if status >= 500:
        span.set_status(trace.StatusCode.ERROR)
