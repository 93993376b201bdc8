"""A hypothesis fuzz of the frame decoder and of verb validation: whatever a peer sends, a
connection answers with events and typed errors, never an exception.

Properties (both ends, in the handshake and once open, with calls and streams in flight):

- ``receive_data`` of any text, bytes, JSON value or JSON-RPC-shaped frame (alone or in a
  batch) returns a list of :class:`protocol.events.Event`; every frame the connection queues
  in reply is a JSON-RPC 2.0 object whose error (if any) carries a typed kind; a failed call
  fails with a typed code; every string an event hands the application can be encoded as
  UTF-8 (a lone surrogate from a ``\\ud800`` escape would otherwise reach SQLite and fail
  there, untyped).
- ``parse_params`` / ``parse_result`` of any JSON for every verb in the table return the model
  or raise a :class:`RemoteError` (``invalid`` for params, ``internal`` for results); a model
  that validates survives its own round trip over the wire (what the hub sends, the spoke
  accepts).

Bounded and reproducible: a fixed number of examples per property, no deadline (a slow CI
machine never fails a test on time), ``derandomize`` so every run tries the same inputs, no
example database. What the fuzz found is kept below as plain regression tests.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from protocol import events as ev
from protocol import messages
from protocol.connection import Connection, Limits, Role, State
from protocol.errors import ErrorCode, RemoteError
from protocol.sides import HubConnection, SpokeConnection, for_role
from protocol.verbs import VERBS, parse_params, parse_result
from tests.protocol.helpers import SAMPLES, FakeClock, frame, open_pair

FUZZ = settings(max_examples=300, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
KINDS = {code.value for code in ErrorCode}

# --------------------------------------------------------------------------- strategies
# Text as a peer's JSON may carry it: any code point, lone surrogates included (json.dumps
# writes them as \udXXX escapes, which is how they reach a decoder).
any_text = (st.text(alphabet=st.characters(codec=None, exclude_categories=()), max_size=40)
            | st.text(alphabet=st.sampled_from("a\u00e9\x00\ud800\udfff\U0001f600"), max_size=4))
scalars = (st.none() | st.booleans() | st.integers() | st.integers(-3, 40)
           | st.floats(allow_nan=True, allow_infinity=True) | any_text)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(any_text, inner, max_size=4),
    max_leaves=16,
)
METHODS = [*VERBS, *messages.FROM_SPOKE, *messages.FROM_HUB, "$/chunk", "$/ack", "$/cancel",
           "auth", "hello"]
ids = st.none() | st.integers(-1, 8) | st.integers() | st.booleans() | st.floats() | any_text


# A valid params object of each notification (those not listed: ``{}`` is valid for them).
NOTIFICATIONS: dict[str, dict[str, Any]] = {
    **{name: {} for name in (*messages.FROM_SPOKE, *messages.FROM_HUB)},
    "ws.event": {"ws_id": "ws_0123456789abcdef", "sseq": 1, "kind": "text", "data": {"t": "hi"}},
    "ws.ack": {"ws_id": "ws_0123456789abcdef", "sseq": 1},
    "spoke.heartbeat": {"boxes": 1, "load": 0.5, "extra": {"a": 1}},
}
SAMPLE_AUTH = {"protocol": 1, "mode": "enroll", "name": "spoke-1", "public_key": "cHVi",
               "signature": "c2ln", "token_id": "tok_1", "token_secret": "s"}


@st.composite
def params_for(draw: st.DrawFn, method: str) -> Any:
    """Params for ``method``: a valid sample, mutated (keys dropped, replaced or added), or
    any JSON at all."""
    base: dict[str, Any]
    if method in SAMPLES:
        base = dict(SAMPLES[method][0])
    elif method in ("$/chunk", "$/ack", "$/cancel"):
        base = {"id": draw(st.integers(0, 6)), "seq": draw(st.integers(-1, 20)),
                "stream": "stdout", "data": draw(st.sampled_from(["aGk=", "", "!!", "aGk"])),
                "eof": False}
    elif method in NOTIFICATIONS:
        base = dict(NOTIFICATIONS[method])
    elif method == "hello":
        base = {"versions": [1], "challenge": "Y2g=", "server": "hub", "limits": {}}
    elif method == "auth":
        base = dict(SAMPLE_AUTH)
    else:
        base = {}
    mode = draw(st.integers(0, 3))
    if mode == 0:
        return draw(json_values)
    for key in draw(st.lists(st.sampled_from(sorted(base) or ["x"]), max_size=3)):
        if draw(st.booleans()):
            base.pop(key, None)
        else:
            base[key] = draw(json_values)
    if mode == 3:
        base[draw(any_text)] = draw(json_values)
    return base


@st.composite
def rpc_frames(draw: st.DrawFn) -> dict[str, Any]:
    """A JSON-RPC-shaped object: mostly right, wrong in the ways a peer could be."""
    out: dict[str, Any] = {"jsonrpc": draw(st.just("2.0") | scalars)}
    shape = draw(st.sampled_from(["request", "notification", "result", "error", "any"]))
    if shape in ("request", "notification"):
        method = draw(st.sampled_from(METHODS) | any_text)
        out["method"] = method
        out["params"] = draw(params_for(method))
        if shape == "request":
            out["id"] = draw(ids)
            if draw(st.booleans()):
                out["timeout_ms"] = draw(json_values)
    elif shape == "result":
        out["id"] = draw(ids)
        out["result"] = draw(json_values | st.sampled_from([r for _, r in SAMPLES.values()]))
    elif shape == "error":
        out["id"] = draw(ids)
        out["error"] = draw(json_values | st.fixed_dictionaries(
            {"code": json_values, "message": json_values, "data": json_values | st.fixed_dictionaries(
                {"kind": st.sampled_from(sorted(KINDS)) | json_values})}))
    else:
        out.update(draw(st.dictionaries(st.sampled_from(["id", "method", "params", "result", "error"])
                                        | any_text, json_values, max_size=4)))
    return out


def _encode(value: Any) -> str:
    return json.dumps(value)  # NaN/Infinity as JSON's extensions, surrogates as escapes


wire_data = (
    rpc_frames().map(_encode)
    | st.lists(rpc_frames(), min_size=1, max_size=4).map(_encode)  # a batch (protocol/link.py)
    | json_values.map(_encode)
    | st.text(alphabet=st.characters(codec="utf-8"), max_size=200)
    | st.binary(max_size=200)
)


# --------------------------------------------------------------------------- invariants
def _strings(value: Any) -> list[str]:
    """Every string in an event's field, keys included."""
    if isinstance(value, BaseModel):
        value = value.model_dump()
    if isinstance(value, RemoteError):
        value = value.message
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in (*_strings(k), *_strings(v))]
    if isinstance(value, list | tuple):
        return [s for v in value for s in _strings(v)]
    return []


