"""Exec events from the hub's binary exec stream (:mod:`protocol.binary_exec`), shaped as the
NDJSON ones every caller already reads: ``{"t": "stdout"|"stderr", ...}`` then the exit (or
error) line. An output event carries the raw bytes as ``"data"``; its ``"d"`` (the NDJSON
base64) is made only if someone reads it, so old callers keep working and new ones
(``hub box exec``, cli/common.py) never pay for base64. Used by client/fast_exec.py,
client/http_client.py and client/async_client.py. Pinned by tests/protocol/test_binary_exec.py
and tests/test_bulk_data.py.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator, Iterable, Iterator
from typing import Any

from protocol import binary_exec
from protocol.errors import ErrorCode, RemoteError

# What the clients ask for: the binary stream, NDJSON from a hub that has no binary one.
ACCEPT = f"{binary_exec.CONTENT_TYPE}, application/x-ndjson;q=0.5"


class ExecEvent(dict[str, Any]):
    """An output event: ``{"t": stream, "data": bytes}``, with ``"d"`` (base64) on demand."""

    def __missing__(self, key: str) -> Any:
        if key == "d" and "data" in self:
            value = self["d"] = base64.b64encode(self["data"]).decode()
            return value
        raise KeyError(key)

    def get(self, key: str, default: Any = None) -> Any:  # type: ignore[override]
        return self[key] if key in self or key == "d" and "data" in self else default


def is_binary(content_type: str | None) -> bool:
    return (content_type or "").split(";")[0].strip() == binary_exec.CONTENT_TYPE


def _events(reader: binary_exec.Reader, piece: bytes) -> list[dict[str, Any]]:
    try:
        found = reader.feed(piece)
    except ValueError as err:
        raise RemoteError(ErrorCode.UNAVAILABLE, f"bad exec stream from the hub: {err}") from None
    return [ExecEvent(t=kind, data=value) if kind != "end" else dict(value)
            for kind, value in found]


def _ended(reader: binary_exec.Reader) -> None:
    if not reader.ended:
        raise RemoteError(ErrorCode.UNAVAILABLE, "the hub ended the exec stream without its exit")


def from_binary(pieces: Iterable[bytes]) -> Iterator[dict[str, Any]]:
    """The events in a binary exec body, read as ``pieces`` arrive."""
    reader = binary_exec.Reader()
    for piece in pieces:
        yield from _events(reader, piece)
    _ended(reader)


async def from_binary_async(pieces: AsyncIterator[bytes]) -> AsyncIterator[dict[str, Any]]:
    reader = binary_exec.Reader()
    async for piece in pieces:
        for event in _events(reader, piece):
            yield event
    _ended(reader)
