"""The spoke's end of a link: :class:`SpokeDriver` serves verbs, each request in its own
task under its deadline, cancelled when the hub cancels or the link drops. The shared reader,
writer and timers are :class:`protocol.link.LinkDriver`'s.

Pinned by tests/protocol/test_link.py and tests/protocol/test_tracecontext.py.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from pydantic import BaseModel

from protocol import events as ev
from protocol.errors import ErrorCode, RemoteError
from protocol.link import LinkDriver, ack_every
from protocol.sides import SpokeConnection
from protocol.tracecontext import attach
from protocol.transport import Transport
from protocol.verbs import VERBS

log = logging.getLogger("spokehub.link")



# --------------------------------------------------------------------- spoke side
class CallIO:
    """The streaming side of one call being served: chunks down, the upload up."""

    def __init__(self, link: SpokeDriver, call_id: int) -> None:
        self.link, self.call_id = link, call_id

    @property
    def link_lost(self) -> bool:
        """The connection this call came on is gone (not a cancel or a deadline): what a
        resumable handler keeps running for a re-attach over the next one."""
        return self.link.transport.closed

    async def send(self, stream: str, data: bytes, eof: bool = False) -> None:
        """Send ``data`` under the call's window, in pieces of at most ``chunk_bytes`` (so
        a handler need not know the link's chunk size); ``eof`` goes with the last piece."""
        link = self.link
        size = link.conn.limits.chunk_bytes
        if len(data) <= size:
            await self._send_one(stream, data, eof)
            return
        view = memoryview(data)
        for start in range(0, len(data), size):
            last = start + size >= len(data)
            await self._send_one(stream, bytes(view[start:start + size]), eof and last)

    async def _send_one(self, stream: str, data: bytes, eof: bool) -> None:
        link = self.link
        window = link.windows.setdefault(self.call_id, asyncio.Event())
        while not link.conn.send_chunk(self.call_id, stream, data, eof):
            window.clear()
            await window.wait()
        await link.flush()

    async def upload(self) -> AsyncIterator[bytes]:
        link = self.link
        queue = link.uploads.setdefault(self.call_id, asyncio.Queue())
        every = ack_every(link.conn.limits.window_chunks)
        while True:
            seq, data, eof = await queue.get()
            if (seq + 1) % every == 0:  # cumulative: see ack_every
                link.conn.ack(self.call_id, seq)
                await link.flush()
            yield data
            if eof:
                return


Serve = Callable[[ev.RequestReceived, CallIO], Awaitable[BaseModel]]


class SpokeDriver(LinkDriver):
    """The spoke's end: serves each verb request in a task of its own under its deadline."""

    DISPATCH = {**LinkDriver.DISPATCH, ev.RequestReceived: "_request", ev.CancelReceived: "_cancel",
                ev.ChunkReceived: "_chunk", ev.WindowOpened: "_window"}

    conn: SpokeConnection

    def __init__(self, conn: SpokeConnection, transport: Transport, serve: Serve,
                 **kw: Any) -> None:
        super().__init__(conn, transport, **kw)
        self.serve = serve
        self.tasks: dict[int, asyncio.Task[None]] = {}
        self.uploads: dict[int, asyncio.Queue[tuple[int, bytes, bool]]] = {}
        self.windows: dict[int, asyncio.Event] = {}

    def _concurrent(self) -> bool:
        return len(self.tasks) > 1

    def _request(self, req: ev.RequestReceived) -> None:
        if VERBS[req.verb].stream == "up":  # chunks may arrive before the handler reads
            self.uploads[req.call_id] = asyncio.Queue()
        task = asyncio.get_running_loop().create_task(self._serve(req))
        self.tasks[req.call_id] = task
        # A task cancelled before it first ran never reaches _serve's ``finally``: forget it
        # here too, or the session waits for it at its stop.
        task.add_done_callback(functools.partial(self._forget, req.call_id))

    def _forget(self, call_id: int, task: asyncio.Task[None]) -> None:
        if self.tasks.get(call_id) is task:
            del self.tasks[call_id]
            self.uploads.pop(call_id, None)
            self.windows.pop(call_id, None)

    def _cancel(self, event: ev.CancelReceived) -> None:
        task = self.tasks.get(event.call_id)
        if task is not None:
            task.cancel()

    def _chunk(self, event: ev.ChunkReceived) -> None:
        queue = self.uploads.get(event.call_id)
        if queue is not None:
            queue.put_nowait((event.seq, event.data, event.eof))

    def _window(self, event: ev.WindowOpened) -> None:
        window = self.windows.get(event.call_id)
        if window is not None:
            window.set()

    async def _serve(self, req: ev.RequestReceived) -> None:
        call_id = req.call_id
        if req.traceparent is not None:  # the hub traces this call: the handler joins it
            attach(req.traceparent)  # in this task's own context, gone with the task
        try:
            async with asyncio.timeout(max(0.0, req.deadline - self.clock())):
                result = await self.serve(req, CallIO(self, call_id))
            self.conn.send_result(call_id, result)
        except RemoteError as err:
            self.conn.send_error(call_id, err)
        except TimeoutError:
            self.conn.send_error(call_id, RemoteError(
                ErrorCode.TIMEOUT, f"{req.verb}: deadline exceeded on the spoke"))
        except asyncio.CancelledError:
            self.conn.send_error(call_id, RemoteError(ErrorCode.CANCELLED, f"{req.verb}: cancelled"))
        except Exception as err:  # a bug must answer the call, not hang it
            log.exception("%s failed", req.verb)
            self.conn.send_error(call_id, RemoteError(
                ErrorCode.INTERNAL, f"{req.verb}: {type(err).__name__}: {err}"))
        finally:
            self.tasks.pop(call_id, None)
            self.uploads.pop(call_id, None)
            self.windows.pop(call_id, None)
            await self.flush()

    def _lost(self, reason: str) -> None:
        self.conn.connection_lost(reason)
        for task in list(self.tasks.values()):
            task.cancel()  # a lost hub: every handler stops (and kills what it started)
