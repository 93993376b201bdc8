"""The spoke's open channels: PTY sessions and port connections into boxes (issue 14).

A channel lives exactly as long as the ``box.open`` call that made it: the handler pumps
the box's output down the call's stream, and whatever ends the call (the program exits, the
hub cancels, the deadline passes, the link is lost) closes the channel, which kills the
PTY's process tree or drops the TCP connection, so nothing is left running in the box.
``box.input`` finds a channel here by its hub-chosen id and writes to it. At most
``max_open`` channels at once per spoke (each holds a process or a connection in a box):
one more is ``busy``.

Pinned by tests/test_pty.py (the memory cluster over the fake manager and the real CLI)
and tests/protocol/test_channel_verbs.py.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
from typing import Protocol

from protocol import verbs as v
from protocol.errors import ErrorCode, RemoteError
from spoke.boxes.base import BoxManager, Channel

log = logging.getLogger("spokehub.spoke.channels")
DEFAULT_MAX_OPEN = 64
READY = "ready"  # the first (empty) chunk of a box.open stream: the channel is open
OUTPUT = "stdout"


class ChannelSend(Protocol):
    """What :meth:`Channels.serve` needs of the call (spoke.dispatcher.CallIO)."""

    async def send(self, stream: str, data: bytes, eof: bool = False) -> None: ...


class Channels:
    """The table of open channels of one spoke, by channel id."""

    def __init__(self, boxes: BoxManager, spoke_name: str, chunk_bytes: int,
                 max_open: int = DEFAULT_MAX_OPEN) -> None:
        self.boxes, self.spoke_name = boxes, spoke_name
        self.chunk_bytes, self.max_open = chunk_bytes, max_open
        self._open: dict[str, Channel] = {}
        self._box_of: dict[str, str] = {}  # channel id -> its box
        self._reserved: set[str] = set()
        self._locks: dict[str, asyncio.Lock] = {}

    def __len__(self) -> int:
        return len(self._open) + len(self._reserved)

    def _reserve(self, channel_id: str) -> None:
        if channel_id in self._open or channel_id in self._reserved:
            raise RemoteError(ErrorCode.INVALID, f"channel {channel_id} is already open")
        if len(self) >= self.max_open:
            raise RemoteError(ErrorCode.BUSY, f"too many open PTYs and port connections on "
                              f"spoke {self.spoke_name} (limit {self.max_open}); close one")
        self._reserved.add(channel_id)

    async def _open_channel(self, p: v.BoxOpen) -> Channel:
        if p.kind == "pty":
            return await self.boxes.open_pty(p.box_id, list(p.cmd), env=dict(p.env) or None,
                                             workdir=p.workdir, rows=p.rows, cols=p.cols)
        assert p.port is not None  # the model's validator: a port channel has a port
        return await self.boxes.open_port(p.box_id, p.port)

    async def serve(self, p: v.BoxOpen, io: ChannelSend) -> v.ExecDone:
        """Open the channel, announce it (an empty ``ready`` chunk), pump its output until it
        ends, and return its outcome; closed on every way out."""
        self._reserve(p.channel_id)
        try:
            channel = await self._open_channel(p)
        finally:
            self._reserved.discard(p.channel_id)
        self._open[p.channel_id] = channel
        self._box_of[p.channel_id] = p.box_id
        self._locks[p.channel_id] = asyncio.Lock()
        try:
            await io.send(READY, b"")
            while data := await channel.read():
                for start in range(0, len(data), self.chunk_bytes):
                    await io.send(OUTPUT, data[start : start + self.chunk_bytes])
            result = await channel.wait()
            return v.ExecDone(exit_code=result.exit_code, timed_out=result.timed_out,
                              cancelled=result.cancelled)
        finally:
            self._open.pop(p.channel_id, None)
            self._box_of.pop(p.channel_id, None)
            self._locks.pop(p.channel_id, None)
            with contextlib.suppress(Exception):
                await asyncio.shield(channel.close())

    async def input(self, p: v.ChannelInput) -> v.Empty:
        """Write, resize, half-close or close, in that order; one input at a time per
        channel, so bytes arrive in the order the hub sent them."""
        channel = self._open.get(p.channel_id)
        lock = self._locks.get(p.channel_id)
        if channel is None or lock is None:
            raise RemoteError(ErrorCode.NOT_FOUND, f"no open channel {p.channel_id} on spoke "
                              f"{self.spoke_name} (it ended, or was never opened)")
        async with lock:
            if p.data:
                await channel.write(base64.b64decode(p.data))
            if p.rows is not None and p.cols is not None:
                await channel.resize(p.rows, p.cols)
            if p.eof:
                await channel.close_write()
            if p.close:
                await channel.close()
        return v.Empty()

    async def close_box(self, box_id: str) -> None:
        """Close the channels into ``box_id`` (it is being destroyed): their calls then end
        with the programs' outcome instead of waiting on a box that is gone."""
        for channel_id, owner in list(self._box_of.items()):
            channel = self._open.get(channel_id)
            if owner == box_id and channel is not None:
                with contextlib.suppress(Exception):
                    await channel.close()
