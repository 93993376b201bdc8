"""Typed error codes: wire round trips, unknown codes, and errors carried by calls."""

from __future__ import annotations

import json
from typing import Any

import pytest

from protocol import events as ev
from protocol.errors import _JSONRPC_CODES, HTTP_STATUS, ErrorCode, RemoteError
from tests.protocol.helpers import frame, frames, open_pair

DESIGN_CODES = {"not_found", "invalid", "denied", "busy", "timeout", "unavailable", "internal"}


def test_design_codes_exist() -> None:
    assert DESIGN_CODES <= {c.value for c in ErrorCode}


def test_every_code_has_a_distinct_jsonrpc_code_and_an_http_status() -> None:
    assert set(_JSONRPC_CODES) == set(ErrorCode)
    assert len(set(_JSONRPC_CODES.values())) == len(ErrorCode)
    assert set(HTTP_STATUS) == set(ErrorCode)
    assert all(400 <= s < 600 for s in HTTP_STATUS.values())
    assert HTTP_STATUS[ErrorCode.NOT_FOUND] == 404 and HTTP_STATUS[ErrorCode.INTERNAL] == 500


@pytest.mark.parametrize("code", list(ErrorCode))
def test_wire_round_trip(code: ErrorCode) -> None:
    err = RemoteError(code, f"something {code.value} happened")
    wire = err.to_wire()
    assert wire["data"] == {"kind": code.value}
    assert isinstance(wire["code"], int) and wire["code"] == _JSONRPC_CODES[code]
    assert wire["message"] == f"something {code.value} happened"
    back = RemoteError.from_wire(json.loads(json.dumps(wire)))
    assert back.code is code
    assert back.message == err.message


@pytest.mark.parametrize("code", list(ErrorCode))
def test_every_code_crosses_a_connection(code: ErrorCode) -> None:
    pair = open_pair()
    call_id, _ = pair.call("spoke.ping", {})
    pair.spoke.send_error(call_id, RemoteError(code, "why"))
    (failed,) = pair.to_hub()
    assert isinstance(failed, ev.CallFailed) and failed.call_id == call_id
    assert failed.error.code is code and failed.error.message == "why"


@pytest.mark.parametrize(
    "wire",
    [
        {"code": -32601, "message": "Method not found"},  # no data
        {"code": 1, "message": "m", "data": {"kind": "exploded"}},
        {"code": 1, "message": "m", "data": {"kind": None}},
        {"code": 1, "message": "m", "data": "not_found"},
        {"code": 1, "message": "m", "data": {"kind": "NOT_FOUND"}},
    ],
)
def test_unknown_kind_becomes_internal(wire: dict[str, Any]) -> None:
    err = RemoteError.from_wire(wire)
    assert err.code is ErrorCode.INTERNAL
    assert err.message == wire["message"]


@pytest.mark.parametrize("obj", [None, "boom", 42, ["not_found"]])
def test_malformed_error_object(obj: object) -> None:
    err = RemoteError.from_wire(obj)
    assert err.code is ErrorCode.INTERNAL
    assert err.message.startswith("malformed error object")


def test_missing_message_is_empty_and_non_string_message_is_stringified() -> None:
    assert RemoteError.from_wire({"data": {"kind": "busy"}}).message == ""
    err = RemoteError.from_wire({"message": 12, "data": {"kind": "busy"}})
    assert err.code is ErrorCode.BUSY and err.message == "12"


def test_unknown_code_through_a_connection() -> None:
    pair = open_pair()
    call_id, _ = pair.call("spoke.ping", {})
    wire = {"code": -1, "message": "new kind", "data": {"kind": "quota_exceeded"}}
    (failed,) = pair.hub.receive_data(frame(id=call_id, error=wire))
    assert isinstance(failed, ev.CallFailed)
    assert failed.error.code is ErrorCode.INTERNAL and failed.error.message == "new kind"
    assert frames(pair.hub) == []


def test_code_given_as_string_and_bad_code() -> None:
    assert RemoteError("not_found", "x").code is ErrorCode.NOT_FOUND
    with pytest.raises(ValueError):
        RemoteError("nope", "x")


def test_str_and_repr() -> None:
    err = RemoteError(ErrorCode.BUSY, "queue full")
    assert str(err) == "busy: queue full"
    assert repr(err) == "RemoteError('busy', 'queue full')"
    assert isinstance(err, Exception)
