"""Requests and results: every verb round-trips, and both ends validate."""

from __future__ import annotations

import json

import pytest

from protocol import events as ev
from protocol import messages
from protocol.connection import Limits
from protocol.errors import ErrorCode, RemoteError
from protocol.verbs import VERBS, BoxRef, Destroyed
from tests.protocol.helpers import BOX, SAMPLES, Pair, error_kind, frame, frames, open_pair


def test_samples_cover_every_verb() -> None:
    assert set(SAMPLES) == set(VERBS)


@pytest.mark.parametrize("name", sorted(VERBS))
def test_round_trip_every_verb(name: str) -> None:
    verb = VERBS[name]
    params, result = SAMPLES[name]
    pair = open_pair()
    start = pair.clock.now
    call_id = pair.hub.send_request(name, params)
    (req_frame,) = frames(pair.hub)
    assert req_frame["method"] == name and req_frame["id"] == call_id
    assert req_frame["timeout_ms"] == int(verb.default_timeout_s * 1000)
    (got,) = pair.spoke.receive_data(json.dumps(req_frame))
    assert isinstance(got, ev.RequestReceived)
    assert got.verb == name and got.call_id == call_id
    assert type(got.params) is verb.params
    assert got.params == verb.params.model_validate(params)
    assert got.deadline == pytest.approx(start + verb.default_timeout_s)
    assert pair.hub.in_flight() == 1 and pair.spoke.in_flight() == 1
    pair.spoke.send_result(call_id, result)
    (resp,) = pair.to_hub()
    assert isinstance(resp, ev.ResponseReceived) and resp.call_id == call_id
    assert type(resp.result) is verb.result
    assert resp.result == verb.result.model_validate(result)
    assert pair.hub.in_flight() == 0 and pair.spoke.in_flight() == 0


def test_call_ids_are_unique_and_increasing() -> None:
    pair = open_pair()
    ids = [pair.hub.send_request("spoke.ping", {}) for _ in range(5)]
    assert ids == sorted(set(ids))
    assert [f["id"] for f in frames(pair.hub)] == ids


def test_models_accepted_as_params_and_results() -> None:
    pair = open_pair()
    call_id = pair.hub.send_request("box.destroy", BoxRef(box_id=BOX))
    (got,) = pair.to_spoke()
    assert isinstance(got, ev.RequestReceived)
    assert got.params == BoxRef(box_id=BOX)
    pair.spoke.send_result(call_id, Destroyed(existed=False))
    (resp,) = pair.to_hub()
    assert isinstance(resp, ev.ResponseReceived) and resp.result.model_dump() == {"existed": False}


def test_explicit_timeout_is_sent_and_sets_the_spoke_deadline() -> None:
    pair = open_pair()
    start = pair.clock.now
    pair.hub.send_request("box.list", {}, timeout_s=2.5)
    (f,) = frames(pair.hub)
    assert f["timeout_ms"] == 2500
    (got,) = pair.spoke.receive_data(json.dumps(f))
    assert isinstance(got, ev.RequestReceived) and got.deadline == pytest.approx(start + 2.5)


@pytest.mark.parametrize("timeout_ms", [None, -5, 0, True, "100", 1.5])
def test_bad_timeout_falls_back_to_the_verb_default(timeout_ms: object) -> None:
    pair = open_pair()
    start = pair.clock.now
    (got,) = pair.spoke.receive_data(
        frame(id=1, method="spoke.ping", params={}, timeout_ms=timeout_ms)
    )
    assert isinstance(got, ev.RequestReceived)
    assert got.deadline == pytest.approx(start + VERBS["spoke.ping"].default_timeout_s)


@pytest.mark.parametrize(
    ("verb", "params"),
    [
        ("box.destroy", {"box_id": "nope"}),
        ("box.create", {"box_id": BOX}),  # image missing
        ("box.list", {"surprise": True}),  # extra field
        ("box.exec", {"box_id": BOX, "cmd": []}),
        ("box.destroy", BoxRef.model_construct(box_id="../../etc")),
    ],
)
def test_hub_validates_params_before_sending(verb: str, params: object) -> None:
    pair = open_pair()
    with pytest.raises(RemoteError) as err:
        pair.hub.send_request(verb, params)  # type: ignore[call-overload]
    assert err.value.code is ErrorCode.INVALID
    assert verb in err.value.message
    assert frames(pair.hub) == [] and pair.hub.in_flight() == 0