def check_events(events: list[ev.Event]) -> None:
    assert isinstance(events, list)
    for event in events:
        assert isinstance(event, ev.Event), event
        for name in vars(event):
            for text in _strings(getattr(event, name)):
                text.encode("utf-8")  # no lone surrogate reaches the application
        if isinstance(event, ev.CallFailed | ev.AuthRejected):
            assert isinstance(event.error, RemoteError) and event.error.code.value in KINDS


def check_output(conn: Connection) -> None:
    for data in conn.data_to_send():
        out = json.loads(data)
        assert isinstance(out, dict) and out["jsonrpc"] == "2.0"
        if "error" in out:
            assert out["error"]["data"]["kind"] in KINDS


def _with_calls_in_flight() -> tuple[HubConnection, SpokeConnection]:
    """An open pair with calls of every stream direction in flight both ways (ids 1-4), so
    fuzzed results, chunks and acks meet real calls."""
    pair = open_pair(Limits(max_violations=1_000_000))
    for verb in ("box.exec", "box.get_file", "box.put_file", "spoke.ping"):
        pair.call(verb, SAMPLES[verb][0])
    assert pair.hub.send_chunk(3, "stdin", b"up")  # box.put_file streams up
    pair.to_spoke()
    return pair.hub, pair.spoke


