"""hello -> auth -> accepted/rejected, and what is refused before the handshake ends."""

from __future__ import annotations

import base64

import pytest

from protocol import events as ev
from protocol import messages
from protocol.connection import Limits, LocalProtocolError, State
from protocol.errors import ErrorCode, RemoteError
from tests.protocol.helpers import (
    AUTH,
    AUTH_RESULT,
    BOX,
    CHALLENGE,
    error_kind,
    frame,
    frames,
    new_pair,
    open_pair,
)


def test_hello_carries_versions_challenge_server_and_limits() -> None:
    limits = Limits(max_frame_bytes=5000, max_calls=7, heartbeat_s=2.5, stale_after_s=9.0)
    pair = new_pair(limits)
    pair.hub.send_hello(CHALLENGE, "hub-x")
    (hello,) = frames(pair.hub)
    assert hello["jsonrpc"] == "2.0"
    assert hello["method"] == "hello"
    assert "id" not in hello  # a notification
    p = hello["params"]
    assert p["versions"] == list(messages.SUPPORTED_VERSIONS)
    assert messages.PROTOCOL_VERSION in p["versions"]
    assert base64.b64decode(p["challenge"]) == CHALLENGE
    assert p["server"] == "hub-x"
    assert p["limits"] == {
        "max_frame_bytes": 5000,
        "max_calls": 7,
        "heartbeat_s": 2.5,
        "stale_after_s": 9.0,
    }


def test_spoke_receives_hello_as_event() -> None:
    pair = new_pair(Limits(heartbeat_s=4.0))
    pair.hub.send_hello(CHALLENGE, "hub-x")
    (got,) = pair.to_spoke()
    assert isinstance(got, ev.HelloReceived)
    assert got.versions == messages.SUPPORTED_VERSIONS
    assert got.challenge == CHALLENGE
    assert got.limits["heartbeat_s"] == 4.0
    assert pair.spoke.state is State.HANDSHAKE


def test_full_handshake_opens_both_sides() -> None:
    pair = new_pair()
    pair.hub.send_hello(CHALLENGE, "hub")
    pair.to_spoke()
    pair.spoke.send_auth(AUTH)
    (auth,) = frames(pair.spoke)
    assert auth["method"] == "auth" and isinstance(auth["id"], int)
    (req,) = pair.hub.receive_data(frame(**auth))
    assert isinstance(req, ev.AuthRequested)
    assert req.call_id == auth["id"]
    assert req.params == AUTH
    assert isinstance(req.params, messages.AuthParams)
    assert req.params.protocol == messages.PROTOCOL_VERSION
    assert req.params.caps == ["stream", "cancel", "workstreams"]
    assert pair.hub.state is State.HANDSHAKE  # not open until the hub accepts
    pair.hub.accept_auth(AUTH_RESULT)
    assert pair.hub.state is State.OPEN
    (reply,) = frames(pair.hub)
    assert reply["id"] == auth["id"] and reply["result"]["session"] == "sess-1"
    (done,) = pair.spoke.receive_data(frame(**reply))
    assert done == ev.Authenticated(AUTH_RESULT)
    assert pair.spoke.state is State.OPEN


def test_rejected_auth_closes_both_sides_with_typed_error() -> None:
    pair = new_pair()
    pair.hub.send_hello(CHALLENGE, "hub")
    pair.to_spoke()
    pair.spoke.send_auth(AUTH)
    pair.to_hub()
    pair.hub.reject_auth(RemoteError(ErrorCode.DENIED, "token already used"))
    assert pair.hub.state is State.CLOSED
    (got,) = pair.to_spoke()
    assert isinstance(got, ev.AuthRejected)
    assert got.error.code is ErrorCode.DENIED
    assert got.error.message == "token already used"
    assert pair.spoke.state is State.CLOSED
    with pytest.raises(RemoteError) as err:
        pair.hub.send_request("box.list", {})
    assert err.value.code is ErrorCode.UNAVAILABLE


