"""The asyncio driver of a connection: one for both ends, over any :class:`Transport`.

The sans-I/O :class:`~protocol.connection.Connection` decides; this module does the I/O
around it, once, for the hub and the spoke alike (as websockets keeps an asyncio driver
beside its sans-I/O protocol): one reader feeding frames in and routing the events it
returns, one writer lock flushing what the connection queued, and one timer task for
deadlines, staleness and the application heartbeat.

Reading never waits on a consumer: chunks go to per-call queues and are acknowledged as the
consumer takes them, so a slow reader of one stream only pauses that stream's sender, never
another call on the link.

- :class:`~protocol.hub_driver.HubDriver` issues verbs, typed end to end: ``await link.call(BOX_DESTROY,
  BoxRef(box_id=…))`` returns a ``Destroyed`` (mypy checks it), ``call_stream`` yields
  chunks then the result, ``call_upload`` sends an up-stream under the spoke's window.
- :class:`~protocol.spoke_driver.SpokeDriver` serves them: each request runs in its own task under its deadline,
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
from collections.abc import Awaitable, Callable

from pydantic import BaseModel

from protocol import events as ev
from protocol import messages
from protocol.connection import Connection
from protocol.errors import RemoteError
from protocol.transport import Transport

log = logging.getLogger("spokehub.link")
Heartbeat = Callable[[], tuple[str, BaseModel]]
OnNotification = Callable[[str, BaseModel], Awaitable[None]]
_END = object()


def batched(frames: list[str | bytes], max_bytes: int) -> list[str | bytes]:
    """``frames`` as few messages as fit under ``max_bytes`` each: JSON arrays of several
    text frames, a lone frame as itself; a binary chunk frame is never batched, it leaves
    alone in its place (order kept). Pinned by tests/protocol/test_link.py::
    test_a_burst_of_calls_leaves_in_one_message_when_the_peer_reads_batches and
    tests/protocol/test_binary_frames.py::test_binary_frames_are_never_batched."""
    if len(frames) == 1:
        return frames
    out: list[str | bytes] = []
    group: list[str] = []
    size = 2
    for frame in frames:
        if isinstance(frame, bytes):
            if group:
                out.append(group[0] if len(group) == 1 else "[" + ",".join(group) + "]")
                group, size = [], 2
            out.append(frame)
            continue
        cost = len(frame.encode()) + 1 if not frame.isascii() else len(frame) + 1
        if group and size + cost > max_bytes:
            out.append(group[0] if len(group) == 1 else "[" + ",".join(group) + "]")
            group, size = [], 2
        group.append(frame)
        size += cost
    if group:
        out.append(group[0] if len(group) == 1 else "[" + ",".join(group) + "]")
    return out


def ack_every(window_chunks: int) -> int:
    """How many consumed chunks one ``$/ack`` covers (acks are cumulative): a quarter of the
    window, so a 256 KiB-chunk stream costs the sender one ack to read per MiB, not four.
    It never stalls the sender: a sender waits only with a full window unacknowledged, and
    the receiver acks again after consuming any quarter of it (chunks not yet acked when a
    stream ends need no ack). Pinned by tests/protocol/test_link.py::
    test_a_stream_delivers_every_chunk_in_order_under_a_small_window and
    tests/protocol/test_binary_frames.py::test_acks_cover_a_quarter_of_the_window."""
    return max(1, window_chunks // 4)


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
