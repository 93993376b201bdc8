"""The binary exec response of the HTTP API (protocol/binary_exec.py) and the events the
clients make of it (client/exec_events.py): frames split anywhere still parse, a cut or
garbled body is a clear error, and events read like the NDJSON ones ("d" on demand)."""

from __future__ import annotations

import base64
import json
import os
import random

import pytest

from client.exec_events import ExecEvent, from_binary, is_binary
from protocol import binary_exec as bx
from protocol.errors import RemoteError


def _body(out: bytes, err: bytes, exit_code: int = 0) -> bytes:
    return b"".join((bx.output_header("stdout", len(out)), out,
                     bx.output_header("stderr", len(err)), err,
                     bx.end_frame({"t": "exit", "exit_code": exit_code})))


@pytest.mark.parametrize("step", [1, 3, 5, 4096, 1 << 20])
def test_a_body_split_anywhere_gives_the_same_events(step: int) -> None:
    out, err = os.urandom(10_000), b"oops\n"
    body = _body(out, err, 3)
    events = list(from_binary(body[i:i + step] for i in range(0, len(body), step)))
    assert [e["t"] for e in events] == ["stdout", "stderr", "exit"]
    assert events[0]["data"] == out and events[1]["data"] == err
    assert events[2] == {"t": "exit", "exit_code": 3}


def test_frames_cut_at_random_give_the_same_events() -> None:
    rng = random.Random(14)
    outputs = [(rng.choice(["stdout", "stderr"]), rng.randbytes(rng.choice([0, 1, 7, 5000, 70_000])))
               for _ in range(40)]
    body = b"".join(bx.output_header(kind, len(data)) + data for kind, data in outputs)
    body += bx.end_frame({"t": "exit", "exit_code": 9})
    for _ in range(30):
        cuts = sorted(rng.sample(range(1, len(body)), rng.randint(1, 60)))
        pieces = [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True)]
        reader = bx.Reader()
        events = [event for piece in pieces for event in reader.feed(piece)]
        assert events == [*outputs, ("end", {"t": "exit", "exit_code": 9})]
        reader.close()


def test_output_after_its_own_header_piece_is_handed_on_uncopied() -> None:
    """The hub writes a frame's header and its output apart: the output piece is the event."""
    data = os.urandom(256 * 1024)
    reader = bx.Reader()
    assert reader.feed(bx.output_header("stdout", len(data))) == []
    [(kind, got)] = reader.feed(data)
    assert kind == "stdout" and got is data
    assert reader.feed(bx.end_frame({"t": "exit", "exit_code": 0})) == [
        ("end", {"t": "exit", "exit_code": 0})]


def test_an_output_event_still_has_its_ndjson_base64() -> None:
    event = ExecEvent(t="stdout", data=b"\x00hi")
    assert event["d"] == base64.b64encode(b"\x00hi").decode()
    assert event.get("d") == event["d"] and event.get("nope", 5) == 5
    with pytest.raises(KeyError):
        _ = event["nope"]


def test_an_error_end_frame_is_the_ndjson_error_line() -> None:
    line = {"t": "error", "code": "unavailable", "message": "spoke lost"}
    assert list(from_binary([bx.end_frame(line)])) == [line]


@pytest.mark.parametrize(("body", "says"), [
    (_body(b"abc", b"")[:-3], "without its exit"),
    (bx.output_header("stdout", 10) + b"abc", "without its exit"),
    (b"\x07\x00\x00\x00\x01x", "unknown frame kind 7"),
    (bx.end_frame({"t": "exit", "exit_code": 0}) + b"\x01", "data after the end frame"),
    (bx.HEADER.pack(bx.KIND_END, 2) + b"[]", "not a JSON object"),
    (bx.HEADER.pack(bx.KIND_END, bx.MAX_END_BYTES + 1), "end frame of"),
])
def test_a_bad_or_cut_body_is_a_clear_error(body: bytes, says: str) -> None:
    with pytest.raises(RemoteError, match=says):
        list(from_binary([body]))


def test_the_reader_reports_a_body_cut_mid_frame() -> None:
    reader = bx.Reader()
    assert reader.feed(bx.output_header("stdout", 4) + b"ab") == []
    with pytest.raises(ValueError, match="cut off mid-frame"):
        reader.close()


def test_the_content_type_is_recognised_with_parameters() -> None:
    assert is_binary(bx.CONTENT_TYPE) and is_binary(bx.CONTENT_TYPE + "; charset=binary")
    assert not is_binary("application/x-ndjson") and not is_binary(None)


def test_the_end_frame_is_compact_json() -> None:
    frame = bx.end_frame({"t": "exit", "exit_code": 0, "timed_out": False})
    kind, size = bx.HEADER.unpack_from(frame)
    assert kind == bx.KIND_END and json.loads(frame[bx.HEADER.size:]) == {
        "t": "exit", "exit_code": 0, "timed_out": False} and size == len(frame) - 5