def _fresh(side: str, opened: bool) -> Connection:
    if opened:
        hub, spoke = _with_calls_in_flight()
        return hub if side == "hub" else spoke
    return for_role(Role.HUB if side == "hub" else Role.SPOKE, FakeClock())


# --------------------------------------------------------------------------- properties
@FUZZ
@given(side=st.sampled_from(["hub", "spoke"]), opened=st.booleans(),
       stream=st.lists(wire_data, min_size=1, max_size=6))
def test_any_frames_give_events_and_typed_errors_never_an_exception(
        side: str, opened: bool, stream: list[str | bytes]) -> None:
    conn = _fresh(side, opened)
    if side == "hub" and not opened:
        assert isinstance(conn, HubConnection)
        conn.send_hello(b"challenge", "hub")
        conn.data_to_send()
    for data in stream:
        check_events(conn.receive_data(data))
        check_output(conn)
        check_events(conn.check_timers())
    if conn.state is State.OPEN and isinstance(conn, HubConnection):
        try:  # still usable: a new call can be made (unless every slot is taken)
            conn.send_request("spoke.ping", {})
        except RemoteError as err:
            assert err.code is ErrorCode.BUSY


@FUZZ
@given(side=st.sampled_from(["hub", "spoke"]), data=st.data())
def test_any_first_frame_of_a_handshake_is_an_event_or_fatal(side: str, data: st.DataObject) -> None:
    """The first frame each end waits for (the spoke: ``hello``; the hub: ``auth``), fuzzed:
    the expected event, or a fatal violation (a handshake allows no second chance)."""
    conn = _fresh(side, opened=False)
    method, expected = ("auth", ev.AuthRequested) if side == "hub" else ("hello", ev.HelloReceived)
    params = data.draw(params_for(method))
    raw = frame(id=1, method=method, params=params) if side == "hub" else frame(
        method=method, params=params)
    events = conn.receive_data(raw)
    check_events(events)
    check_output(conn)
    (got,) = events
    assert isinstance(got, expected) or (isinstance(got, ev.ProtocolViolation) and got.fatal)


@FUZZ
@given(verb=st.sampled_from(sorted(VERBS)), data=st.data())
def test_params_of_every_verb_validate_or_fail_typed(verb: str, data: st.DataObject) -> None:
    raw = data.draw(params_for(verb))
    try:
        model = parse_params(VERBS[verb], raw)
    except RemoteError as err:
        assert err.code is ErrorCode.INVALID and err.message.startswith(verb)
        return
    assert isinstance(model, VERBS[verb].params)
    # What the hub sends (the model as JSON), the spoke accepts as the same model.
    wire = json.loads(_encode(model.model_dump()))
    again = parse_params(VERBS[verb], wire)
    assert _encode(again.model_dump()) == _encode(model.model_dump())


@FUZZ
@given(verb=st.sampled_from(sorted(VERBS)), result=json_values | st.sampled_from(
    [r for _, r in SAMPLES.values()]))
def test_results_of_every_verb_validate_or_fail_typed(verb: str, result: Any) -> None:
    try:
        model = parse_result(VERBS[verb], result)
    except RemoteError as err:
        assert err.code is ErrorCode.INTERNAL
        return
    assert isinstance(model, VERBS[verb].result)


@FUZZ
@given(verb=st.sampled_from(sorted(VERBS)), data=st.data())
def test_a_spoke_answers_any_request_with_an_event_or_a_typed_error(
        verb: str, data: st.DataObject) -> None:
    _hub, spoke = _with_calls_in_flight()
    request = frame(id=100, method=verb, params=data.draw(params_for(verb)),
                    timeout_ms=data.draw(json_values))
    events = spoke.receive_data(request)
    check_events(events)
    replies = [json.loads(f) for f in spoke.data_to_send()]
    (event,) = events
    if isinstance(event, ev.RequestReceived):
        assert replies == [] and event.verb == verb
    else:  # refused: one typed error to that call, nothing else
        assert isinstance(event, ev.ProtocolViolation)
        assert [r["id"] for r in replies] == [100]
        assert replies[0]["error"]["data"]["kind"] in ("invalid", "denied")


