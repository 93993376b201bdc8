"""Binary chunk frames (protocol/binary_frames.py, protocol version 2): the codec, the
connection sending and reading them under per-call flow control, and every malformed one
refused as a protocol violation with a clear message. No sockets: a pair of connections
wired in memory (tests/protocol/helpers.py)."""

from __future__ import annotations

import json
import os

import pytest

from protocol import binary_frames as bf
from protocol import events as ev
from protocol.connection import Limits
from protocol.errors import ErrorCode, RemoteError
from protocol.link import batched
from protocol.sides import HubConnection, SpokeConnection
from tests.protocol.helpers import BOX, FakeClock, Pair, error_kind, frames, open_pair

EXEC = {"box_id": BOX, "cmd": ["head", "-c", "50M", "/dev/zero"]}
UPLOAD = {"box_id": BOX, "path": "/tmp/f", "size": 3}
WINDOW = 4
CHUNK = 1024


def _pair() -> Pair:
    return open_pair(Limits(window_chunks=WINDOW, chunk_bytes=CHUNK, stale_after_s=1e6))


def _violation(events: list[ev.Event], says: str) -> None:
    assert len(events) == 1 and isinstance(events[0], ev.ProtocolViolation), events
    assert says in events[0].message, events[0].message


# ------------------------------------------------------------------------ codec
@pytest.mark.parametrize("data", [b"", b"x", bytes(range(256)), os.urandom(5000)])
@pytest.mark.parametrize("eof", [False, True])
def test_a_chunk_survives_encode_and_decode(data: bytes, eof: bool) -> None:
    frame = bf.encode(7, 2**40, "stderr", data, eof)
    assert bf.is_binary_chunk(frame) and len(frame) == bf.HEADER.size + len("stderr") + len(data)
    assert bf.decode(frame, 1 << 20) == bf.BinaryChunk(7, 2**40, "stderr", data, eof)


def test_json_text_and_json_bytes_are_never_taken_for_binary_chunks() -> None:
    assert not bf.is_binary_chunk('{"jsonrpc": "2.0"}')
    assert not bf.is_binary_chunk(b'{"jsonrpc": "2.0"}')
    assert not bf.is_binary_chunk(b"")


@pytest.mark.parametrize("stream", ["", "x" * 33, "stdöut"])
def test_a_bad_stream_name_cannot_be_encoded(stream: str) -> None:
    with pytest.raises((ValueError, UnicodeEncodeError)):
        bf.encode(1, 0, stream, b"", False)


@pytest.mark.parametrize(("frame", "says"), [
    (b"\xb1", "short header (1 bytes, need 15)"),
    (bf.HEADER.pack(0xB1, 0x80, 1, 0, 6) + b"stdout", "unknown flags 0x80"),
    (bf.HEADER.pack(0xB1, 0, 1, 0, 0), "bad stream name length 0"),
    (bf.HEADER.pack(0xB1, 0, 1, 0, 40) + b"s" * 40, "bad stream name length 40"),
    (bf.HEADER.pack(0xB1, 0, 1, 0, 6) + b"std", "bad stream name length 6"),
    (bf.HEADER.pack(0xB1, 0, 1, 0, 3) + b"a\nb", "not printable ASCII"),
    (bf.encode(1, 0, "stdout", b"x" * 11, False), "chunk of 11 bytes exceeds the limit of 10"),
])
def test_malformed_frames_are_refused_by_the_codec_with_the_reason(frame: bytes, says: str) -> None:
    got = bf.decode(frame, 10)
    assert isinstance(got, str) and says in got, got


# ------------------------------------------------------------------- connection
def test_chunks_leave_as_binary_messages_and_arrive_as_raw_bytes() -> None:
    pair = _pair()
    call_id, _ = pair.call("box.exec", EXEC)
    payload = bytes(range(256)) * 4
    assert pair.spoke.send_chunk(call_id, "stdout", payload)
    assert pair.spoke.send_chunk(call_id, "stderr", b"", eof=True)
    out = pair.spoke.data_to_send()
    assert all(isinstance(m, bytes) for m in out) and len(out) == 2
    got = [e for m in out for e in pair.hub.receive_data(m)]
    assert got == [ev.ChunkReceived(call_id, 0, "stdout", payload, False),
                   ev.ChunkReceived(call_id, 1, "stderr", b"", True)]


