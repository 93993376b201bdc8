"""Traces and JSON logs for ``hub serve`` and ``spoke join|run`` (the I/O half of tracing).

Tracing is off unless the standard ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``) is set; then :func:`setup_tracing` installs the
OpenTelemetry SDK with a batching OTLP/HTTP (protobuf) exporter, configured by the other
standard variables as the SDK reads them: ``OTEL_SERVICE_NAME`` and
``OTEL_RESOURCE_ATTRIBUTES`` (default service name ``spokehub-hub`` / ``spokehub-spoke``),
``OTEL_EXPORTER_OTLP_HEADERS`` and ``…_TIMEOUT``, ``OTEL_TRACES_SAMPLER`` and its argument,
``OTEL_BSP_*`` (batching). ``OTEL_SDK_DISABLED=true`` or ``OTEL_TRACES_EXPORTER=none`` keep
it off. The spans themselves are made where the work is (hub/tracing.py, protocol/link.py,
spoke/dispatcher.py, spoke/boxes/docker_boxes.py) through opentelemetry-api alone, which
costs nothing while no SDK is installed.

:class:`JsonFormatter` is ``--log-format json``: one JSON object a line with ``ts``,
``level``, ``logger``, ``message`` (and ``exc`` for a traceback), plus ``trace_id`` and
``span_id`` while a span is current, so a log line finds its trace. Pinned by
tests/test_tracing_config.py and tests/test_tracing.py (real hub and spoke processes).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
from typing import Any

from opentelemetry import trace

log = logging.getLogger("spokehub.telemetry")

HUB_SERVICE = "spokehub-hub"
SPOKE_SERVICE = "spokehub-spoke"
ENDPOINT_VARS = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")


def tracing_configured(env: dict[str, str] | None = None) -> bool:
    """Whether the environment asks for traces: an OTLP endpoint, and not switched off."""
    env = dict(os.environ) if env is None else env
    if not any(env.get(name, "").strip() for name in ENDPOINT_VARS):
        return False
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    return env.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower() != "none"


def setup_tracing(service: str) -> bool:
    """Install the SDK and the OTLP/HTTP exporter if the environment asks for traces
    (:func:`tracing_configured`); returns whether it did. ``service`` is the default
    ``service.name``; ``OTEL_SERVICE_NAME`` (or ``service.name`` in
    ``OTEL_RESOURCE_ATTRIBUTES``) wins. Spans still queued are exported at exit."""
    if not tracing_configured():
        return False
    protocol = (os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
                or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL") or "http/protobuf").strip()
    if protocol != "http/protobuf":
        log.warning("tracing: OTEL_EXPORTER_OTLP_PROTOCOL=%s is not supported; exporting "
                    "with http/protobuf (point the endpoint at the collector's HTTP port, "
                    "usually 4318)", protocol)
    # The SDK and exporter (and protobuf) load only here: ~0.4 s a process without tracing
    # never pays.
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import SERVICE_NAME, SERVICE_VERSION, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    from protocol.version import VERSION

    resource = Resource.create({SERVICE_VERSION: VERSION})
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: service}))
    provider = TracerProvider(resource=resource)  # the sampler: OTEL_TRACES_SAMPLER
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    endpoint = next(os.environ[n] for n in ENDPOINT_VARS if os.environ.get(n, "").strip())
    log.info("tracing on: spans of %s exported to %s", resource.attributes.get(SERVICE_NAME),
             endpoint)
    return True


class JsonFormatter(logging.Formatter):
    """One JSON object a line (``--log-format json``), for log shippers: never more than
    one line, whatever the message holds (newlines and control characters are escaped)."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": dt.datetime.fromtimestamp(record.created, dt.UTC)
                    .isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        context = trace.get_current_span().get_span_context()
        if context.is_valid:
            line["trace_id"] = trace.format_trace_id(context.trace_id)
            line["span_id"] = trace.format_span_id(context.span_id)
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return json.dumps(line, default=str)