def test_malformed_auth_result_is_rejection() -> None:
    pair = new_pair()
    pair.hub.send_hello(CHALLENGE, "hub")
    pair.to_spoke()
    pair.spoke.send_auth(AUTH)
    (auth,) = frames(pair.spoke)
    (got,) = pair.spoke.receive_data(frame(id=auth["id"], result={"session": 5}))
    assert isinstance(got, ev.AuthRejected)
    assert got.error.code is ErrorCode.INTERNAL
    assert pair.spoke.state is State.CLOSED


def test_hub_cannot_send_requests_during_handshake() -> None:
    pair = new_pair()
    with pytest.raises(RemoteError) as err:
        pair.hub.send_request("box.list", {})
    assert err.value.code is ErrorCode.UNAVAILABLE
    pair.hub.send_hello(CHALLENGE, "hub")
    pair.to_spoke()
    pair.spoke.send_auth(AUTH)
    pair.to_hub()  # auth requested but not yet accepted
    with pytest.raises(RemoteError):
        pair.hub.send_request("box.list", {})
    assert frames(pair.hub) == []


def test_spoke_refuses_request_before_handshake() -> None:
    pair = new_pair()
    (got,) = pair.spoke.receive_data(frame(id=9, method="box.list", params={}))
    assert isinstance(got, ev.ProtocolViolation) and got.fatal
    (reply,) = frames(pair.spoke)
    assert reply["id"] == 9 and error_kind(reply) == "invalid"
    assert pair.spoke.state is State.HANDSHAKE


@pytest.mark.parametrize(
    "data",
    [
        frame(id=1, method="box.destroy", params={"box_id": BOX}),
        frame(id=1, method="spoke.heartbeat", params={}),
    ],
)
def test_hub_refuses_anything_but_auth_first(data: str) -> None:
    pair = new_pair()
    (got,) = pair.hub.receive_data(data)
    assert isinstance(got, ev.ProtocolViolation) and got.fatal
    assert "auth" in got.message
    (reply,) = frames(pair.hub)
    assert reply["id"] == 1 and error_kind(reply) == "invalid"


def test_hub_refuses_second_auth_while_first_pending() -> None:
    pair = new_pair()
    first = pair.hub.receive_data(frame(id=1, method="auth", params=AUTH.model_dump()))
    assert isinstance(first[0], ev.AuthRequested)
    (again,) = pair.hub.receive_data(frame(id=2, method="auth", params=AUTH.model_dump()))
    assert isinstance(again, ev.ProtocolViolation) and again.fatal


@pytest.mark.parametrize(
    "params",
    [
        None,
        {**AUTH.model_dump(), "name": "Bad Name!"},
        {**AUTH.model_dump(), "name": "spoke-1\n"},
        {**AUTH.model_dump(), "mode": "steal"},
        {**AUTH.model_dump(), "unexpected": 1},
        {**AUTH.model_dump(), "signature": "x" * 500},
    ],
)
def test_bad_auth_params_are_fatal_violations(params: object) -> None:
    pair = new_pair()
    (got,) = pair.hub.receive_data(frame(id=1, method="auth", params=params))
    assert isinstance(got, ev.ProtocolViolation) and got.fatal
    assert "bad auth request" in got.message
    (reply,) = frames(pair.hub)
    assert reply["id"] == 1 and error_kind(reply) == "invalid"


@pytest.mark.parametrize(
    "params",
    [
        {"versions": [1], "challenge": "!!not base64!!", "server": "h"},
        {"versions": [1], "server": "h"},
        {"versions": "one", "challenge": "", "server": "h"},
        "hello",
    ],
)
def test_malformed_hello_is_fatal(params: object) -> None:
    pair = new_pair()
    (got,) = pair.spoke.receive_data(frame(method="hello", params=params))
    assert isinstance(got, ev.ProtocolViolation) and got.fatal
    assert got.message == "malformed hello"


