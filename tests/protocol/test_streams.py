"""Cancel and per-call flow control of chunk streams."""

from __future__ import annotations

import base64

import pytest

from protocol import events as ev
from protocol.connection import Limits
from protocol.errors import ErrorCode, RemoteError
from tests.protocol.helpers import BOX, Pair, frame, frames, open_pair

EXEC = {"box_id": BOX, "cmd": ["cat", "/dev/urandom"]}
WINDOW = 4


def _stream_pair() -> Pair:
    return open_pair(Limits(window_chunks=WINDOW, chunk_bytes=1024, stale_after_s=1e6))


def _fill(pair: Pair, call_id: int) -> int:
    """Spoke sends chunks until the window closes; returns how many went out."""
    sent = 0
    while pair.spoke.send_chunk(call_id, "stdout", f"c{sent}".encode()):
        sent += 1
        assert sent <= 100
    return sent


# ------------------------------------------------------------------------ cancel
def test_cancel_sends_cancel_and_peer_gets_cancel_received() -> None:
    pair = open_pair()
    call_id, _ = pair.call("box.exec", EXEC)
    pair.hub.cancel(call_id)
    (f,) = frames(pair.hub)
    assert f == {"jsonrpc": "2.0", "method": "$/cancel", "params": {"id": call_id}}
    assert pair.hub.in_flight() == 0
    assert pair.spoke.receive_data(frame(**f)) == [ev.CancelReceived(call_id)]
    assert pair.spoke.in_flight() == 1  # the spoke still owes an answer
    pair.spoke.send_error(call_id, RemoteError(ErrorCode.CANCELLED, "cancelled"))
    assert pair.spoke.in_flight() == 0
    assert pair.to_hub() == []  # the canceller already forgot the call


def test_cancel_is_idempotent_and_ignores_unknown_calls() -> None:
    pair = open_pair()
    call_id, _ = pair.call("spoke.ping", {})
    pair.hub.cancel(call_id)
    pair.hub.cancel(call_id)
    pair.hub.cancel(12345)
    assert len(frames(pair.hub)) == 1


def test_cancel_for_unknown_call_is_ignored_by_peer() -> None:
    pair = open_pair()
    assert pair.spoke.receive_data(frame(method="$/cancel", params={"id": 99})) == []
    assert pair.spoke.receive_data(frame(method="$/cancel", params={"id": "x"})) == []
    assert frames(pair.spoke) == []


def test_chunks_after_cancel_are_dropped_quietly() -> None:
    pair = _stream_pair()
    call_id, _ = pair.call("box.exec", EXEC)
    pair.hub.cancel(call_id)
    frames(pair.hub)
    assert pair.spoke.send_chunk(call_id, "stdout", b"late")
    assert pair.to_hub() == []
    assert frames(pair.hub) == []


# ------------------------------------------------------------------ flow control
def test_down_stream_chunks_arrive_in_order() -> None:
    pair = _stream_pair()
    call_id, _ = pair.call("box.exec", EXEC)
    assert pair.spoke.send_chunk(call_id, "stdout", b"hello ")
    assert pair.spoke.send_chunk(call_id, "stderr", b"\x00\xff")
    (f0, f1) = frames(pair.spoke)
    assert f0["method"] == "$/chunk"
    assert f0["params"]["seq"] == 0 and base64.b64decode(f0["params"]["data"]) == b"hello "
    got = [pair.hub.receive_data(frame(**f))[0] for f in (f0, f1)]
    assert got == [
        ev.ChunkReceived(call_id, 0, "stdout", b"hello ", False),
        ev.ChunkReceived(call_id, 1, "stderr", b"\x00\xff", False),
    ]


def test_window_closes_after_window_chunks_unacked() -> None:
    pair = _stream_pair()
    call_id, _ = pair.call("box.exec", EXEC)
    assert pair.spoke.can_send_chunk(call_id)
    assert _fill(pair, call_id) == WINDOW
    assert not pair.spoke.can_send_chunk(call_id)
    assert pair.spoke.send_chunk(call_id, "stdout", b"more") is False
    got = pair.to_hub()
    assert [e.seq for e in got if isinstance(e, ev.ChunkReceived)] == list(range(WINDOW))
    assert frames(pair.spoke) == []  # the refused chunk was not queued