def test_an_upload_travels_binary_too_and_the_window_holds() -> None:
    pair = _pair()
    call_id, _ = pair.call("box.put_file", UPLOAD)
    sent = 0
    while pair.hub.send_chunk(call_id, "stdin", b"abc"):
        sent += 1
    assert sent == WINDOW
    events = pair.to_spoke()
    assert [e.seq for e in events if isinstance(e, ev.ChunkReceived)] == list(range(WINDOW))
    pair.spoke.ack(call_id, WINDOW - 1)
    assert pair.to_hub() == [ev.WindowOpened(call_id)]
    assert pair.hub.send_chunk(call_id, "stdin", b"more", eof=True)


def test_a_chunk_over_chunk_bytes_is_not_sent() -> None:
    pair = _pair()
    call_id, _ = pair.call("box.exec", EXEC)
    with pytest.raises(ValueError, match="exceeds 1024"):
        pair.spoke.send_chunk(call_id, "stdout", b"x" * (CHUNK + 1))


def test_an_oversized_binary_chunk_is_a_violation() -> None:
    pair = _pair()
    call_id, _ = pair.call("box.exec", EXEC)
    big = bf.encode(call_id, 0, "stdout", b"x" * (CHUNK + 1), False)
    _violation(pair.hub.receive_data(big), f"chunk of {CHUNK + 1} bytes exceeds the limit of {CHUNK}")
    (answer,) = frames(pair.hub)
    assert error_kind(answer) == "invalid"  # the peer is told why


def test_a_short_binary_header_is_a_violation() -> None:
    pair = _pair()
    _violation(pair.hub.receive_data(b"\xb1\x00\x00"), "short header")


def test_a_binary_chunk_for_a_call_never_made_is_a_violation() -> None:
    pair = _pair()
    _violation(pair.hub.receive_data(bf.encode(999, 0, "stdout", b"x", False)),
               "unknown call 999")
    _violation(pair.spoke.receive_data(bf.encode(999, 0, "stdin", b"x", False)),
               "unknown call 999")


def test_a_straggler_of_a_cancelled_call_is_dropped_quietly() -> None:
    pair = _pair()
    call_id, _ = pair.call("box.exec", EXEC)
    pair.hub.cancel(call_id)
    frames(pair.hub)
    assert pair.hub.receive_data(bf.encode(call_id, 0, "stdout", b"late", False)) == []
    assert frames(pair.hub) == []


def test_a_chunk_on_a_call_that_does_not_stream_that_way_is_a_violation() -> None:
    pair = _pair()
    ping, _ = pair.call("spoke.ping", {})
    _violation(pair.hub.receive_data(bf.encode(ping, 0, "stdout", b"x", False)),
               "has no stream that way")
    frames(pair.hub)  # the hub's complaint to the spoke
    upload, _ = pair.call("box.put_file", UPLOAD)  # its stream goes up, never down
    _violation(pair.hub.receive_data(bf.encode(upload, 0, "stdout", b"x", False)),
               "has no stream that way")


def test_a_binary_chunk_out_of_order_is_a_violation() -> None:
    pair = _pair()
    call_id, _ = pair.call("box.exec", EXEC)
    _violation(pair.hub.receive_data(bf.encode(call_id, 1, "stdout", b"x", False)),
               f"call {call_id} expected seq 0, got 1")


def test_a_peer_overrunning_the_window_is_a_violation() -> None:
    pair = _pair()
    call_id, _ = pair.call("box.exec", EXEC)
    for seq in range(WINDOW):
        (got,) = pair.hub.receive_data(bf.encode(call_id, seq, "stdout", b"x", False))
        assert isinstance(got, ev.ChunkReceived)
    _violation(pair.hub.receive_data(bf.encode(call_id, WINDOW, "stdout", b"x", False)),
               f"overran its flow-control window of {WINDOW}")


