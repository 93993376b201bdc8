"""W3C trace context in call frames: the optional ``tp`` field of a request (pure helpers).

A traced hub request puts the traceparent of its dispatch span in the call frame
(``{"id":7,"method":"box.exec","params":{…},"timeout_ms":…,"tp":"00-<trace>-<span>-01"}``),
so the spoke's handler span, and the Docker call under it, join the trace the API request
started (docs/protocol.md, "Trace context"). The field is optional both ways: a hub that
traces nothing sends none, a spoke that predates it ignores it (unknown frame members are
never refused), and a ``tp`` that is not a well-formed traceparent, or is longer than
:data:`MAX_TRACEPARENT`, is dropped — the call is served, untraced: tracing never fails one.

Nothing here does I/O. The helpers read and write OpenTelemetry's current context (a
contextvar) through opentelemetry-api's W3C propagator on a plain dict; whether spans are
recorded and exported is decided by the process's entry point (cli/telemetry.py installs the
SDK when ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set). Without it :func:`in_trace` is False
everywhere, so a call costs one contextvar read and no span is made. Pinned by
tests/protocol/test_tracecontext.py and tests/test_tracing.py (hub and spoke processes).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

TP_FIELD = "tp"  # the request frame's member
# Version 00 is exactly 55 characters; later versions may append "-…" fields, which the
# propagator reads past. Anything longer is not a traceparent anyone sends.
MAX_TRACEPARENT = 128
_SHAPE = re.compile(r"[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}(?:-[\x21-\x7e]*)?")
_PROPAGATOR = TraceContextTextMapPropagator()
_HEADER = "traceparent"


def valid_traceparent(value: Any) -> str | None:
    """``value`` if it is a traceparent this side accepts, else None: a string of at most
    :data:`MAX_TRACEPARENT` printable ASCII characters in the W3C shape, not version ``ff``,
    with a non-zero trace id and parent id (and for version 00 nothing after the flags)."""
    if not isinstance(value, str) or len(value) > MAX_TRACEPARENT or not _SHAPE.fullmatch(value):
        return None
    if value.startswith("ff") or value[3:35] == "0" * 32 or value[36:52] == "0" * 16:
        return None
    if value.startswith("00") and len(value) != 55:
        return None
    return value


def in_trace() -> bool:
    """Whether a span is current here (a traced request is being handled): the one check
    every traced site makes first, so untraced work never builds a span."""
    return trace.get_current_span().get_span_context().is_valid


def traceparent_of(span: trace.Span) -> str | None:
    """The traceparent naming ``span`` (for a call frame's ``tp``), through the W3C
    propagator; None when the span has no valid context."""
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier, context=trace.set_span_in_context(span))
    return valid_traceparent(carrier.get(_HEADER))


def context_from(traceparent: str) -> otel_context.Context:
    """The context whose current span is the remote parent ``traceparent`` names (validate
    it with :func:`valid_traceparent` first; an invalid one gives an empty context)."""
    return _PROPAGATOR.extract({_HEADER: traceparent})


def attach(traceparent: str) -> object:
    """Make the remote parent current in this task (a spoke handler's): spans started here
    become its children. Returns the token for :func:`opentelemetry.context.detach`."""
    return otel_context.attach(context_from(traceparent))


@contextlib.contextmanager
def child_span(tracer: trace.Tracer, name: str, kind: trace.SpanKind = trace.SpanKind.INTERNAL,
               attributes: dict[str, Any] | None = None) -> Iterator[trace.Span | None]:
    """A span under the current one while the block runs (exceptions recorded on it), or
    nothing at all when no span is current: untraced work pays one contextvar read."""
    if not in_trace():
        yield None
        return
    with tracer.start_as_current_span(name, kind=kind, attributes=attributes) as span:
        yield span


def tracing_enabled() -> bool:
    """Whether this process installed an SDK tracer provider (cli/telemetry.py): without
    one the API hands out non-recording spans, and the hub registers no HTTP middleware."""
    return not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)
