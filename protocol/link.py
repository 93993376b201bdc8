"""The asyncio driver of a connection: one for both ends, over any :class:`Transport`.

The sans-I/O :class:`~protocol.connection.Connection` decides; this module does the I/O
around it, once, for the hub and the spoke alike (as websockets keeps an asyncio driver
beside its sans-I/O protocol): one reader feeding frames in and routing the events it
returns, one writer lock flushing what the connection queued, and one timer task for
deadlines, staleness and the application heartbeat.

Reading never waits on a consumer: chunks go to per-call queues and are acknowledged as the
consumer takes them, so a slow reader of one stream only pauses that stream's sender, never
another call on the link.

- :class:`HubDriver` issues verbs, typed end to end: ``await link.call(BOX_DESTROY,
  BoxRef(box_id=…))`` returns a ``Destroyed`` (mypy checks it), ``call_stream`` yields
  chunks then the result, ``call_upload`` sends an up-stream under the spoke's window.
- :class:`SpokeDriver` serves them: each request runs in its own task under its deadline,
  and is cancelled when the hub cancels or the link drops (the handler kills what it
  started).

Tracing (protocol/tracecontext.py): a call made while a span is current (a traced API
request) gets a dispatch span of its own, named in the request's ``tp``; the spoke's driver
makes that the parent of the handler's task. Untraced calls make no span and send no ``tp``.
Pinned by tests/protocol/test_tracecontext.py.

Pinned by tests/protocol/test_link.py (both drivers over :func:`memory_pipe`) and by every
end-to-end test.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol

from opentelemetry import trace
from pydantic import BaseModel

from protocol import events as ev
from protocol import messages
from protocol.connection import Connection
from protocol.errors import ErrorCode, RemoteError
from protocol.sides import HubConnection, SpokeConnection
from protocol.tracecontext import attach, in_trace, traceparent_of
from protocol.transport import Transport
from protocol.verbs import VERBS, P, R, Verb

log = logging.getLogger("spokehub.link")
_TRACER = trace.get_tracer("spokehub.link")
Heartbeat = Callable[[], tuple[str, BaseModel]]
OnNotification = Callable[[str, BaseModel], Awaitable[None]]
_END = object()


def batched(frames: list[str], max_bytes: int) -> list[str]:
    """``frames`` as few messages as fit under ``max_bytes`` each: JSON arrays of several
    frames, a lone frame as itself. Pinned by tests/protocol/test_link.py::
    test_a_burst_of_calls_leaves_in_one_message_when_the_peer_reads_batches."""
    if len(frames) == 1:
        return frames
    out: list[str] = []
    group: list[str] = []
    size = 2
    for frame in frames:
        cost = len(frame.encode()) + 1 if not frame.isascii() else len(frame) + 1
        if group and size + cost > max_bytes:
            out.append(group[0] if len(group) == 1 else "[" + ",".join(group) + "]")
            group, size = [], 2
        group.append(frame)
        size += cost
    if group:
        out.append(group[0] if len(group) == 1 else "[" + ",".join(group) + "]")
    return out


class Ticker:
    """One timer task for many links (a hub holds thousands): every ``tick_s`` it runs each
    registered link's :meth:`LinkDriver.tick` — deadlines, staleness, heartbeats — instead of
    a task per link waking every second. Pinned by tests/protocol/test_link.py::
    test_one_ticker_drives_the_timers_of_many_links."""

    def __init__(self, tick_s: float = 1.0) -> None:
        self.tick_s = tick_s
        self._links: dict[int, LinkDriver] = {}
        self._task: asyncio.Task[None] | None = None

    def __len__(self) -> int:
        return len(self._links)

    def add(self, link: LinkDriver) -> None:
        self._links[id(link)] = link
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())

    def discard(self, link: LinkDriver) -> None:
        self._links.pop(id(link), None)

    async def _run(self) -> None:
        while self._links:
            await asyncio.sleep(self.tick_s)
            for link in list(self._links.values()):
                if link.transport.closed or not link.tick_due():
                    continue  # an idle link costs a few attribute reads, not a coroutine
                try:
                    await link.tick()
                except Exception:  # one link's failure must not stop the others' timers
                    log.warning("%s: timer tick failed", link.name or "link", exc_info=True)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


class LinkDriver:
    """What both ends do with a connection and a transport."""

    # Event type -> the name of its handler method: one table per class, not per link (a hub
    # holds thousands). The hot ones (results, chunks, windows, requests) are plain methods;
    # those that must do I/O return an awaitable, which handle() awaits.
    DISPATCH: dict[type[ev.Event], str] = {
        ev.NotificationReceived: "_notification",
        ev.ProtocolViolation: "_violation",
        ev.PeerStale: "_stale",
        ev.HandshakeTimedOut: "_stale",
    }

    def __init__(self, conn: Connection, transport: Transport, *, name: str = "",
                 clock: Callable[[], float] = time.monotonic, tick_s: float = 1.0,
                 heartbeat: Heartbeat | None = None,
                 on_notification: OnNotification | None = None,
                 ticker: Ticker | None = None) -> None:
        self.conn, self.transport, self.name = conn, transport, name
        self.clock, self.tick_s = clock, tick_s
        self.ticker = ticker  # shared timers (the hub's); None: a timer task of its own
        # The spoke's heartbeat carries its load: always sent. The hub's only proves it is
        # alive, which any frame it sent recently already did.
        self.heartbeat_always = True
        self.heartbeat = heartbeat
        self.heartbeat_s = conn.limits.heartbeat_s
        self.on_notification = on_notification
        self.close_reason = ""
        self._write_lock = asyncio.Lock()
        self._last_beat = float("-inf")
        self._last_sent = float("-inf")  # any frame proves we are alive: no heartbeat needed
        self.batch = False  # the peer reads several frames as one JSON array (it said "batch")

    @property
    def closed(self) -> bool:
        return self.transport.closed

    # ------------------------------------------------------------------ output
    async def flush(self) -> None:
        """Write everything the connection queued, in order. One writer at a time, and a
        caller that finds one writing returns at once: the writer goes on until nothing is
        left, so frames queued meanwhile (a burst of calls) leave together — in one message
        when the peer reads batches (:attr:`batch`), one TLS record and one write."""
        if not self.conn.has_data_to_send() or self._write_lock.locked():
            return  # the common case after a frame is read: no lock, no await
        async with self._write_lock:
            if self.batch and self._concurrent():
                # Several calls in flight: let those issued in this same turn of the loop
                # join this write (a lone call is written at once: a turn costs ~0.1 ms).
                await asyncio.sleep(0)
            await self._write_all()

    def _concurrent(self) -> bool:
        """Whether more than one call is in flight on this link (see :meth:`flush`)."""
        return False

    async def drain(self) -> None:
        """Wait for the writer, and write what is left (before a close)."""
        async with self._write_lock:
            await self._write_all()

    async def _write_all(self) -> None:
        while (frames := self.conn.data_to_send()) and not self.transport.closed:
            self._last_sent = self.clock()
            try:
                await self.transport.send(batched(frames, self.conn.limits.max_frame_bytes)
                                          if self.batch else frames)
            except ConnectionError:
                return  # the reader sees the close and fails what waits

    async def notify(self, method: str, params: BaseModel) -> None:
        self.conn.notify(method, params)
        await self.flush()

    async def close(self, code: int, reason: str) -> None:
        self.close_reason = self.close_reason or reason
        await self.drain()
        await self.transport.close(code, reason[:120])
        self._lost(reason)

    # ------------------------------------------------------------------- input
    async def receive_events(self) -> list[ev.Event]:
        """The events of the next frame (the handshake reads this way); ConnectionError
        when the transport closes first."""
        data = await self.transport.receive()
        if data is None:
            raise ConnectionError("closed during the handshake")
        return self.conn.receive_data(data)

    async def run(self) -> None:
        """Read until the transport closes; every outstanding call then fails."""
        timers: asyncio.Task[None] | None = None
        if self.ticker is not None:
            self.ticker.add(self)
        else:
            timers = asyncio.get_running_loop().create_task(self._timers())
        try:
            while (data := await self.transport.receive()) is not None:
                await self.handle(self.conn.receive_data(data))
                await self.flush()
        finally:
            if timers is not None:
                timers.cancel()
            if self.ticker is not None:
                self.ticker.discard(self)
            peer = self.transport.peer_close
            self.close_reason = self.close_reason or (peer[1] if peer and peer[1] else "peer disconnected")
            self._lost(self.close_reason)

    async def handle(self, events: list[ev.Event]) -> None:
        for event in events:
            name = self.DISPATCH.get(type(event))
            if name is not None:
                pending = getattr(self, name)(event)
                if pending is not None:
                    await pending

    async def _notification(self, event: ev.NotificationReceived) -> None:
        if self.on_notification is None:
            return
        try:
            await self.on_notification(event.method, event.params)
        except RemoteError as err:  # e.g. a store that is closing: the link goes on reading
            log.debug("%s: %s not handled: %s", self.name or "peer", event.method, err)
        except Exception:  # a bug in a handler must not end the connection
            log.exception("%s: handling %s failed", self.name or "peer", event.method)

    async def _violation(self, event: ev.ProtocolViolation) -> None:
        log.warning("%s: protocol violation: %s", self.name or "peer", event.message)
        if event.fatal:
            await self.close(messages.CLOSE_PROTOCOL, event.message)

    async def _stale(self, event: ev.Event) -> None:
        log.warning("%s went silent: closing", self.name or "peer")
        await self.close(messages.CLOSE_STALE, "heartbeats missed")

    async def _timers(self) -> None:
        """Deadlines and staleness every tick; our heartbeat every ``heartbeat_s``, so the
        peer can tell a dead end from a quiet one."""
        while not self.transport.closed:
            await asyncio.sleep(self.tick_s)
            await self.tick()

    def tick_due(self) -> bool:
        """Whether :meth:`tick` has anything to do now (a heartbeat, a timer)."""
        now = self.clock()
        return self._beat_due(now) or self.conn.timers_pending(now)

    def _beat_due(self, now: float) -> bool:
        return (self.heartbeat is not None and now - self._last_beat >= self.heartbeat_s
                and (self.heartbeat_always or now - self._last_sent >= self.heartbeat_s))

    async def tick(self) -> None:
        now = self.clock()
        if self.heartbeat is not None and self._beat_due(now):
            self._last_beat = now
            self.conn.notify(*self.heartbeat())
        await self.handle(self.conn.check_timers())
        await self.flush()

    def _lost(self, reason: str) -> None:
        """The link is gone: whatever waits on it must stop waiting."""


# ----------------------------------------------------------------------- hub side
@dataclass
class _Pending:
    future: asyncio.Future[Any]
    chunks: asyncio.Queue[Any] | None = None
    window: asyncio.Event = field(default_factory=asyncio.Event)
    span: trace.Span | None = None  # the dispatch span of a traced call, ended by _finish


class CallObserver(Protocol):
    def __call__(self, verb: str, outcome: str, seconds: float) -> None: ...


class StreamCall(Generic[R]):
    """A call whose result is preceded by streamed chunks (exec output, file download)."""

    def __init__(self, link: HubDriver, call_id: int, pending: _Pending) -> None:
        self._link, self.call_id, self._pending = link, call_id, pending

    async def chunks(self) -> AsyncIterator[tuple[str, bytes]]:
        queue = self._pending.chunks
        assert queue is not None  # made by call_stream
        while (item := await queue.get()) is not _END:
            seq, stream, data = item
            self._link.conn.ack(self.call_id, seq)
            await self._link.flush()
            yield stream, data

    async def result(self) -> R:
        result: R = await self._pending.future
        return result

    async def cancel(self) -> None:
        await self._link.cancel(self.call_id)


class HubDriver(LinkDriver):
    """The hub's end: issues verbs and waits for their results."""

    DISPATCH = {**LinkDriver.DISPATCH, ev.ResponseReceived: "_response", ev.CallFailed: "_failed",
                ev.ChunkReceived: "_chunk", ev.WindowOpened: "_window"}

    conn: HubConnection

    def __init__(self, conn: HubConnection, transport: Transport, *,
                 observe: CallObserver | None = None, **kw: Any) -> None:
        super().__init__(conn, transport, **kw)
        self.observe = observe
        self._pending: dict[int, _Pending] = {}
        self._slot_waiters: list[asyncio.Future[None]] = []

    async def _slot(self, verb: Verb[P, R]) -> None:
        """Wait (at most ``Limits.queue_s``) for a free slot of the verb's class: a burst
        queues briefly instead of failing at once (send_request still answers busy after)."""
        if self.conn.can_send(verb) or self.closed:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.conn.limits.queue_s
        while not self.conn.can_send(verb) and not self.closed:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            waiter: asyncio.Future[None] = loop.create_future()
            self._slot_waiters.append(waiter)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(waiter, remaining)

    def _concurrent(self) -> bool:
        return len(self._pending) > 1

    def _slot_freed(self) -> None:
        waiters, self._slot_waiters = self._slot_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def _start(self, verb: Verb[P, R], params: P, timeout_s: float | None,
                     stream: bool) -> tuple[int, _Pending]:
        await self._slot(verb)
        span = traceparent = None
        if in_trace():  # a traced request (an API call's span is current): trace its call
            span = _TRACER.start_span(verb.name, kind=trace.SpanKind.CLIENT, attributes={
                "rpc.system": "spokehub", "rpc.method": verb.name, "spokehub.spoke": self.name})
            traceparent = traceparent_of(span)  # the spoke's handler span is its child
        try:
            call_id = self.conn.send_request(verb, params, timeout_s, traceparent=traceparent)
        except RemoteError as err:
            if span is not None:
                _end_span(span, err)
            raise
        pending = _Pending(asyncio.get_running_loop().create_future(),
                           asyncio.Queue() if stream else None, span=span)
        self._pending[call_id] = pending
        return call_id, pending

    async def call(self, verb: Verb[P, R], params: P, timeout_s: float | None = None) -> R:
        """Call ``verb`` and return its typed result, or raise its typed error. A call waits
        briefly for a free slot of its class (``Verb.kind``); cancelling the caller cancels the
        handler on the spoke; ``timeout_s`` (default: the verb's) is the call's deadline.
        Pinned by tests/protocol/test_link.py (typed results, cancellation, deadlines) and
        tests/protocol/test_calls.py."""
        started = time.perf_counter()
        call_id, pending = await self._start(verb, params, timeout_s, stream=False)
        await self.flush()
        outcome = "ok"
        try:
            result: R = await pending.future
            return result
        except RemoteError as err:
            outcome = err.code.value
            raise
        except asyncio.CancelledError:
            outcome = "cancelled"
            await self.cancel(call_id)
            raise
        finally:
            if self.observe is not None:
                self.observe(verb.name, outcome, time.perf_counter() - started)

    async def call_stream(self, verb: Verb[P, R], params: P,
                          timeout_s: float | None = None) -> StreamCall[R]:
        """Start a down-streamed call (exec output, a file download): read its chunks with
        :meth:`StreamCall.chunks`, then :meth:`StreamCall.result`; flow control per call, so
        a slow reader never stalls other calls. Pinned by tests/protocol/test_link.py::
        test_a_stream_delivers_every_chunk_in_order_under_a_small_window."""
        call_id, pending = await self._start(verb, params, timeout_s, stream=True)
        await self.flush()
        return StreamCall(self, call_id, pending)

    async def call_upload(self, verb: Verb[P, R], params: P, source: AsyncIterator[bytes],
                          timeout_s: float | None = None) -> R:
        """Send ``source`` as the call's up-stream, respecting the spoke's window. If the
        caller is cancelled or ``source`` raises, the call is cancelled on the spoke. Pinned
        by tests/protocol/test_link.py::test_an_upload_arrives_whole and
        ::test_a_broken_upload_source_cancels_the_handler_on_the_spoke."""
        call_id, pending = await self._start(verb, params, timeout_s, stream=False)
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
            result: R = await pending.future
            return result
        except BaseException:
            # Cancelled, or the source broke (the HTTP client of an upload went away): the
            # spoke's handler must not wait for the rest until the deadline, holding a slot.
            if not pending.future.done():
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

    async def cancel(self, call_id: int) -> None:
        self.conn.cancel(call_id)
        pending = self._pending.pop(call_id, None)
        if pending is not None:
            _finish(pending, RemoteError(ErrorCode.CANCELLED, "call cancelled"))
        self._slot_freed()
        await self.flush()

    def _response(self, event: ev.ResponseReceived) -> None:
        pending = self._pending.pop(event.call_id, None)
        if pending is not None:
            _finish(pending, event.result)
        if self._slot_waiters:
            self._slot_freed()

    def _failed(self, event: ev.CallFailed) -> None:
        pending = self._pending.pop(event.call_id, None)
        if pending is not None:
            _finish(pending, event.error)
        if self._slot_waiters:
            self._slot_freed()

    def _chunk(self, event: ev.ChunkReceived) -> None:
        pending = self._pending.get(event.call_id)
        if pending is not None and pending.chunks is not None:
            pending.chunks.put_nowait((event.seq, event.stream, event.data))

    def _window(self, event: ev.WindowOpened) -> None:
        pending = self._pending.get(event.call_id)
        if pending is not None:
            pending.window.set()

    def _lost(self, reason: str) -> None:
        for event in self.conn.connection_lost(reason):
            if isinstance(event, ev.CallFailed):
                pending = self._pending.pop(event.call_id, None)
                if pending is not None:
                    _finish(pending, event.error)
        for pending in self._pending.values():
            _finish(pending, RemoteError(ErrorCode.UNAVAILABLE, f"connection lost ({reason})"))
        self._pending.clear()
        self._slot_freed()


