"""MCP messages in the trace of the HTTP request that carried them.

The MCP SDK makes its own span for every message it serves (``tools/call exec``, through its
``OpenTelemetryMiddleware``), parented to the W3C context in the message's ``_meta`` when the
client sent one, else to whatever span is current. A session's messages are served in a task
the session's first request started, so "current" would be that first request's span (or
nothing: hub/tracing.py keeps ``/mcp``'s span from being current for that reason).
:class:`RequestSpanParent`, installed outermost when the hub traces, makes the span of the
HTTP request that carried *this* message current while the SDK serves it: the chain is then
``POST /mcp`` → ``tools/call exec`` → the hub's ``box.exec`` call → the spoke's handler → the
Docker call, and a client's ``_meta`` trace context still wins for the SDK's span. Pinned by
tests/test_tracing.py.
"""

from __future__ import annotations

from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace

from hub.mcp.asgi import HTTP_REQUEST_KEY
from hub.tracing import REQUEST_SPAN


class RequestSpanParent:
    """An MCP server middleware (``(ctx, call_next)``): see the module docstring."""

    async def __call__(self, ctx: Any, call_next: Any) -> Any:
        scope = getattr(getattr(ctx, "request", None), "scope", None)
        origin = scope.get(HTTP_REQUEST_KEY) if isinstance(scope, dict) else None
        span = origin.get(REQUEST_SPAN) if origin is not None else None
        if span is None:
            return await call_next(ctx)
        token = otel_context.attach(trace.set_span_in_context(span))
        try:
            return await call_next(ctx)
        finally:
            otel_context.detach(token)
