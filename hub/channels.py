"""PTY sessions and port connections into boxes, through their spoke's link (issue 14).

A :class:`ChannelSession` is one ``box.open`` call on the spoke (its output streamed down,
flow-controlled per call like exec output) plus ``box.input`` calls for what goes up:
keystrokes or request bytes (in order: one input call at a time per session), resizes,
EOF and close. Closing the session, or cancelling its reader, cancels the ``box.open`` call,
and the spoke then closes the channel (spoke/channels.py): nothing is left running in the
box. The PTY WebSocket (hub/pty_api.py) and the port preview proxy (hub/preview.py) are
built on it.

Pinned by tests/test_pty.py and tests/test_port_preview.py.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import shlex
from collections.abc import AsyncIterator
from typing import Any

from hub.audit import audited
from hub.boxes import BoxService
from hub.spoke_calls import ChunkStream, SpokeCalls
from protocol import verbs as v
from protocol.errors import ErrorCode, RemoteError
from protocol.tokens import new_id

log = logging.getLogger("spokehub.hub.channels")
READY = "ready"  # spoke/channels.py: the first chunk of a box.open stream


class ChannelSession:
    """One open channel: read :meth:`output`, then :meth:`result`; write with the rest."""

    def __init__(self, box_id: str, channel_id: str, link: SpokeCalls,
                 call: ChunkStream[v.ExecDone]) -> None:
        self.box_id, self.id, self.link, self.call = box_id, channel_id, link, call
        self._lock = asyncio.Lock()
        self._chunks = call.chunks()
        self.done = False

    async def _ready(self) -> None:
        """Wait for the spoke's ``ready`` chunk: input sent before it would find no channel.
        A failed open raises its typed error here."""
        async for stream, _data in self._chunks:
            if stream == READY:
                return
        await self.call.result()  # ended before it was open: raises the spoke's error
        raise RemoteError(ErrorCode.INTERNAL, "the spoke ended the channel before opening it")

    async def output(self) -> AsyncIterator[bytes]:
        """The box's bytes as they come; ends when the channel ends."""
        async for _stream, data in self._chunks:
            if data:
                yield data

    async def result(self) -> v.ExecDone:
        outcome = await self.call.result()
        self.done = True
        return outcome

    async def _input(self, **fields: Any) -> None:
        with v.validating(v.BOX_INPUT):
            params = v.ChannelInput(channel_id=self.id, **fields)
        async with self._lock:
            await self.link.call(v.BOX_INPUT, params)

    async def write(self, data: bytes) -> None:
        for start in range(0, len(data), v.MAX_INPUT_BYTES):
            piece = data[start : start + v.MAX_INPUT_BYTES]
            await self._input(data=base64.b64encode(piece).decode())

    async def resize(self, rows: int, cols: int) -> None:
        await self._input(rows=rows, cols=cols)

    async def close_write(self) -> None:
        await self._input(eof=True)

    async def close(self) -> None:
        """End it now (idempotent): the spoke kills the PTY's processes or drops the TCP
        connection when its ``box.open`` call is cancelled."""
        if not self.done:
            self.done = True
            with contextlib.suppress(Exception):
                await self.call.cancel()


class ChannelService:
    """Opens channels for the API and the preview proxy, with the box checks of
    :class:`~hub.boxes.BoxService` (live, not paused, its spoke connected) and an audit row."""

    def __init__(self, boxes: BoxService) -> None:
        self.boxes = boxes

    async def _open(self, params: v.BoxOpen) -> ChannelSession:
        box = await self.boxes._usable_box(params.box_id)
        link = await self.boxes._link(box["spoke"])
        call = await link.call_stream(v.BOX_OPEN, params)
        session = ChannelSession(params.box_id, params.channel_id, link, call)
        try:
            await session._ready()
        except BaseException:
            await session.close()
            raise
        return session

    async def open_pty(self, box_id: str, cmd: list[str], *, env: dict[str, str] | None = None,
                       workdir: str | None = None, rows: int = 24,
                       cols: int = 80) -> ChannelSession:
        """A PTY running ``cmd`` in the box (like ``docker exec -it``)."""
        with v.validating(v.BOX_OPEN):
            params = v.BoxOpen(box_id=box_id, channel_id=new_id("ch"), kind="pty", cmd=cmd,
                               env=env or {}, workdir=workdir, rows=rows, cols=cols)
        box = await self.boxes._usable_box(box_id)
        async with audited(self.boxes.store, "box.pty", box_id, shlex.join(cmd)[:500],
                           spoke=box["spoke"]):
            return await self._open(params)

    async def open_port(self, box_id: str, port: int) -> ChannelSession:
        """A TCP connection to ``port`` inside the box, made from within it."""
        with v.validating(v.BOX_OPEN):
            params = v.BoxOpen(box_id=box_id, channel_id=new_id("ch"), kind="port", port=port)
        # Not audited per connection (a page load makes dozens): the preview link is.
        return await self._open(params)
