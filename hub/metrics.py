"""Prometheus metrics. Labels stay low-cardinality: verb, outcome, state, rule, model — never
box, spoke or ws ids. Counters and the histogram are updated where things happen; the gauges
by state are read at scrape time from the last history sample (:class:`SnapshotCollector`).
The table is in docs/operator-guide.md, section 11."""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

REGISTRY = CollectorRegistry()
CALLS = Counter("spokehub_calls_total", "Verb calls from the hub to spokes", ["verb", "outcome"], registry=REGISTRY)
CALL_SECONDS = Histogram("spokehub_call_seconds", "Verb call latency (non-streaming part)", ["verb"],
                         registry=REGISTRY, buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 30, 120))
SPOKES_CONNECTED = Gauge("spokehub_spokes_connected", "Spokes with a live connection", registry=REGISTRY)
WS_EVENTS = Counter("spokehub_ws_events_total", "Workstream events recorded", ["kind"], registry=REGISTRY)
ALERTS_FIRED = Counter("spokehub_alerts_fired_total", "Alerts fired (hub/alerts/)", ["rule"],
                       registry=REGISTRY)
for _rule in ("spoke_lost", "no_spoke_connected", "queue_depth", "verb_error_rate"):
    ALERTS_FIRED.labels(_rule)  # every rule shows, at 0 until it fires
RECONNECTS = Counter("spokehub_spoke_reconnects_total", "Connections of spokes enrolled "
                     "earlier (every connect but the enrolling one, after a hub restart too)",
                     registry=REGISTRY)
LLM_TOKENS = Counter("spokehub_llm_tokens_total", "Model tokens used, as the spokes report "
                     "them", ["model", "kind"], registry=REGISTRY)
MAX_MODEL_LABELS = 50  # distinct model labels; more (a spoke naming models freely) are "other"
_model_labels: set[str] = set()


def count_tokens(model: str, tokens_in: int, tokens_out: int) -> None:
    """One model call's usage (hub/workstreams/service.py records it). The model is a label
    only while there are fewer than :data:`MAX_MODEL_LABELS`: a spoke names its models, and
    a label per made-up name would grow without bound. Pinned by
    tests/hub/test_alerts_service.py::test_metrics_snapshot_tokens_and_call_totals and
    ::test_tokens_the_hub_records_are_counted_by_model."""
    if model not in _model_labels and len(_model_labels) >= MAX_MODEL_LABELS:
        model = "other"
    _model_labels.add(model)
    LLM_TOKENS.labels(model, "input").inc(max(0, tokens_in))
    LLM_TOKENS.labels(model, "output").inc(max(0, tokens_out))


def call_totals() -> dict[str, dict[str, float]]:
    """``{verb: {outcome: calls}}`` since the hub started, from :data:`CALLS` (what the
    verb-error-rate alert compares over its window)."""
    out: dict[str, dict[str, float]] = {}
    for family in CALLS.collect():
        for sample in family.samples:
            if sample.name.endswith("_total"):
                out.setdefault(sample.labels["verb"], {})[sample.labels["outcome"]] = sample.value
    return out


class SnapshotCollector(Collector):
    """Gauges computed at scrape time from the last history sample (hub/history.py), so a
    scrape reads no table: spokes by state, workstreams by open state, queue depth, live
    boxes and running execs, as of ``spokehub_snapshot_timestamp_seconds``. Nothing is
    exported before the first sample. Pinned by tests/hub/test_alerts_service.py::
    test_metrics_snapshot_tokens_and_call_totals and tests/test_alerts_e2e.py."""

    GAUGES = (("spokes.", "spokehub_spokes", "Enrolled spokes by state", "state"),
              ("workstreams.", "spokehub_workstreams", "Open workstreams by state", "state"))
    SINGLE = (("queue.depth", "spokehub_queue_depth", "Workstreams waiting in the queue"),
              ("boxes.live", "spokehub_boxes", "Live boxes"),
              ("execs.running", "spokehub_execs_running", "Execs in flight"))

    def __init__(self) -> None:
        self.values: dict[str, float] = {}
        self.at = 0.0

    def set(self, values: Mapping[str, float], at: float | None = None) -> None:
        self.values, self.at = dict(values), time.time() if at is None else at

    def collect(self) -> Iterator[Metric]:
        values = self.values
        if not values:
            return
        for prefix, name, doc, label in self.GAUGES:
            family = GaugeMetricFamily(name, doc, labels=[label])
            for key in sorted(k for k in values if k.startswith(prefix)):
                family.add_metric([key[len(prefix):]], values[key])
            yield family
        for key, name, doc in self.SINGLE:
            if key in values:
                yield GaugeMetricFamily(name, doc, value=values[key])
        yield GaugeMetricFamily("spokehub_snapshot_timestamp_seconds",
                                "When the gauges above were sampled", value=self.at)


SNAPSHOT = SnapshotCollector()
REGISTRY.register(SNAPSHOT)


async def handle_metrics(request: web.Request) -> web.Response:
    return web.Response(body=generate_latest(REGISTRY), headers={"Content-Type": CONTENT_TYPE_LATEST})

KNOWN_EVENT_KINDS = frozenset({
    "state", "user_message", "text_delta", "assistant_message", "tool_call", "approval_requested",
    "approval_resolved", "approval_decided", "tool_result", "usage", "error", "assigned", "cancelled", "waiting", "notice", "lease_returned",
})
