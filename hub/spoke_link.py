"""One live spoke connection at the hub: the I/O shell around the sans-I/O ``Connection``.

A single reader task feeds frames to the protocol and routes events to per-call futures and
per-call chunk queues. Reading never waits on a consumer: a slow consumer of one stream only
delays that stream's acks, so the spoke's sender for that call pauses while every other call
on the link keeps flowing.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web
from pydantic import BaseModel

from hub import metrics
from protocol import events as ev
from protocol import messages
from protocol.connection import Connection
from protocol.errors import ErrorCode, RemoteError

log = logging.getLogger("spokehub.hub.link")

_END = object()


@dataclass
class _Pending:
    future: asyncio.Future[BaseModel]
    chunks: asyncio.Queue[Any] | None = None
    window: asyncio.Event = field(default_factory=asyncio.Event)


class StreamCall:
    """A call whose reply is preceded by streamed chunks (exec output, file download)."""

    def __init__(self, link: SpokeLink, call_id: int, pending: _Pending) -> None:
        self._link, self.call_id, self._pending = link, call_id, pending

    async def chunks(self) -> AsyncIterator[tuple[str, bytes]]:
        queue = self._pending.chunks
        assert queue is not None
        while True:
            item = await queue.get()
            if item is _END:
                return
            seq, stream, data = item
            await self._link.ack(self.call_id, seq)
            yield stream, data

    async def result(self) -> BaseModel:
        return await self._pending.future

    async def cancel(self) -> None:
        await self._link.cancel(self.call_id)


class SpokeLink:
    def __init__(
        self,
        name: str,
        ws: web.WebSocketResponse,
        conn: Connection,
        on_notification: Callable[[SpokeLink, str, BaseModel], Awaitable[None]],
    ) -> None:
        self.name = name
        self.ws = ws
        self.conn = conn
        self.connected_at = time.time()
        self.last_heartbeat: messages.SpokeHeartbeat | None = None
        self._on_notification = on_notification
        # What the spoke declared at connect time; refreshed by heartbeats where they carry it.
        self.labels: list[str] = []
        self.models: list[str] = []
        self.max_workstreams = 0
        self.workstreams = 0
        self.relay_token_hash = ""
        self._pending: dict[int, _Pending] = {}
        self._write_lock = asyncio.Lock()
        self.finished = asyncio.Event()  # set when run() has ended
        self.close_reason = ""
        self.latency_ms: float | None = None

    @property
    def closed(self) -> bool:
        return self.ws.closed

    # ------------------------------------------------------------------ output
    async def flush(self) -> None:
        async with self._write_lock:
            for frame in self.conn.data_to_send():
                if self.ws.closed:
                    return
                await self.ws.send_str(frame)

    async def close(self, code: int, reason: str) -> None:
        self.close_reason = reason
        await self.flush()
        if not self.ws.closed:
            await self.ws.close(code=code, message=reason.encode()[:120])
        self._fail_all(reason)

    # ------------------------------------------------------------------- calls
    def _start(
        self, verb: str, params: BaseModel | dict[str, Any], timeout_s: float | None, stream: bool
    ) -> tuple[int, _Pending]:
        call_id = self.conn.send_request(verb, params, timeout_s)
        pending = _Pending(
            asyncio.get_running_loop().create_future(), asyncio.Queue() if stream else None
        )
        self._pending[call_id] = pending
        return call_id, pending

    async def call(
        self, verb: str, params: BaseModel | dict[str, Any], timeout_s: float | None = None
    ) -> BaseModel:
        started = time.perf_counter()
        call_id, pending = self._start(verb, params, timeout_s, stream=False)
        await self.flush()
        outcome = "ok"
        try:
            return await pending.future
        except RemoteError as err:
            outcome = err.code.value
            raise
        except asyncio.CancelledError:
            outcome = "cancelled"
            await self.cancel(call_id)
            raise
        finally:
            metrics.CALLS.labels(verb, outcome).inc()
            metrics.CALL_SECONDS.labels(verb).observe(time.perf_counter() - started)

    async def call_stream(
        self, verb: str, params: BaseModel | dict[str, Any], timeout_s: float | None = None
    ) -> StreamCall:
        call_id, pending = self._start(verb, params, timeout_s, stream=True)
        await self.flush()
        return StreamCall(self, call_id, pending)

    async def call_upload(
        self,
        verb: str,
        params: BaseModel | dict[str, Any],
        source: AsyncIterator[bytes],
        timeout_s: float | None = None,
    ) -> BaseModel:
        """Send ``source`` as the call's up-stream, respecting the spoke's window."""
        call_id, pending = self._start(verb, params, timeout_s, stream=False)
        await self.flush()
        try:
            buf = b""
            size = self.conn.limits.chunk_bytes
            async for piece in source:
                buf += piece
                while len(buf) >= size:
                    await self._send_chunk(call_id, pending, buf[:size], eof=False)
                    buf = buf[size:]
            await self._send_chunk(call_id, pending, buf, eof=True)
            return await pending.future
        except asyncio.CancelledError:
            await self.cancel(call_id)
            raise

    async def _send_chunk(self, call_id: int, pending: _Pending, data: bytes, eof: bool) -> None:
        while not self.conn.send_chunk(call_id, "stdin", data, eof):
            if pending.future.done():
                await pending.future  # raises the call's error
                raise RemoteError(ErrorCode.INTERNAL, "spoke answered before the upload ended")
            pending.window.clear()
            waiter: asyncio.Future[Any] = asyncio.ensure_future(pending.window.wait())
            await asyncio.wait([waiter, pending.future], return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
        await self.flush()

    async def ack(self, call_id: int, seq: int) -> None:
        self.conn.ack(call_id, seq)
        await self.flush()

    async def cancel(self, call_id: int) -> None:
        self.conn.cancel(call_id)
        pending = self._pending.pop(call_id, None)
        if pending is not None:
            self._finish(pending, RemoteError(ErrorCode.CANCELLED, "call cancelled"))
        await self.flush()

    # ------------------------------------------------------------------- input
    async def run(self) -> None:
        """Read until the socket closes; runs as the aiohttp handler's body."""
        timers = asyncio.create_task(self._timers())
        try:
            async for msg in self.ws:
                if msg.type == WSMsgType.TEXT:
                    await self._handle(self.conn.receive_data(msg.data))
                elif msg.type == WSMsgType.BINARY:
                    await self._handle(self.conn.receive_data(msg.data))
                elif msg.type == WSMsgType.ERROR:
                    self.close_reason = self.close_reason or f"socket error: {self.ws.exception()}"
                    break
                await self.flush()
        finally:
            timers.cancel()
            self.close_reason = self.close_reason or "spoke disconnected"
            self._fail_all(self.close_reason)
            self.finished.set()

    async def _handle(self, events: list[ev.Event]) -> None:
        for event in events:
            if isinstance(event, ev.ResponseReceived):
                pending = self._pending.pop(event.call_id, None)
                if pending is not None:
                    self._finish(pending, event.result)
            elif isinstance(event, ev.CallFailed):
                pending = self._pending.pop(event.call_id, None)
                if pending is not None:
                    self._finish(pending, event.error)
            elif isinstance(event, ev.ChunkReceived):
                pending = self._pending.get(event.call_id)
                if pending is not None and pending.chunks is not None:
                    pending.chunks.put_nowait((event.seq, event.stream, event.data))
            elif isinstance(event, ev.WindowOpened):
                pending = self._pending.get(event.call_id)
                if pending is not None:
                    pending.window.set()
            elif isinstance(event, ev.NotificationReceived):
                if isinstance(event.params, messages.SpokeHeartbeat):
                    self.last_heartbeat = event.params
                    self.workstreams = event.params.workstreams
                    self.max_workstreams = event.params.max_workstreams or self.max_workstreams
                await self._on_notification(self, event.method, event.params)
            elif isinstance(event, ev.ProtocolViolation):
                log.warning("spoke %s: %s", self.name, event.message)
                if event.fatal:
                    await self.close(messages.CLOSE_PROTOCOL, event.message)
            elif isinstance(event, ev.PeerStale):
                log.warning("spoke %s silent for %.1fs: closing", self.name, event.silent_for)
                await self.close(messages.CLOSE_STALE, "heartbeats missed")

    def _finish(self, pending: _Pending, outcome: BaseModel | RemoteError) -> None:
        if pending.chunks is not None:
            pending.chunks.put_nowait(_END)
        pending.window.set()
        if pending.future.done():
            return
        if isinstance(outcome, RemoteError):
            pending.future.set_exception(outcome)
            pending.future.exception()  # mark retrieved: nobody may be waiting any more
        else:
            pending.future.set_result(outcome)

    def _fail_all(self, reason: str) -> None:
        for event in self.conn.connection_lost(reason):
            if isinstance(event, ev.CallFailed):
                pending = self._pending.pop(event.call_id, None)
                if pending is not None:
                    self._finish(pending, event.error)
        for pending in self._pending.values():
            self._finish(pending, RemoteError(ErrorCode.UNAVAILABLE, f"connection lost ({reason})"))
        self._pending.clear()

    async def _timers(self) -> None:
        """Deadlines and staleness are checked every second; our heartbeat goes out every
        ``heartbeat_s`` so the spoke can tell a dead hub from a quiet one."""
        last_beat = 0.0
        while not self.ws.closed:
            await asyncio.sleep(1.0)
            now = time.monotonic()
            if now - last_beat >= self.conn.limits.heartbeat_s:
                last_beat = now
                self.conn.notify("hub.heartbeat", messages.HubHeartbeat())
            await self._handle(self.conn.check_timers())
            await self.flush()
