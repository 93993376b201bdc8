"""The trace context in call frames (protocol/tracecontext.py, sides.py, link.py).

Pure and in memory: the ``tp`` field as the hub writes it and the spoke reads it (validated,
size-limited, dropped when bad, never required), and the two drivers over the in-memory pipe
making a traced call's dispatch span the parent of the spoke handler's context, with a
local SDK tracer provider and an in-memory exporter (never the process-wide provider, which
other tests must not see). The same chain across real processes: tests/test_tracing.py.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from pydantic import BaseModel

from protocol import events as ev
from protocol import hub_driver as link_module
from protocol import verbs as v
from protocol.errors import ErrorCode, RemoteError
from protocol.spoke_driver import CallIO
from protocol.tracecontext import (
    MAX_TRACEPARENT,
    TP_FIELD,
    child_span,
    context_from,
    in_trace,
    traceparent_of,
    valid_traceparent,
)
from tests.protocol.helpers import BOX, open_pair
from tests.protocol.test_link import pair

TP = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


@pytest.mark.parametrize("value", [
    TP,
    "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00",  # not sampled: still carried
    "01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-future-fields",  # a later version
])
def test_a_well_formed_traceparent_is_kept(value: str) -> None:
    assert valid_traceparent(value) == value


@pytest.mark.parametrize("value", [
    None, 7, "", "junk", TP.upper(), " " + TP, TP + "-extra",  # version 00 is exactly 55 chars
    "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",  # version ff is invalid
    "00-00000000000000000000000000000000-b7ad6b7169203331-01",  # zero trace id
    "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",  # zero parent id
    "01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-" + "x" * MAX_TRACEPARENT,
    "01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-\n",  # control character
    "00-0af7651916cd43dd8448eb211c80319c-b7ad6b716920333\u0661-01",  # a non-ASCII digit
])
def test_anything_else_is_dropped(value: object) -> None:
    assert valid_traceparent(value) is None


def test_the_hub_sends_tp_only_for_a_traced_call() -> None:
    p = open_pair()
    p.hub.send_request("box.destroy", {"box_id": BOX})
    p.hub.send_request("box.destroy", {"box_id": BOX}, traceparent=TP)
    plain, traced = (json.loads(f) for f in p.hub.data_to_send())
    assert TP_FIELD not in plain  # an untraced call's frame is what it always was
    assert traced[TP_FIELD] == TP


@pytest.mark.parametrize("tp,seen", [(TP, TP), ("00-bad", None), ("x" * 10_000, None), (5, None)])
def test_the_spoke_reads_tp_and_serves_the_call_whatever_it_holds(tp: object, seen: str | None) -> None:
    p = open_pair()
    p.spoke.receive_data(json.dumps({"jsonrpc": "2.0", "id": 9, "method": "box.destroy",
                                     "params": {"box_id": BOX}, "timeout_ms": 1000, "tp": tp}))
    (got,) = p.spoke.receive_data(json.dumps({"jsonrpc": "2.0", "id": 10, "method": "box.destroy",
                                             "params": {"box_id": BOX}, TP_FIELD: tp}))
    assert isinstance(got, ev.RequestReceived) and got.traceparent == seen
    assert p.spoke.data_to_send() == []  # no error frame: a bad tp is not a violation


def test_a_frame_without_tp_is_served_untraced() -> None:
    p = open_pair()
    _, got = p.call("spoke.ping", {})
    assert got.traceparent is None


def test_propagation_round_trips_through_the_w3c_propagator() -> None:
    tracer = TracerProvider().get_tracer("t")
    with tracer.start_as_current_span("api") as span:
        assert in_trace()
        tp = traceparent_of(span)
    assert tp is not None and valid_traceparent(tp) == tp
    remote = trace.get_current_span(context_from(tp)).get_span_context()
    assert remote.trace_id == span.get_span_context().trace_id
    assert remote.span_id == span.get_span_context().span_id and remote.is_remote


def test_untraced_work_makes_no_span() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    assert not in_trace()
    with child_span(provider.get_tracer("t"), "docker exec") as span:
        assert span is None
    assert exporter.get_finished_spans() == ()


@pytest.fixture
def spans(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[trace.Tracer, InMemorySpanExporter]]:
    """A local provider recording into memory, used by the hub's driver (not global)."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(link_module, "_TRACER", provider.get_tracer("spokehub.link"))
    yield provider.get_tracer("test"), exporter
    provider.shutdown()


async def test_a_traced_call_is_the_parent_of_the_spoke_handlers_context(
        spans: tuple[trace.Tracer, InMemorySpanExporter]) -> None:
    tracer, exporter = spans
    hub, spoke, _served, tasks = await pair()
    seen: list[trace.SpanContext] = []

    async def serve(req: ev.RequestReceived, io: CallIO) -> BaseModel:
        seen.append(trace.get_current_span().get_span_context())
        if isinstance(req.params, v.BoxExec):
            await io.send("stdout", b"hi\n")
            return v.ExecDone(exit_code=0)
        raise RemoteError(ErrorCode.NOT_FOUND, "no such box")

    spoke.serve = serve
    with tracer.start_as_current_span("POST /api/boxes/{id}/exec") as api:
        call = await hub.call_stream(v.BOX_EXEC, v.BoxExec(box_id=BOX, cmd=["true"]))
        assert [data async for _, data in call.chunks()] == [b"hi\n"]
        assert (await call.result()).exit_code == 0
        with pytest.raises(RemoteError):
            await hub.call(v.BOX_DESTROY, v.BoxRef(box_id=BOX))
    exec_span, destroy_span, _api = exporter.get_finished_spans()  # in the order they ended
    trace_id = api.get_span_context().trace_id
    for span in (exec_span, destroy_span):
        assert span.kind is trace.SpanKind.CLIENT
        assert span.parent is not None and span.parent.span_id == api.get_span_context().span_id
        assert span.context is not None and span.context.trace_id == trace_id
    assert [s.name for s in (exec_span, destroy_span)] == ["box.exec", "box.destroy"]
    assert destroy_span.status.status_code is trace.StatusCode.ERROR
    assert destroy_span.attributes is not None
    assert destroy_span.attributes["spokehub.error"] == "not_found"
    # The spoke's handlers ran under the hub's dispatch spans, as remote parents.
    assert exec_span.context is not None and destroy_span.context is not None
    assert [(c.trace_id, c.span_id, c.is_remote) for c in seen] == [
        (trace_id, exec_span.context.span_id, True), (trace_id, destroy_span.context.span_id, True)]
    await hub.close(1000, "done")
    await asyncio.gather(*tasks)


async def test_an_untraced_call_sends_no_tp_and_makes_no_span(
        spans: tuple[trace.Tracer, InMemorySpanExporter]) -> None:
    _tracer, exporter = spans
    hub, spoke, _served, tasks = await pair()
    seen: list[bool] = []

    async def serve(req: ev.RequestReceived, io: CallIO) -> BaseModel:
        seen.append(req.traceparent is None and not in_trace())
        return v.Empty()

    spoke.serve = serve
    await hub.call(v.SPOKE_PING, v.Empty())
    assert seen == [True] and exporter.get_finished_spans() == ()
    await hub.close(1000, "done")
    await asyncio.gather(*tasks)