def test_hub_refuses_unknown_verb_locally() -> None:
    pair = open_pair()
    with pytest.raises(RemoteError) as err:
        pair.hub.send_request("box.format_disk", {})
    assert err.value.code is ErrorCode.DENIED
    assert "box.format_disk" in err.value.message
    assert frames(pair.hub) == []


def _tampered(pair: Pair, **changes: object) -> list[ev.Event]:
    """Hub sends a valid box.destroy; the frame is altered on the way to the spoke."""
    pair.hub.send_request("box.destroy", {"box_id": BOX})
    (f,) = frames(pair.hub)
    f.update(changes)
    return pair.spoke.receive_data(json.dumps(f))


@pytest.mark.parametrize(
    ("changes", "code"),
    [
        ({"params": {"box_id": "bx_../../etc"}}, ErrorCode.INVALID),
        ({"params": ["bx_0123456789abcdef"]}, ErrorCode.INVALID),
        ({"params": {"box_id": BOX, "force": True}}, ErrorCode.INVALID),
        ({"method": "box.format_disk"}, ErrorCode.DENIED),
        ({"method": "__import__"}, ErrorCode.DENIED),
    ],
)
def test_spoke_validates_params_and_answers_with_typed_error(
    changes: dict[str, object], code: ErrorCode
) -> None:
    pair = open_pair()
    (got,) = _tampered(pair, **changes)
    assert isinstance(got, ev.ProtocolViolation) and not got.fatal
    assert pair.spoke.in_flight() == 0
    (failed,) = pair.to_hub()
    assert isinstance(failed, ev.CallFailed)
    assert failed.error.code is code
    assert pair.hub.in_flight() == 0
    # the connection is still usable
    call_id, _ = pair.call("spoke.ping", {})
    pair.spoke.send_result(call_id, {})
    assert isinstance(pair.to_hub()[0], ev.ResponseReceived)


def test_spoke_refuses_duplicate_call_id_in_flight() -> None:
    pair = open_pair()
    data = frame(id=4, method="spoke.ping", params={})
    assert isinstance(pair.spoke.receive_data(data)[0], ev.RequestReceived)
    (dup,) = pair.spoke.receive_data(data)
    assert isinstance(dup, ev.ProtocolViolation) and "already in flight" in dup.message
    (reply,) = frames(pair.spoke)
    assert reply["id"] == 4 and error_kind(reply) == "invalid"
    assert pair.spoke.in_flight() == 1


def test_spoke_validates_its_own_result() -> None:
    pair = open_pair()
    call_id, _ = pair.call("box.destroy", {"box_id": BOX})
    with pytest.raises(RemoteError) as err:
        pair.spoke.send_result(call_id, {"existed": "maybe"})
    assert err.value.code is ErrorCode.INTERNAL
    assert "box.destroy result" in err.value.message
    assert frames(pair.spoke) == []
    # the call is not lost: the spoke can still answer it with an error
    pair.spoke.send_error(call_id, err.value)
    (failed,) = pair.to_hub()
    assert isinstance(failed, ev.CallFailed) and failed.error.code is ErrorCode.INTERNAL
    assert pair.hub.in_flight() == 0 and pair.spoke.in_flight() == 0


def test_hub_validates_results_it_receives() -> None:
    pair = open_pair()
    call_id, _ = pair.call("box.stats", {"box_id": BOX})
    (failed,) = pair.hub.receive_data(frame(id=call_id, result={"pids": "many"}))
    assert isinstance(failed, ev.CallFailed)
    assert failed.error.code is ErrorCode.INTERNAL
    assert "box.stats result" in failed.error.message
    assert pair.hub.in_flight() == 0


def test_send_result_or_error_for_unknown_call_sends_nothing() -> None:
    pair = open_pair()
    call_id, _ = pair.call("spoke.ping", {})
    pair.spoke.send_result(call_id, {})
    assert len(frames(pair.spoke)) == 1
    pair.spoke.send_result(call_id, {})  # already answered
    pair.spoke.send_error(call_id, RemoteError(ErrorCode.INTERNAL, "late"))
    pair.spoke.send_result(999, {})
    assert frames(pair.spoke) == []