def test_unexpected_notifications_during_handshake() -> None:
    pair = new_pair()
    hello = frame(method="hello", params={"versions": [1], "challenge": "", "server": "x"})
    (got,) = pair.hub.receive_data(hello)  # only the spoke accepts a hello
    assert isinstance(got, ev.ProtocolViolation) and got.fatal
    for conn in (pair.hub, pair.spoke):
        (chunk,) = conn.receive_data(frame(method="$/chunk", params={"id": 1, "seq": 0}))
        assert isinstance(chunk, ev.ProtocolViolation) and chunk.fatal


def test_spoke_cannot_issue_verbs() -> None:
    pair = open_pair()
    with pytest.raises(LocalProtocolError, match="can't send_request on a spoke"):
        pair.spoke.send_request("box.list", {})
    assert frames(pair.spoke) == []


def test_methods_used_out_of_turn_say_so_h11_style() -> None:
    """Misuse by the program driving a connection is a LocalProtocolError naming what and
    the state, raised whatever ``python -O`` does to asserts; nothing is sent."""
    pair = open_pair()
    with pytest.raises(LocalProtocolError, match="can't send_auth in state open"):
        pair.spoke.send_auth(AUTH)
    with pytest.raises(LocalProtocolError, match="can't send_hello in state open"):
        pair.hub.send_hello(CHALLENGE, "hub")
    fresh = new_pair()
    with pytest.raises(LocalProtocolError, match="can't accept_auth before an auth request"):
        fresh.hub.accept_auth(AUTH_RESULT)
    fresh.hub.send_hello(CHALLENGE, "hub")
    with pytest.raises(LocalProtocolError, match="can't send_hello twice"):
        fresh.hub.send_hello(CHALLENGE, "hub")
    fresh.hub.data_to_send()
    fresh.spoke.send_auth(AUTH)
    with pytest.raises(LocalProtocolError, match="can't send_auth twice"):
        fresh.spoke.send_auth(AUTH)
    assert frames(pair.hub) == [] and frames(pair.spoke) == []
    assert isinstance(LocalProtocolError("x"), RemoteError)  # callers that catch RemoteError still do


def test_handshake_timeout_via_fake_clock() -> None:
    pair = new_pair(Limits(handshake_timeout_s=5.0))
    pair.hub.send_hello(CHALLENGE, "hub")
    pair.clock.advance(5.0)
    assert pair.hub.check_timers() == []  # exactly at the limit: not yet
    assert pair.spoke.check_timers() == []
    pair.clock.advance(0.01)
    assert pair.hub.check_timers() == [ev.HandshakeTimedOut()]
    assert pair.spoke.check_timers() == [ev.HandshakeTimedOut()]
    assert pair.hub.state is State.CLOSED
    assert pair.hub.check_timers() == []  # reported once


def test_handshake_timeout_counts_from_creation_not_last_frame() -> None:
    pair = new_pair(Limits(handshake_timeout_s=5.0))
    pair.hub.send_hello(CHALLENGE, "hub")
    pair.clock.advance(4.0)
    pair.to_spoke()
    pair.clock.advance(1.5)  # 5.5 s since the connection started
    assert pair.spoke.check_timers() == [ev.HandshakeTimedOut()]


def test_open_connection_never_times_out_its_handshake() -> None:
    pair = open_pair(Limits(handshake_timeout_s=1.0, stale_after_s=100.0))
    pair.clock.advance(50.0)
    assert pair.hub.check_timers() == []
    assert pair.spoke.check_timers() == []
    assert pair.hub.state is State.OPEN


@pytest.mark.parametrize("field,value", [("labels", ["gpu\x1b[31m"]), ("labels", ["UPPER"]),
                                          ("models", ["local\x1b]0;x\x07"]), ("models", [""])])
def test_labels_and_models_are_names_not_terminal_escapes(field: str, value: list[str]) -> None:
    pair = new_pair()
    pair.hub.send_hello(CHALLENGE, "hub")
    pair.to_spoke()
    params = AUTH.model_dump()
    params[field] = value
    (event,) = pair.hub.receive_data(frame(id=1, method="auth", params=params))
    assert isinstance(event, ev.ProtocolViolation) and event.fatal and field in event.message
