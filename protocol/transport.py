"""The transport seam: what a link driver needs from a WebSocket, and an in-memory pipe.

A :class:`Transport` carries whole messages in order — text (``str``: one JSON-RPC frame,
or a batch of them) and binary (``bytes``: a stream chunk, protocol/binary_frames.py), each
sent as the WebSocket message type it is — and can be closed with a code and a reason the peer can read. The hub adapts aiohttp's server socket to
it (hub/spoke_link.py), the spoke the ``websockets`` client (spoke/connector.py), and tests use
:func:`memory_pipe` so a real hub registry and a real spoke dispatcher talk in milliseconds
without sockets (llmbox's transport interface, "so the hub side and the spoke side can be
tested over an in-memory pipe"). Pinned by tests/protocol/test_link.py and tests/hub/.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Protocol

_CLOSED = object()


class Transport(Protocol):
    async def send(self, frames: Sequence[str | bytes]) -> None:
        """Send ``frames`` in order, ``str`` as text and ``bytes`` as binary messages;
        raises ``ConnectionError`` once closed."""
        ...

    async def receive(self) -> str | bytes | None:
        """The next message, or None when the connection is closed (either side)."""
        ...

    async def close(self, code: int, reason: str) -> None:
        """Close, telling the peer ``code`` and ``reason``; idempotent."""
        ...

    @property
    def closed(self) -> bool: ...

    @property
    def peer_close(self) -> tuple[int, str] | None:
        """The close code and reason the peer sent, once it closed."""
        ...


class MemoryTransport:
    """One end of :func:`memory_pipe`: messages sent here arrive at the other end."""

    def __init__(self) -> None:
        self._inbox: asyncio.Queue[object] = asyncio.Queue()
        self.peer: MemoryTransport | None = None
        self._closed = False
        self._peer_close: tuple[int, str] | None = None
        self.sent = 0  # messages sent, for tests that count frames

    async def send(self, frames: Sequence[str | bytes]) -> None:
        if self._closed or self.peer is None or self.peer._closed:
            raise ConnectionError("the pipe is closed")
        for frame in frames:
            self.sent += 1
            self.peer._inbox.put_nowait(frame)

    async def receive(self) -> str | bytes | None:
        if self._closed and self._inbox.empty():
            return None
        item = await self._inbox.get()
        if item is _CLOSED:
            self._closed = True
            return None
        assert isinstance(item, (str, bytes))
        return item

    async def close(self, code: int, reason: str) -> None:
        if self._closed:
            return
        self._closed = True
        self._inbox.put_nowait(_CLOSED)  # wake our own reader
        peer = self.peer
        if peer is not None and not peer._closed:
            peer._peer_close = (code, reason)
            peer._inbox.put_nowait(_CLOSED)

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def peer_close(self) -> tuple[int, str] | None:
        return self._peer_close


def memory_pipe() -> tuple[MemoryTransport, MemoryTransport]:
    """Two connected in-memory transports (hub end, spoke end)."""
    a, b = MemoryTransport(), MemoryTransport()
    a.peer, b.peer = b, a
    return a, b