def test_replies_for_unknown_ids_are_ignored() -> None:
    pair = open_pair()
    assert pair.hub.receive_data(frame(id=77, result={})) == []
    assert pair.hub.receive_data(frame(id=77, error={"message": "x"})) == []
    assert frames(pair.hub) == []


def test_hub_max_calls_refuses_locally() -> None:
    pair = open_pair(Limits(max_calls=2))
    pair.hub.send_request("spoke.ping", {})
    pair.hub.send_request("spoke.ping", {})
    frames(pair.hub)
    with pytest.raises(RemoteError) as err:
        pair.hub.send_request("spoke.ping", {})
    assert err.value.code is ErrorCode.BUSY
    assert frames(pair.hub) == []


def test_spoke_max_calls_answers_busy() -> None:
    pair = open_pair(Limits(max_calls=10), spoke_limits=Limits(max_calls=1))
    pair.hub.send_request("spoke.ping", {})
    second = pair.hub.send_request("spoke.ping", {})
    got = pair.to_spoke()
    assert [type(e) for e in got] == [ev.RequestReceived]
    (failed,) = pair.to_hub()
    assert isinstance(failed, ev.CallFailed) and failed.call_id == second
    assert failed.error.code is ErrorCode.BUSY
    assert pair.spoke.in_flight() == 1


def test_hub_refuses_requests_from_the_spoke() -> None:
    pair = open_pair()
    (got,) = pair.hub.receive_data(frame(id=3, method="box.list", params={}))
    assert isinstance(got, ev.ProtocolViolation)
    (reply,) = frames(pair.hub)
    assert reply["id"] == 3 and error_kind(reply) == "denied"
    assert pair.spoke.receive_data(json.dumps(reply)) == []  # no ping-pong


def test_notifications_in_both_directions() -> None:
    pair = open_pair()
    beat = messages.SpokeHeartbeat(boxes=2, load=0.5, workstreams=1)
    pair.spoke.notify("spoke.heartbeat", beat)
    assert pair.to_hub() == [ev.NotificationReceived("spoke.heartbeat", beat)]
    event = messages.WsEvent(ws_id="ws_0123456789abcdef", sseq=1, kind="text", data={"t": "hi"})
    pair.spoke.notify("ws.event", event)
    assert pair.to_hub() == [ev.NotificationReceived("ws.event", event)]
    ack = messages.WsEventAck(ws_id="ws_0123456789abcdef", sseq=1)
    pair.hub.notify("ws.ack", ack)
    pair.hub.notify("hub.heartbeat", messages.HubHeartbeat())
    got = pair.to_spoke()
    assert got == [
        ev.NotificationReceived("ws.ack", ack),
        ev.NotificationReceived("hub.heartbeat", messages.HubHeartbeat()),
    ]


@pytest.mark.parametrize(
    ("to_hub", "method", "params"),
    [
        (True, "hub.heartbeat", {}),  # wrong direction
        (False, "spoke.heartbeat", {}),
        (True, "ws.event", {"ws_id": "ws_0123456789abcdef", "sseq": 0, "kind": "x"}),
        (True, "spoke.heartbeat", {"boxes": "lots"}),
        (True, "spoke.heartbeat", [1, 2]),
        (False, "os.system", {}),
    ],
)
def test_bad_notifications_are_violations(to_hub: bool, method: str, params: object) -> None:
    pair = open_pair()
    conn = pair.hub if to_hub else pair.spoke
    (got,) = conn.receive_data(frame(method=method, params=params))
    assert isinstance(got, ev.ProtocolViolation) and not got.fatal
    assert method in got.message
    (reply,) = frames(conn)
    assert error_kind(reply) == "invalid"


def test_notify_before_open_sends_nothing() -> None:
    pair = open_pair()
    pair.hub.connection_lost("bye")
    pair.hub.notify("hub.heartbeat", messages.HubHeartbeat())
    assert frames(pair.hub) == []