# ------------------------------------------------------------- what the fuzz found (kept)
@pytest.mark.parametrize("side", ["hub", "spoke"])
@pytest.mark.parametrize("data", [
    "[" * 100_000,
    '{"a":' * 50_000 + "1" + "}" * 50_000,
    '{"jsonrpc": "2.0", "method": "ws.event", "params": {"data": ' + "[" * 30_000 + "]" * 30_000 + "}}",
    # Parseable, but deeper than any reader of it could serialise on the event loop's stack.
    '{"jsonrpc": "2.0", "method": "ws.event", "params": {"ws_id": "ws_0123456789abcdef", '
    '"sseq": 1, "kind": "k", "data": {"a": ' + "[" * 980 + "]" * 980 + "}}}",
])
def test_frames_nested_too_deeply_are_malformed_not_a_recursion_error(side: str, data: str) -> None:
    """Found by the fuzz: json.loads raised RecursionError (not a ValueError) out of
    ``receive_data`` for ``[[[[…`` deeper than the interpreter's stack."""
    pair = open_pair()
    conn = pair.hub if side == "hub" else pair.spoke
    (got,) = conn.receive_data(data)
    assert isinstance(got, ev.ProtocolViolation) and not got.fatal
    assert "nested too deeply" in got.message
    check_output(conn)


def test_a_frame_may_nest_as_deep_as_real_traffic_does() -> None:
    pair = open_pair()
    nested: Any = "leaf"
    for _ in range(40):
        nested = {"x": [nested]}
    (got,) = pair.hub.receive_data(frame(method="ws.event", params={
        "ws_id": "ws_0123456789abcdef", "sseq": 1, "kind": "tool_call", "data": {"args": nested}}))
    assert isinstance(got, ev.NotificationReceived)


def test_a_hello_with_a_non_ascii_challenge_is_malformed_not_a_value_error() -> None:
    """Found by the fuzz: base64 of a non-ASCII str raises a plain ValueError, which the
    spoke's hello parsing did not catch (it caught only binascii.Error)."""
    conn = SpokeConnection(FakeClock())
    (got,) = conn.receive_data(frame(method="hello", params={
        "versions": [1], "challenge": "\u00e9t\u00e9", "server": "hub"}))
    assert got == ev.ProtocolViolation("malformed hello", fatal=True)


@pytest.mark.parametrize("side", ["hub", "spoke"])
@pytest.mark.parametrize("escape", ["\\ud800", "\\uDFFF", "raw"])
def test_a_lone_surrogate_is_malformed_and_never_reaches_the_application(
        side: str, escape: str) -> None:
    """Found by the fuzz: ``"\\ud800"`` is valid JSON text but no valid Unicode string. In
    an unconstrained ``str`` field (a result's image name, a ``ws.ack``'s id) it passed the
    decoder, and SQLite would fail to store it with an untyped UnicodeEncodeError. A
    surrogate pair (an emoji written as two escapes) is fine."""
    pair = open_pair()
    hub_side = side == "hub"
    conn = pair.hub if hub_side else pair.spoke
    if hub_side:
        call_id, _ = pair.call("box.list", {})
        good = frame(id=call_id, result={"boxes": [
            {"box_id": "bx_0123456789abcdef", "image": "\U0001f600", "state": "up",
             "created_at": 1.0}]})
    else:
        good = frame(method="ws.ack", params={"ws_id": "ws_\U0001f600", "sseq": 1})
    assert "\\ud83d\\ude00" in good  # the emoji as two escapes: a valid pair
    bad = good.replace("\\ud83d\\ude00", "\ud800" if escape == "raw" else escape)
    (got,) = conn.receive_data(bad)
    assert got == ev.ProtocolViolation(
        "malformed frame: a string is not valid Unicode (a lone surrogate)")
    check_output(conn)
    (ok,) = conn.receive_data(good)
    assert isinstance(ok, ev.ResponseReceived if hub_side else ev.NotificationReceived)
    check_events([ok])
