"""Prometheus metrics. Labels stay low-cardinality: verb and outcome, never box or ws ids."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

REGISTRY = CollectorRegistry()
CALLS = Counter("spokehub_calls_total", "Verb calls from the hub to spokes", ["verb", "outcome"], registry=REGISTRY)
CALL_SECONDS = Histogram("spokehub_call_seconds", "Verb call latency (non-streaming part)", ["verb"],
                         registry=REGISTRY, buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 30, 120))
SPOKES_CONNECTED = Gauge("spokehub_spokes_connected", "Spokes with a live connection", registry=REGISTRY)
WS_EVENTS = Counter("spokehub_ws_events_total", "Workstream events recorded", ["kind"], registry=REGISTRY)


async def handle_metrics(request: web.Request) -> web.Response:
    return web.Response(body=generate_latest(REGISTRY), headers={"Content-Type": CONTENT_TYPE_LATEST})

KNOWN_EVENT_KINDS = frozenset({
    "state", "user_message", "text_delta", "assistant_message", "tool_call", "approval_requested",
    "approval_resolved", "approval_decided", "tool_result", "usage", "error", "assigned", "cancelled", "waiting", "notice", "lease_returned",
})
