"""Malformed and oversized frames: a typed error back, a violation event, and life goes on."""

from __future__ import annotations

import json

import pytest

from protocol import events as ev
from protocol.connection import Limits, Role, State
from protocol.sides import SpokeConnection, for_role
from tests.protocol.helpers import (
    FakeClock,
    Pair,
    error_kind,
    frame,
    frames,
    open_pair,
    pump,
)

BAD_FRAMES: list[str | bytes] = [
    "not json",
    "{",
    "",
    b"\xff\xfe\x00garbage",
    "[1, 2]",
    "42",
    '"a string"',
    "null",
    '{"id": 1, "result": {}}',  # no jsonrpc
    '{"jsonrpc": "1.0", "id": 1, "result": {}}',
    '{"jsonrpc": 2.0, "id": 1, "result": {}}',
    frame(id="1", result={}),
    frame(id=True, result={}),
    frame(id=1.5, result={}),
    frame(id=[1], method="spoke.ping"),
    frame(method=5, params={}),
    frame(id=1),  # neither method, result nor error
    frame(result={}),  # a reply without an id
]


def _assert_still_usable(pair: Pair) -> None:
    call_id, _ = pair.call("spoke.ping", {})
    pair.spoke.send_result(call_id, {})
    (resp,) = pair.to_hub()
    assert isinstance(resp, ev.ResponseReceived) and resp.call_id == call_id


@pytest.mark.parametrize("data", BAD_FRAMES)
@pytest.mark.parametrize("side", ["hub", "spoke"])
def test_bad_frame_gets_typed_error_and_connection_survives(side: str, data: str | bytes) -> None:
    pair = open_pair()
    conn = pair.hub if side == "hub" else pair.spoke
    (got,) = conn.receive_data(data)
    assert isinstance(got, ev.ProtocolViolation)
    assert not got.fatal
    assert "malformed frame" in got.message
    (reply,) = frames(conn)
    assert reply["jsonrpc"] == "2.0"
    assert error_kind(reply) == "invalid"
    assert reply["error"]["code"] == -32602
    assert reply["error"]["message"] == got.message
    assert conn.state is State.OPEN
    _assert_still_usable(pair)


def test_error_reply_to_a_bad_frame_does_not_echo_back_forever() -> None:
    pair = open_pair()
    pair.hub.receive_data("garbage")
    # the hub's frame-level error (id null) reaches the spoke, which must not answer it
    got = pair.to_spoke()
    assert got == [ev.ProtocolViolation("peer reported an error: invalid: malformed frame: not JSON")]
    assert frames(pair.spoke) == []
    assert pair.hub.data_to_send() == []
    _assert_still_usable(pair)


def test_peer_error_reports_do_not_count_as_our_violations() -> None:
    pair = open_pair(Limits(max_violations=1))
    for _ in range(5):
        pair.spoke.receive_data("garbage")
        pump(pair.spoke, pair.hub)
    (got,) = pair.hub.receive_data("garbage")  # the hub's own first real violation
    assert isinstance(got, ev.ProtocolViolation) and not got.fatal


def test_oversized_frame_is_refused_and_connection_survives() -> None:
    pair = open_pair(Limits(max_frame_bytes=300))
    big = frame(method="spoke.heartbeat", params={"extra": {"pad": "x" * 400}})
    (got,) = pair.hub.receive_data(big)
    assert isinstance(got, ev.ProtocolViolation) and not got.fatal
    assert "exceeds the limit of 300" in got.message
    assert str(len(big)) in got.message
    (reply,) = frames(pair.hub)
    assert error_kind(reply) == "invalid" and reply["id"] is None
    (got_bytes,) = pair.hub.receive_data(big.encode())
    assert isinstance(got_bytes, ev.ProtocolViolation)
    assert len(frames(pair.hub)) == 1
    _assert_still_usable(pair)


def _padded(size: int, char: str = "x") -> str:
    """A valid heartbeat frame of exactly ``size`` characters."""
    base = frame(method="spoke.heartbeat", params={"extra": {"pad": ""}})
    return base.replace('"pad": ""', '"pad": "' + char * (size - len(base)) + '"')


def test_frame_exactly_at_the_limit_is_accepted() -> None:
    pair = open_pair(Limits(max_frame_bytes=300))
    data = _padded(300)
    assert len(data.encode()) == 300
    (got,) = pair.hub.receive_data(data)
    assert isinstance(got, ev.NotificationReceived)
    (over,) = pair.hub.receive_data(_padded(301))
    assert isinstance(over, ev.ProtocolViolation)


def test_frame_limit_counts_bytes_not_characters() -> None:
    pair = open_pair(Limits(max_frame_bytes=300))
    data = _padded(250, "\u00e9")  # fewer than 300 characters, more than 300 bytes in UTF-8
    assert len(data) < 300 < len(data.encode())
    (got,) = pair.hub.receive_data(data)
    assert isinstance(got, ev.ProtocolViolation)
    assert "exceeds the limit of 300" in got.message


def test_too_many_violations_become_fatal() -> None:
    pair = open_pair(Limits(max_violations=3))
    results = [pair.hub.receive_data("junk")[0] for _ in range(5)]
    assert all(isinstance(e, ev.ProtocolViolation) for e in results)
    assert [e.fatal for e in results if isinstance(e, ev.ProtocolViolation)] == [
        False,
        False,
        False,
        True,
        True,
    ]


@pytest.mark.parametrize("role", list(Role))
def test_any_violation_during_handshake_is_fatal(role: Role) -> None:
    conn = for_role(role, FakeClock())
    (got,) = conn.receive_data("junk")
    assert isinstance(got, ev.ProtocolViolation) and got.fatal
    assert error_kind(frames(conn)[0]) == "invalid"


def test_peer_error_report_during_handshake_is_fatal_and_unanswered() -> None:
    conn = SpokeConnection(FakeClock())
    (got,) = conn.receive_data(frame(id=None, error={"message": "bad hello", "data": {"kind": "invalid"}}))
    assert got == ev.ProtocolViolation("peer reported an error: invalid: bad hello", fatal=True)
    assert frames(conn) == []


def test_no_error_frames_after_close() -> None:
    pair = open_pair()
    pair.hub.connection_lost("socket closed")
    (got,) = pair.hub.receive_data("junk")
    assert isinstance(got, ev.ProtocolViolation)
    assert frames(pair.hub) == []


@pytest.mark.parametrize(
    ("method", "params", "needle"),
    [
        ("$/chunk", {"id": "1", "seq": 0}, "id and seq must be integers"),
        ("$/chunk", {"id": 1}, "id and seq must be integers"),
        ("$/ack", {"id": 1, "seq": "3"}, "id and seq must be integers"),
        ("$/chunk", "not-an-object", "params must be an object"),
        ("$/cancel", None, "params must be an object"),
    ],
)
def test_malformed_stream_control(method: str, params: object, needle: str) -> None:
    pair = open_pair()
    (got,) = pair.hub.receive_data(frame(method=method, params=params))
    assert isinstance(got, ev.ProtocolViolation)
    assert needle in got.message
    assert error_kind(frames(pair.hub)[0]) == "invalid"


def test_error_frame_with_bad_error_object_still_fails_the_call() -> None:
    pair = open_pair()
    call_id, _ = pair.call("spoke.ping", {})
    (failed,) = pair.hub.receive_data(json.dumps({"jsonrpc": "2.0", "id": call_id, "error": 7}))
    assert isinstance(failed, ev.CallFailed)
    assert failed.error.code.value == "internal"
    assert "malformed error object" in failed.error.message