def test_ack_reopens_the_window() -> None:
    pair = _stream_pair()
    call_id, _ = pair.call("box.exec", EXEC)
    _fill(pair, call_id)
    pair.to_hub()
    pair.hub.ack(call_id, 1)  # consumed seq 0 and 1
    (ack,) = frames(pair.hub)
    assert ack["method"] == "$/ack" and ack["params"] == {"id": call_id, "seq": 1}
    assert pair.spoke.receive_data(frame(**ack)) == [ev.WindowOpened(call_id)]
    assert pair.spoke.can_send_chunk(call_id)
    assert _fill(pair, call_id) == 2  # exactly as many as were acked
    got = pair.to_hub()
    assert [e.seq for e in got if isinstance(e, ev.ChunkReceived)] == [WINDOW, WINDOW + 1]


def test_stale_or_repeated_acks_are_not_sent_or_not_reported() -> None:
    pair = _stream_pair()
    call_id, _ = pair.call("box.exec", EXEC)
    _fill(pair, call_id)
    pair.to_hub()
    pair.hub.ack(call_id, 2)
    pair.hub.ack(call_id, 2)
    pair.hub.ack(call_id, 0)
    assert len(frames(pair.hub)) == 1
    assert pair.spoke.receive_data(frame(method="$/ack", params={"id": call_id, "seq": 2})) == [
        ev.WindowOpened(call_id)
    ]
    assert pair.spoke.receive_data(frame(method="$/ack", params={"id": call_id, "seq": 1})) == []


def test_ack_of_a_chunk_never_sent_is_a_violation() -> None:
    pair = _stream_pair()
    call_id, _ = pair.call("box.exec", EXEC)
    pair.spoke.send_chunk(call_id, "stdout", b"x")
    frames(pair.spoke)
    (got,) = pair.spoke.receive_data(frame(method="$/ack", params={"id": call_id, "seq": 5}))
    assert isinstance(got, ev.ProtocolViolation) and "never sent" in got.message
    assert _fill(pair, call_id) == WINDOW - 1  # the bogus ack opened nothing
    frames(pair.spoke)
    assert pair.spoke.receive_data(frame(method="$/ack", params={"id": call_id, "seq": 0})) == [
        ev.WindowOpened(call_id)
    ]


def test_stalled_stream_does_not_block_other_calls() -> None:
    pair = _stream_pair()
    stalled, _ = pair.call("box.exec", EXEC)
    other, _ = pair.call("box.exec", EXEC)
    _fill(pair, stalled)  # never acked
    pair.to_hub()
    assert not pair.spoke.can_send_chunk(stalled)
    # the other stream flows freely, through several windows
    for round_ in range(3):
        assert _fill(pair, other) == WINDOW
        got = pair.to_hub()
        seqs = [e.seq for e in got if isinstance(e, ev.ChunkReceived) and e.call_id == other]
        assert seqs == list(range(round_ * WINDOW, (round_ + 1) * WINDOW))
        pair.hub.ack(other, seqs[-1])
        assert pair.to_spoke() == [ev.WindowOpened(other)]
    # ordinary requests still work while one stream is stalled
    ping, _ = pair.call("spoke.ping", {})
    pair.spoke.send_result(ping, {})
    (resp,) = pair.to_hub()
    assert isinstance(resp, ev.ResponseReceived) and resp.call_id == ping
    assert not pair.spoke.can_send_chunk(stalled)
    # and the stalled call can still finish
    pair.spoke.send_result(stalled, {"exit_code": 0})
    (done,) = pair.to_hub()
    assert isinstance(done, ev.ResponseReceived) and done.call_id == stalled


