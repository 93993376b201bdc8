"""cli/telemetry.py: when tracing turns on (the standard OTEL_* variables only), and the
``--log-format json`` line format. Real processes: tests/test_tracing.py."""

from __future__ import annotations

import json
import logging
import sys

import pytest
from opentelemetry.sdk.trace import TracerProvider

from cli.telemetry import JsonFormatter, tracing_configured

ENDPOINT = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}


@pytest.mark.parametrize("env,on", [
    ({}, False),
    ({"OTEL_SERVICE_NAME": "x"}, False),  # naming a service asks for nothing
    (ENDPOINT, True),
    ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/v1/traces"}, True),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": " "}, False),
    ({**ENDPOINT, "OTEL_SDK_DISABLED": "true"}, False),
    ({**ENDPOINT, "OTEL_SDK_DISABLED": "false"}, True),
    ({**ENDPOINT, "OTEL_TRACES_EXPORTER": "none"}, False),
])
def test_tracing_is_off_unless_an_otlp_endpoint_is_configured(env: dict[str, str], on: bool) -> None:
    assert tracing_configured(env) is on


def record(message: str, exc: bool = False) -> logging.LogRecord:
    info = None
    if exc:
        try:
            raise ValueError("bad\nvalue")
        except ValueError:
            info = sys.exc_info()
    return logging.LogRecord("spokehub.hub.boxes", logging.WARNING, __file__, 1, message, (),
                             info)


def test_a_json_log_line_is_one_object_on_one_line() -> None:
    line = JsonFormatter().format(record("two\nlines \x1b[31m and %s", exc=True))
    assert "\n" not in line
    doc = json.loads(line)
    assert doc["level"] == "WARNING" and doc["logger"] == "spokehub.hub.boxes"
    assert doc["message"] == "two\nlines \x1b[31m and %s"
    assert doc["ts"].endswith("Z") and "ValueError: bad" in doc["exc"]
    assert "trace_id" not in doc and "span_id" not in doc  # no span current


def test_a_json_log_line_names_the_current_span() -> None:
    with TracerProvider().get_tracer("t").start_as_current_span("work") as span:
        doc = json.loads(JsonFormatter().format(record("inside")))
    context = span.get_span_context()
    assert doc["trace_id"] == f"{context.trace_id:032x}"
    assert doc["span_id"] == f"{context.span_id:016x}"
