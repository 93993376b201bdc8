"""``box.open`` and ``box.input`` (issue 14): what both ends refuse, with a typed error."""

from __future__ import annotations

from typing import Any

import pytest

from protocol.errors import ErrorCode, RemoteError
from protocol.verbs import BOX_INPUT, BOX_OPEN, MAX_INPUT_BYTES, VERBS, parse_params

BOX = "bx_0123456789abcdef"
CH = "ch_0123456789abcdef"


def test_the_channel_verbs_are_on_the_allowlist() -> None:
    assert VERBS["box.open"].stream == "down" and VERBS["box.open"].kind == "work"
    assert VERBS["box.input"].stream == "none" and VERBS["box.input"].kind == "control"


@pytest.mark.parametrize("params", [
    {"box_id": BOX, "channel_id": CH, "kind": "pty", "cmd": ["sh"]},
    {"box_id": BOX, "channel_id": CH, "kind": "pty", "cmd": ["bash", "-l"], "rows": 1,
     "cols": 1000, "env": {"TERM": "xterm"}, "workdir": "/workspace"},
    {"box_id": BOX, "channel_id": CH, "kind": "port", "port": 1},
    {"box_id": BOX, "channel_id": CH, "kind": "port", "port": 65535},
])
def test_good_opens_pass(params: dict[str, Any]) -> None:
    assert parse_params(BOX_OPEN, params).channel_id == CH


@pytest.mark.parametrize("params, field", [
    ({"box_id": BOX, "channel_id": CH, "kind": "port", "port": 0}, "port"),
    ({"box_id": BOX, "channel_id": CH, "kind": "port", "port": 65536}, "port"),
    ({"box_id": BOX, "channel_id": CH, "kind": "port"}, "port"),
    ({"box_id": BOX, "channel_id": CH, "kind": "port", "port": 80, "cmd": ["sh"]}, "port"),
    ({"box_id": BOX, "channel_id": CH, "kind": "pty"}, "cmd"),
    ({"box_id": BOX, "channel_id": CH, "kind": "pty", "cmd": ["sh"], "port": 80}, "cmd"),
    ({"box_id": BOX, "channel_id": CH, "kind": "pty", "cmd": ["a\x00b"]}, "NUL"),
    ({"box_id": BOX, "channel_id": CH, "kind": "pty", "cmd": ["sh"], "rows": 0}, "rows"),
    ({"box_id": BOX, "channel_id": CH, "kind": "pty", "cmd": ["sh"], "cols": 1001}, "cols"),
    ({"box_id": BOX, "channel_id": CH, "kind": "pty", "cmd": ["sh"], "workdir": "rel"}, "workdir"),
    ({"box_id": BOX, "channel_id": CH, "kind": "pty", "cmd": ["sh"], "env": {"A B": "1"}}, "env"),
    ({"box_id": BOX, "channel_id": CH, "kind": "shell", "cmd": ["sh"]}, "kind"),
    ({"box_id": BOX, "channel_id": "ch_xyz", "kind": "pty", "cmd": ["sh"]}, "channel_id"),
    ({"box_id": "bx_nope", "channel_id": CH, "kind": "pty", "cmd": ["sh"]}, "box_id"),
])
def test_bad_opens_are_invalid_naming_the_field(params: dict[str, Any], field: str) -> None:
    with pytest.raises(RemoteError) as err:
        parse_params(BOX_OPEN, params)
    assert err.value.code is ErrorCode.INVALID and field in err.value.message


@pytest.mark.parametrize("params, field", [
    ({"channel_id": CH, "data": "not base64!"}, "base64"),
    ({"channel_id": CH, "rows": 10}, "both rows and cols"),
    ({"channel_id": CH, "rows": 0, "cols": 10}, "rows"),
    ({"channel_id": CH, "data": "A" * (MAX_INPUT_BYTES * 2)}, "data"),
    ({"channel_id": "bx_0123456789abcdef"}, "channel_id"),
])
def test_bad_input_is_invalid(params: dict[str, Any], field: str) -> None:
    with pytest.raises(RemoteError) as err:
        parse_params(BOX_INPUT, params)
    assert err.value.code is ErrorCode.INVALID and field in err.value.message


def test_input_carries_bytes_resize_eof_and_close() -> None:
    p = parse_params(BOX_INPUT, {"channel_id": CH, "data": "aGk=", "rows": 40, "cols": 120,
                                 "eof": True, "close": True})
    assert (p.data, p.rows, p.cols, p.eof, p.close) == ("aGk=", 40, 120, True, True)