def test_eof_ends_the_stream() -> None:
    pair = _stream_pair()
    call_id, _ = pair.call("box.get_file", {"box_id": BOX, "path": "/f"})
    assert pair.spoke.send_chunk(call_id, "file", b"last", eof=True)
    assert pair.spoke.send_chunk(call_id, "file", b"after eof") is False
    (got,) = pair.to_hub()
    assert got == ev.ChunkReceived(call_id, 0, "file", b"last", True)


def test_up_stream_from_hub_to_spoke() -> None:
    pair = _stream_pair()
    call_id, _ = pair.call("box.put_file", {"box_id": BOX, "path": "/f", "size": 10})
    assert not pair.spoke.can_send_chunk(call_id)  # wrong direction for the spoke
    sent = 0
    while pair.hub.send_chunk(call_id, "file", b"z"):
        sent += 1
    assert sent == WINDOW
    got = pair.to_spoke()
    assert [e.seq for e in got if isinstance(e, ev.ChunkReceived)] == list(range(WINDOW))
    pair.spoke.ack(call_id, WINDOW - 1)
    assert pair.to_hub() == [ev.WindowOpened(call_id)]
    assert pair.hub.can_send_chunk(call_id)


@pytest.mark.parametrize("verb", ["box.exec", "box.get_file"])
def test_hub_cannot_send_on_a_down_stream(verb: str) -> None:
    pair = _stream_pair()
    params = {"box_id": BOX, "cmd": ["x"]} if verb == "box.exec" else {"box_id": BOX, "path": "/f"}
    call_id, _ = pair.call(verb, params)
    assert not pair.hub.can_send_chunk(call_id)
    assert pair.hub.send_chunk(call_id, "stdin", b"x") is False
    assert frames(pair.hub) == []


def test_no_chunks_on_non_streaming_verbs_or_unknown_calls() -> None:
    pair = _stream_pair()
    call_id, _ = pair.call("box.list", {})
    assert not pair.spoke.can_send_chunk(call_id)
    assert pair.spoke.send_chunk(call_id, "stdout", b"x") is False
    assert pair.spoke.send_chunk(4242, "stdout", b"x") is False
    assert frames(pair.spoke) == []


def test_chunk_larger_than_chunk_bytes_is_refused() -> None:
    pair = _stream_pair()
    call_id, _ = pair.call("box.exec", EXEC)
    with pytest.raises(ValueError, match="exceeds 1024"):
        pair.spoke.send_chunk(call_id, "stdout", b"x" * 1025)
    assert pair.spoke.send_chunk(call_id, "stdout", b"x" * 1024)


def test_receiver_enforces_the_window() -> None:
    hub_limits = Limits(window_chunks=2, stale_after_s=1e6)
    pair = open_pair(hub_limits, spoke_limits=Limits(window_chunks=10, stale_after_s=1e6))
    call_id, _ = pair.call("box.exec", EXEC)
    for _ in range(3):
        assert pair.spoke.send_chunk(call_id, "stdout", b"x")
    got = pair.to_hub()
    assert [type(e) for e in got] == [ev.ChunkReceived, ev.ChunkReceived, ev.ProtocolViolation]
    violation = got[2]
    assert isinstance(violation, ev.ProtocolViolation) and "overran" in violation.message


@pytest.mark.parametrize(
    ("params", "needle"),
    [
        ({"seq": 1, "data": ""}, "expected seq 0, got 1"),
        ({"seq": 0, "data": "***"}, "not base64"),
        ({"seq": 0, "data": 5}, "not base64"),
    ],
)
def test_receiver_checks_chunk_sequence_and_data(params: dict[str, object], needle: str) -> None:
    pair = _stream_pair()
    call_id, _ = pair.call("box.exec", EXEC)
    (got,) = pair.hub.receive_data(frame(method="$/chunk", params={"id": call_id, **params}))
    assert isinstance(got, ev.ProtocolViolation) and needle in got.message
    # a correct chunk is still accepted afterwards
    pair.spoke.send_chunk(call_id, "stdout", b"ok")
    assert [type(e) for e in pair.to_hub()] == [ev.ChunkReceived]
