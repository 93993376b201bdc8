"""The framing of hub-to-hub calls (hub/cluster/peer_link.py <-> hub/cluster/peer_api.py).

Both the answer of every peer route and the body of an upload are a sequence of frames::

    kind      u8    0 end, 1 chunk, 2 keepalive, 3 params
    name_len  u8    bytes of the name that follow the header
    size      u32   big-endian, bytes of data after the name
    name      the stream a chunk belongs to ("stdout", "stderr", "ready", "stdin"…), else empty
    data      a chunk's bytes, raw; for end and params, one JSON object

An answer is chunks (a streamed verb only) and keepalives (while the spoke is silent, so the
calling hub can tell a quiet call from a hung peer), then exactly one end frame:
``{"result": {...}}`` or ``{"error": {"code", "message"}, "link_closed": bool}``. An upload
body is one params frame (the call's envelope), chunks, then an end frame (``{}``): a body
cut before its end frame is a caller that went away, never a short file.

Bounded on reading: a frame larger than its kind allows is refused before it is read. Pure
apart from reading an aiohttp :class:`~aiohttp.StreamReader`. Pinned by
tests/hub/test_peer_forwarding.py.
"""

from __future__ import annotations

import asyncio
import json
import struct
from typing import Any

from aiohttp import StreamReader

CONTENT_TYPE = "application/vnd.spokehub.peer-frames"
HEADER = struct.Struct(">BBI")
KIND_END, KIND_CHUNK, KIND_KEEPALIVE, KIND_PARAMS = 0, 1, 2, 3
MAX_JSON_BYTES = 4 * 1024 * 1024  # an envelope or a result (a spoke's frames are <= 1 MiB)
MAX_CHUNK_BYTES = 4 * 1024 * 1024  # a chunk (the link's are <= 256 KiB)
_LIMITS = {KIND_END: MAX_JSON_BYTES, KIND_CHUNK: MAX_CHUNK_BYTES, KIND_KEEPALIVE: 0,
           KIND_PARAMS: MAX_JSON_BYTES}

Frame = tuple[int, str, bytes]


class FrameError(ValueError):
    """A malformed frame: unknown kind, over its size limit, a bad name, or cut short."""


def chunk_header(stream: str, size: int) -> bytes:
    """The header and name before ``size`` bytes of ``stream`` (the data is written apart:
    no copy of a chunk)."""
    name = stream.encode()
    return HEADER.pack(KIND_CHUNK, len(name), size) + name


def json_frame(kind: int, obj: dict[str, Any]) -> bytes:
    """An end or params frame carrying ``obj``."""
    data = json.dumps(obj, separators=(",", ":")).encode()
    return HEADER.pack(kind, 0, len(data)) + data


KEEPALIVE = HEADER.pack(KIND_KEEPALIVE, 0, 0)


async def read_frame(content: StreamReader) -> Frame | None:
    """The next frame, or None at a clean end of the body (between frames). Raises
    :class:`FrameError` for a malformed or truncated one."""
    try:
        header = await content.readexactly(HEADER.size)
    except asyncio.IncompleteReadError as err:
        if not err.partial:
            return None
        raise FrameError("the body ends inside a frame header") from None
    kind, name_len, size = HEADER.unpack(header)
    limit = _LIMITS.get(kind)
    if limit is None:
        raise FrameError(f"unknown frame kind {kind}")
    if size > limit:
        raise FrameError(f"a frame of kind {kind} of {size} bytes (at most {limit})")
    if name_len and kind != KIND_CHUNK:
        raise FrameError(f"a frame of kind {kind} carries a name")
    try:
        name = (await content.readexactly(name_len)).decode() if name_len else ""
        data = await content.readexactly(size) if size else b""
    except asyncio.IncompleteReadError:
        raise FrameError("the body ends inside a frame") from None
    except UnicodeDecodeError:
        raise FrameError("a chunk's stream name is not UTF-8") from None
    return kind, name, data


def json_of(data: bytes, what: str) -> dict[str, Any]:
    """The JSON object of an end or params frame, or :class:`FrameError` naming ``what``."""
    try:
        obj = json.loads(data)
    except (ValueError, RecursionError):
        raise FrameError(f"{what} is not valid JSON") from None
    if not isinstance(obj, dict):
        raise FrameError(f"{what} must be a JSON object")
    return obj
