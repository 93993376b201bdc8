"""The frame codec between the spoke and a box's in-box supervisor (pure: no I/O).

A frame is ``>BII`` (type, channel id, payload length) then the payload; control payloads
are JSON. Both directions start *unsynced* and skip bytes until :data:`MAGIC`: a spoke that
attaches to a box another spoke process talked to cannot know where that one stopped. After
the sync, anything malformed (unknown type, oversized payload, bad JSON) is a
:class:`FrameError`, and the spoke stops trusting that supervisor (docker exec instead).

The box side is spoke/boxes/inbox/supervisor.py, which cannot import this module (it runs in
the box, where spokehub is not installed): its constants are copies, compared by
tests/boxes/test_exec_agent.py::test_codec_constants_match_the_supervisor. Also pinned by
tests/boxes/test_exec_agent.py::test_frame_codec_* (no sockets).
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from typing import Any

MAGIC = b"\x00\xffSPOKEHUB-SYNC\xff\x00"
HEADER = struct.Struct(">BII")
MAX_IN = 1 << 16  # largest payload the spoke sends (the supervisor refuses more)
MAX_OUT = 1 << 16  # largest payload the supervisor sends (we refuse more)
WINDOW = 1 << 20  # unacknowledged bytes per channel and direction
# Zero bytes sent before MAGIC when a first hello got no answer: completes any frame a dead
# spoke process left half-written on the box's stdin; type 0 is invalid, so the rest
# unsyncs the reader.
SYNC_PAD = HEADER.size + MAX_IN

HELLO, OPEN, OPENED, DATA, EOF, STDOUT, STDERR, RESIZE, ERROR = 1, 2, 3, 4, 5, 6, 7, 8, 9
SIGNAL, KILL, EXIT, ACK, CLOSE = 10, 11, 12, 13, 14
TO_BOX = frozenset({HELLO, OPEN, DATA, EOF, RESIZE, SIGNAL, KILL, ACK, CLOSE})
FROM_BOX = frozenset({HELLO, OPENED, STDOUT, STDERR, ERROR, ACK, EXIT})
JSON_TYPES = frozenset({HELLO, OPEN, OPENED, RESIZE, ERROR, SIGNAL, EXIT})


class FrameError(ValueError):
    """Bytes that are not a valid frame: the peer is confused or hostile."""


@dataclass(frozen=True)
class Frame:
    type: int
    channel: int
    payload: bytes = b""

    def json(self) -> dict[str, Any]:
        """The payload of a control frame as a JSON object, or :class:`FrameError`."""
        try:
            value = json.loads(self.payload.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise FrameError(f"frame type {self.type} on channel {self.channel}: payload is "
                             f"not JSON ({exc})") from None
        if not isinstance(value, dict):
            raise FrameError(f"frame type {self.type} on channel {self.channel}: payload is "
                             "not a JSON object")
        return value

    def count(self) -> int:
        """The byte count of an ACK frame."""
        if len(self.payload) != 4:
            raise FrameError(f"ACK on channel {self.channel} must carry 4 bytes, "
                             f"got {len(self.payload)}")
        return int(struct.unpack(">I", self.payload)[0])


def encode(ftype: int, channel: int, payload: bytes = b"", *, magic: bool = False) -> bytes:
    """One spoke-to-box frame (``magic``: preceded by the sync marker)."""
    if ftype not in TO_BOX:
        raise FrameError(f"frame type {ftype} is not one the spoke sends")
    if not 0 <= channel <= 0xFFFFFFFF:
        raise FrameError(f"channel id {channel} does not fit in 32 bits")
    if len(payload) > MAX_IN:
        raise FrameError(f"payload of {len(payload)} bytes is over the {MAX_IN}-byte limit")
    head = HEADER.pack(ftype, channel, len(payload))
    return (MAGIC + head if magic else head) + payload


def encode_json(ftype: int, channel: int, obj: dict[str, Any], *, magic: bool = False) -> bytes:
    return encode(ftype, channel, json.dumps(obj, separators=(",", ":")).encode(), magic=magic)


def ack(channel: int, count: int) -> bytes:
    return encode(ACK, channel, struct.pack(">I", count))


class FrameDecoder:
    """Incremental decoder of the supervisor's frames: :meth:`feed` bytes as they come."""

    def __init__(self, *, max_payload: int = MAX_OUT, types: frozenset[int] = FROM_BOX,
                 synced: bool = False) -> None:
        self.max_payload = max_payload
        self.types = types
        self.synced = synced
        self._buf = bytearray()
        self.skipped = 0  # bytes dropped while looking for MAGIC

    def feed(self, data: bytes) -> list[Frame]:
        self._buf += data
        buf = self._buf
        frames: list[Frame] = []
        while True:
            if not self.synced:
                at = buf.find(MAGIC)
                if at < 0:
                    keep = len(MAGIC) - 1
                    drop = max(0, len(buf) - keep)
                    self.skipped += drop
                    del buf[:drop]
                    return frames
                self.skipped += at
                del buf[:at + len(MAGIC)]
                self.synced = True
            if buf[:1] == MAGIC[:1]:  # type 0 is never a frame: a marker between frames
                if len(buf) < len(MAGIC) and MAGIC.startswith(bytes(buf)):
                    return frames
                if buf.startswith(MAGIC):
                    del buf[:len(MAGIC)]
                    continue
            if len(buf) < HEADER.size:
                return frames
            ftype, channel, length = HEADER.unpack_from(buf)
            if ftype not in self.types:
                raise FrameError(f"unknown frame type {ftype} (channel {channel})")
            if length > self.max_payload:
                raise FrameError(f"frame type {ftype} on channel {channel} declares "
                                 f"{length} bytes, over the {self.max_payload}-byte limit")
            end = HEADER.size + length
            if len(buf) < end:
                return frames
            frames.append(Frame(ftype, channel, bytes(buf[HEADER.size:end])))
            del buf[:end]


class DockerStreamDecoder:
    """Docker's multiplexed attach stream (non-TTY): 8-byte headers (stream, 0, 0, 0, u32
    length). Returns ``(stream, payload)`` pairs; stream 1 is stdout, 2 stderr."""

    HEAD = struct.Struct(">BxxxI")
    MAX = 1 << 24

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        self._buf += data
        out: list[tuple[int, bytes]] = []
        while len(self._buf) >= self.HEAD.size:
            stream, length = self.HEAD.unpack_from(self._buf)
            if stream not in (0, 1, 2) or length > self.MAX:
                raise FrameError(f"bad Docker stream header {bytes(self._buf[:8])!r}")
            end = self.HEAD.size + length
            if len(self._buf) < end:
                break
            out.append((stream, bytes(self._buf[self.HEAD.size:end])))
            del self._buf[:end]
        return out
