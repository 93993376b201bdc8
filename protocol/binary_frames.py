"""Binary stream frames: a ``$/chunk`` as one binary WebSocket message, raw bytes after a
small fixed header, instead of base64 inside a JSON text frame (issue 14: base64 and JSON
made exec output 5.6x slower than ``docker exec``). Control frames stay JSON text.

Layout (network byte order)::

    magic  u8   0xB1 (never the first byte of JSON text, nor of UTF-8 text at all)
    flags  u8   bit 0: eof (the sender's last chunk of this call); other bits must be 0
    call   u32  the call id
    seq    u64  the chunk's sequence number in the call's stream (0, 1, 2, ...)
    nlen   u8   length of the stream name (1..32)
    name   nlen bytes, ASCII: "stdout", "stderr", "stdin", "file", ...
    data   the rest of the message: the payload, raw

Pure: no I/O. :meth:`protocol.connection.Connection.receive_data` hands a binary message
starting with :data:`MAGIC` here; whatever :func:`decode` refuses is a protocol violation
with the message it returns. Pinned by tests/protocol/test_binary_frames.py.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

MAGIC = 0xB1
FLAG_EOF = 0x01
MAX_STREAM_NAME = 32
HEADER = struct.Struct(">BBIQB")
MAX_HEADER_BYTES = HEADER.size + MAX_STREAM_NAME


@dataclass(frozen=True, slots=True)
class BinaryChunk:
    call_id: int
    seq: int
    stream: str
    data: bytes
    eof: bool


def is_binary_chunk(data: str | bytes) -> bool:
    """Whether a received message is a binary chunk frame (else: JSON text or bytes)."""
    return isinstance(data, bytes | bytearray) and data[:1] == b"\xb1"


def encode(call_id: int, seq: int, stream: str, data: bytes, eof: bool) -> bytes:
    """One chunk as a binary message (one copy of ``data``, into the message)."""
    name = stream.encode("ascii")
    if not 0 < len(name) <= MAX_STREAM_NAME:
        raise ValueError(f"stream name {stream!r} must be 1 to {MAX_STREAM_NAME} ASCII characters")
    head = HEADER.pack(MAGIC, FLAG_EOF if eof else 0, call_id, seq, len(name))
    return b"".join((head, name, data))


def decode(frame: bytes, max_data: int) -> BinaryChunk | str:
    """The chunk in ``frame``, or why it is malformed (a message for the violation)."""
    if len(frame) < HEADER.size:
        return f"binary frame: short header ({len(frame)} bytes, need {HEADER.size})"
    magic, flags, call_id, seq, nlen = HEADER.unpack_from(frame)
    if magic != MAGIC:
        return f"binary frame: unknown type 0x{magic:02x}"
    if flags & ~FLAG_EOF:
        return f"binary frame: unknown flags 0x{flags:02x}"
    if not 0 < nlen <= MAX_STREAM_NAME or len(frame) < HEADER.size + nlen:
        return f"binary frame: bad stream name length {nlen}"
    raw_name = bytes(frame[HEADER.size:HEADER.size + nlen])
    if not all(0x21 <= c <= 0x7E for c in raw_name):
        return "binary frame: stream name is not printable ASCII"
    size = len(frame) - HEADER.size - nlen
    if size > max_data:
        return f"binary frame: call {call_id} chunk of {size} bytes exceeds the limit of {max_data}"
    return BinaryChunk(call_id, seq, raw_name.decode("ascii"),
                       bytes(frame[HEADER.size + nlen:]), bool(flags & FLAG_EOF))
