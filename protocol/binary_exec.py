"""The binary exec response of the HTTP API (``POST /api/boxes/{id}/exec`` with ``Accept:
application/vnd.spokehub.exec-stream``): output as raw bytes, not base64 in NDJSON lines
(issue 14: the two base64 passes made ``hub box exec`` 5.6x slower than ``docker exec``).

The body is a sequence of frames, each::

    kind    u8    1 stdout, 2 stderr, 0 the end
    length  u32   big-endian, bytes of data that follow
    data    length bytes: the output, raw; for the end, one JSON object, exactly the last
            NDJSON line: {"t": "exit", "exit_code": ...} or {"t": "error", "code", "message"}

Shared by the hub (hub/api.py writes it) and the clients (client/fast_exec.py,
client/http_client.py, client/async_client.py read it), so it lives here: pure, no I/O.
Pinned by tests/protocol/test_binary_exec.py and, end to end, tests/test_bulk_data.py.
"""

from __future__ import annotations

import json
import struct
from typing import Any

CONTENT_TYPE = "application/vnd.spokehub.exec-stream"
HEADER = struct.Struct(">BI")
KIND_END, KIND_STDOUT, KIND_STDERR = 0, 1, 2
KINDS = {"stdout": KIND_STDOUT, "stderr": KIND_STDERR}
NAMES = {KIND_STDOUT: "stdout", KIND_STDERR: "stderr"}
MAX_END_BYTES = 1 << 20  # a final JSON line longer than this is not a hub's


def output_header(stream: str, size: int) -> bytes:
    """The 5 bytes before ``size`` bytes of ``stream`` output (written apart: no copy)."""
    return HEADER.pack(KINDS[stream], size)


def end_frame(line: dict[str, Any]) -> bytes:
    """The last frame: the exit (or error) line as JSON."""
    data = json.dumps(line, separators=(",", ":")).encode()
    return HEADER.pack(KIND_END, len(data)) + data


class Reader:
    """Incremental parser: :meth:`feed` body bytes as they arrive, get events back —
    ``("stdout"|"stderr", bytes)`` for output and ``("end", dict)`` once. Bad input raises
    ValueError naming what is wrong; :meth:`close` raises it if the body stopped mid-frame."""

    def __init__(self) -> None:
        self._buf = bytearray()  # the start of a frame whose end is in a later piece
        self.ended = False

    def feed(self, data: bytes) -> list[tuple[str, Any]]:
        """The events ``data`` completes. The hub writes each frame's header and its output
        apart (two HTTP chunks): a piece that is exactly the output its buffered header
        announced is handed on as it is, without a copy (50 MiB of output went through
        three copies here, ~10 % of ``hub box exec``'s CPU)."""
        if self.ended:
            if data:
                raise ValueError("exec stream: data after the end frame")
            return []
        out: list[tuple[str, Any]] = []
        view = memoryview(data)
        if self._buf:
            view = self._finish_buffered(view, data, out)
        pos, n = 0, len(view)
        while not self.ended and n - pos >= HEADER.size:
            kind, size = self._header(view, pos)
            start = pos + HEADER.size
            if n - start < size:
                break
            pos = start + size
            self._frame(kind, view[start:pos].tobytes(), out)
        if self.ended and pos != n:
            raise ValueError("exec stream: data after the end frame")
        self._buf += view[pos:]
        return out

    def _finish_buffered(self, view: memoryview, data: bytes,
                         out: list[tuple[str, Any]]) -> memoryview:
        """Complete the buffered frame from the start of ``view``; what is left of it."""
        buf = self._buf
        if len(buf) < HEADER.size:
            take = HEADER.size - len(buf)
            buf += view[:take]
            view = view[take:]
            if len(buf) < HEADER.size:
                return view
        kind, size = self._header(buf, 0)
        missing = size - (len(buf) - HEADER.size)
        if len(view) < missing:
            buf += view
            return view[len(view):]
        if len(buf) == HEADER.size and len(view) == len(data) == size:
            payload = data  # the common case: the header's piece, then exactly its output
        else:
            payload = bytes(buf[HEADER.size:]) + view[:missing].tobytes()
        buf.clear()
        self._frame(kind, payload, out)
        return view[missing:]

    @staticmethod
    def _header(view: memoryview | bytearray, pos: int) -> tuple[int, int]:
        kind, size = HEADER.unpack_from(view, pos)
        if kind not in NAMES and kind != KIND_END:
            raise ValueError(f"exec stream: unknown frame kind {kind}")
        if kind == KIND_END and size > MAX_END_BYTES:
            raise ValueError(f"exec stream: end frame of {size} bytes")
        return kind, size

    def _frame(self, kind: int, payload: bytes, out: list[tuple[str, Any]]) -> None:
        if kind != KIND_END:
            out.append((NAMES[kind], payload))
            return
        line = json.loads(payload)
        if not isinstance(line, dict):
            raise ValueError("exec stream: the end frame is not a JSON object")
        out.append(("end", line))
        self.ended = True

    def close(self) -> None:
        if self._buf:
            raise ValueError(f"exec stream: cut off mid-frame ({len(self._buf)} bytes left)")