def _finish(pending: _Pending, outcome: BaseModel | RemoteError) -> None:
    if pending.chunks is not None:
        pending.chunks.put_nowait(_END)
    pending.window.set()
    if pending.span is not None:
        _end_span(pending.span, outcome)
        pending.span = None
    if pending.future.done():
        return
    if isinstance(outcome, RemoteError):
        pending.future.set_exception(outcome)
        pending.future.exception()  # mark retrieved: nobody may be waiting any more
    else:
        pending.future.set_result(outcome)


def _end_span(span: trace.Span, outcome: BaseModel | RemoteError) -> None:
    """End a call's dispatch span with its outcome: an error's kind, else OK."""
    if isinstance(outcome, RemoteError):
        span.set_attribute("spokehub.error", outcome.code.value)
        span.set_status(trace.StatusCode.ERROR, outcome.message[:200])
    span.end()


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
        link = self.link
        window = link.windows.setdefault(self.call_id, asyncio.Event())
        while not link.conn.send_chunk(self.call_id, stream, data, eof):
            window.clear()
            await window.wait()
        await link.flush()

    async def upload(self) -> AsyncIterator[bytes]:
        link = self.link
        queue = link.uploads.setdefault(self.call_id, asyncio.Queue())
        while True:
            seq, data, eof = await queue.get()
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
        self.tasks[req.call_id] = asyncio.get_running_loop().create_task(self._serve(req))

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
