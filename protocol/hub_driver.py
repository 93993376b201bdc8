"""The hub's end of a link: :class:`HubDriver` issues verbs, typed end to end (``await
link.call(BOX_DESTROY, BoxRef(box_id=…))`` returns a ``Destroyed``), ``call_stream`` yields
chunks then the result, ``call_upload`` sends an up-stream under the spoke's window. The
shared reader, writer and timers are :class:`protocol.link.LinkDriver`'s.

Pinned by tests/protocol/test_link.py and tests/protocol/test_tracecontext.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol

from opentelemetry import trace
from pydantic import BaseModel

from protocol import events as ev
from protocol.errors import ErrorCode, RemoteError
from protocol.link import _END, LinkDriver, ack_every
from protocol.sides import HubConnection
from protocol.tracecontext import in_trace, traceparent_of
from protocol.transport import Transport
from protocol.verbs import P, R, Verb

log = logging.getLogger("spokehub.link")

_TRACER = trace.get_tracer("spokehub.link")


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
        link, every = self._link, ack_every(self._link.conn.limits.window_chunks)
        while (item := await queue.get()) is not _END:
            seq, stream, data = item
            if (seq + 1) % every == 0:  # cumulative: see ack_every
                link.conn.ack(self.call_id, seq)
                await link.flush()
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
            # Pieces of at least half a chunk go on as they come (no copy: an upload read
            # 256 KiB at a time by the hub arrives in pieces of ~200-256 KiB, issue 14);
            # smaller ones are joined up to a chunk; larger ones are cut into chunks.
            buf = bytearray()
            size = self.conn.limits.chunk_bytes
            async for piece in source:
                if buf and len(buf) + len(piece) > size:
                    await self._send_chunk(call_id, pending, bytes(buf), eof=False)
                    buf.clear()
                start = 0
                if not buf:
                    while len(piece) - start >= size // 2:
                        part = piece if start == 0 and len(piece) <= size else \
                            piece[start:start + size]
                        await self._send_chunk(call_id, pending, part, eof=False)
                        start += len(part)
                buf += piece[start:] if start else piece
                if len(buf) >= size:
                    await self._send_chunk(call_id, pending, bytes(buf), eof=False)
                    buf.clear()
            await self._send_chunk(call_id, pending, bytes(buf), eof=True)
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