def test_a_binary_frame_during_the_handshake_is_a_fatal_violation() -> None:
    clock = FakeClock()
    hub, spoke = HubConnection(clock), SpokeConnection(clock)
    hub.send_hello(b"challenge", "hub")
    for conn in (hub, spoke):
        (got,) = conn.receive_data(bf.encode(1, 0, "stdout", b"x", False))
        assert isinstance(got, ev.ProtocolViolation) and got.fatal
        assert "before the handshake ended" in got.message


def test_many_bad_binary_frames_end_the_connection() -> None:
    pair = open_pair(Limits(max_violations=3, stale_after_s=1e6))
    fatal = [e.fatal for _ in range(4) for e in pair.hub.receive_data(b"\xb1")
             if isinstance(e, ev.ProtocolViolation)]
    assert fatal == [False, False, False, True]


def test_a_whole_stream_under_flow_control_arrives_in_order() -> None:
    pair = _pair()
    call_id, _ = pair.call("box.exec", EXEC)
    data = os.urandom(CHUNK * 37 + 5)
    pieces = [data[i:i + CHUNK] for i in range(0, len(data), CHUNK)]
    got = bytearray()
    while pieces or not got.endswith(data[-5:]):
        while pieces and pair.spoke.send_chunk(call_id, "stdout", pieces[0], eof=len(pieces) == 1):
            pieces.pop(0)
        events = pair.to_hub()
        chunks = [e for e in events if isinstance(e, ev.ChunkReceived)]
        got += b"".join(c.data for c in chunks)
        if chunks:
            pair.hub.ack(call_id, chunks[-1].seq)
            assert all(isinstance(e, ev.WindowOpened) for e in pair.to_spoke())
    assert bytes(got) == data


def test_version_two_is_the_binary_protocol() -> None:
    from protocol import messages
    assert messages.PROTOCOL_VERSION == 2 and messages.SUPPORTED_VERSIONS == (2,)


# ------------------------------------------------------------------------ link
def test_binary_frames_are_never_batched() -> None:
    chunk = bf.encode(1, 0, "stdout", b"x", False)
    text = [json.dumps({"jsonrpc": "2.0", "method": "$/ack", "params": {"id": i, "seq": 0}})
            for i in range(3)]
    out = batched([text[0], text[1], chunk, text[2]], 1 << 20)
    assert out == ["[" + text[0] + "," + text[1] + "]", chunk, text[2]]


def test_an_error_frame_about_a_binary_frame_is_plain_json() -> None:
    pair = _pair()
    pair.hub.receive_data(b"\xb1")
    (answer,) = pair.hub.data_to_send()
    assert isinstance(answer, str)
    assert RemoteError.from_wire(json.loads(answer)["error"]).code is ErrorCode.INVALID


# ------------------------------------------------------------ drivers, in memory
async def test_acks_cover_a_quarter_of_the_window() -> None:
    """Both drivers over the in-memory pipe: 50 chunks under a window of 8 arrive whole, in
    order, as binary messages, with one ack per 2 chunks taken (ack_every), never a stall."""
    import asyncio

    from protocol import verbs as v
    from protocol.link import ack_every
    from tests.protocol.test_link import pair

    assert [ack_every(n) for n in (1, 2, 4, 8, 16)] == [1, 1, 1, 2, 4]
    hub, spoke, _served, tasks = await pair(Limits(window_chunks=8))
    sent_before = spoke.transport.sent  # type: ignore[attr-defined]
    acks_before = hub.transport.sent  # type: ignore[attr-defined]
    call = await hub.call_stream(v.BOX_EXEC, v.BoxExec(box_id=BOX, cmd=["count", "50"]))
    got = [data async for _stream, data in call.chunks()]
    assert got == [f"line {i}\n".encode() for i in range(50)]
    assert (await call.result()).exit_code == 7
    assert spoke.transport.sent - sent_before == 51  # type: ignore[attr-defined]  # 50 + result
    acks = hub.transport.sent - acks_before - 1  # type: ignore[attr-defined]  # less the call
    assert 12 <= acks <= 25  # one per 2 chunks (the last may still be queued), not 50
    await hub.close(1000, "done")
    await asyncio.gather(*tasks)
