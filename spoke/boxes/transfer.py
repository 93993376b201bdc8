"""Moving file data between the event loop and the Docker manager's worker threads.

The docker SDK (and the raw unix-socket client beside it) block, so the Docker side of a file
transfer runs in a worker thread while its other side is an async iterator on the event loop
(an upload arriving from the hub chunk by chunk, a download going out). These two bridges join
them with at most a few chunks in flight, so a transfer of any size costs the spoke a bounded,
small amount of memory (issue 8 item 6: a buffered 200 MB upload took the spoke from 62 MB to
695 MB RSS). Either side can give up: a cancelled handler stops the thread at its next chunk,
and a thread that fails ends the async side with its exception.

Pinned by tests/boxes/test_conformance_files.py (streamed put/get, early close) and
tests/test_box_hardening.py (the spoke's RSS during a 100 MB upload and download).
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import Executor
from typing import Any, TypeVar

T = TypeVar("T")
POLL_S = 0.5  # how often a blocked worker thread looks whether the other side gave up


class _Stop(Exception):
    """The event-loop side of a bridge gave up (cancelled, closed, or the loop is gone)."""


class PullFromLoop:
    """A blocking iterator, for a worker thread, over an async iterator on the event loop.

    A task on the loop (:meth:`pump`) reads up to ``ahead`` chunks in advance into a
    thread-safe queue, so the thread never waits a loop round trip per chunk and the loop
    never blocks on the thread: both sides work at once, with at most ``ahead`` chunks held
    (issue 14: one chunk at a time left each side idle while the other worked).
    :meth:`cancel` (from the loop) makes the thread's iteration stop with :class:`_Stop`
    within :data:`POLL_S`. An exception of the source is kept in :attr:`error` as well as
    raised in the thread after the chunks before it, so the caller can re-raise it unchanged
    whatever the thread's code made of it. Pinned by tests/boxes/test_transfer.py."""

    def __init__(self, loop: asyncio.AbstractEventLoop, source: AsyncIterator[bytes],
                 ahead: int = 4) -> None:
        self.loop, self.source = loop, source
        self.error: BaseException | None = None
        self._cancelled = False
        self._items: queue.SimpleQueue[tuple[bytes | None, BaseException | None]] = \
            queue.SimpleQueue()
        self._room = asyncio.Semaphore(ahead)

    async def pump(self) -> None:
        """On the loop: move the source's chunks into the queue, ``ahead`` at most waiting."""
        try:
            while True:
                await self._room.acquire()
                try:
                    chunk = await anext(self.source)
                except StopAsyncIteration:
                    self._items.put((None, None))
                    return
                self._items.put((chunk, None))
        except asyncio.CancelledError:
            self._items.put((None, _Stop("the transfer was abandoned")))
            raise
        except BaseException as exc:  # noqa: BLE001 - handed to the thread, kept for the caller
            self.error = exc
            self._items.put((None, exc))

    def _taken(self) -> None:
        self._room.release()

    def __iter__(self) -> Iterator[bytes]:
        while True:
            if self._cancelled:
                raise _Stop("the transfer was abandoned")
            try:
                chunk, error = self._items.get(timeout=POLL_S)
            except queue.Empty:
                if self.loop.is_closed():
                    raise _Stop("the event loop is gone") from None
                continue
            if error is not None:
                raise error
            if chunk is None:
                return
            try:
                self.loop.call_soon_threadsafe(self._taken)
            except RuntimeError as exc:  # loop closed
                raise _Stop("the event loop is gone") from exc
            yield chunk

    def cancel(self) -> None:
        """From the loop: stop the thread's iteration (idempotent)."""
        self._cancelled = True
        self._items.put((None, _Stop("the transfer was abandoned")))


class PushToLoop:
    """A bounded channel from a worker thread (:meth:`put`, :meth:`finish`) to an async
    consumer (:meth:`chunks`). ``put`` blocks the thread only while ``maxsize`` chunks wait
    (it hands a chunk over without waiting for the loop to take it: no round trip per
    chunk), and returns False once the consumer has gone (:meth:`close`): the thread should
    then stop. Pinned by tests/boxes/test_transfer.py."""

    def __init__(self, loop: asyncio.AbstractEventLoop, maxsize: int = 4) -> None:
        self._loop = loop
        self._q: asyncio.Queue[tuple[bool, Any]] = asyncio.Queue()
        self._room = threading.Semaphore(maxsize)
        self._closed = False

    def _send(self, item: tuple[bool, Any]) -> bool:
        while not self._room.acquire(timeout=POLL_S):
            if self._closed or self._loop.is_closed():
                return False
        if self._closed:
            self._room.release()  # let a further waiter see it too
            return False
        try:
            self._loop.call_soon_threadsafe(self._q.put_nowait, item)
        except RuntimeError:  # loop closed
            return False
        return True

    def put(self, data: bytes) -> bool:
        """From the thread: hand over one chunk (blocks while the channel is full)."""
        return self._send((False, data))

    def finish(self, error: BaseException | None = None) -> None:
        """From the thread: the end of the data, or the error that ended it."""
        self._send((True, error))

    async def chunks(self) -> AsyncIterator[bytes]:
        while True:
            end, value = await self._q.get()
            self._room.release()
            if end:
                if value is not None:
                    raise value
                return
            yield value

    def close(self) -> None:
        """From the loop: the consumer is gone; unblock and stop the thread."""
        self._closed = True
        self._room.release()
        while True:
            try:
                self._q.get_nowait()
            except asyncio.QueueEmpty:
                return


async def stream_from_thread(pool: Executor, produce: Callable[[PushToLoop], None],
                             maxsize: int = 4) -> AsyncIterator[bytes]:
    """Run ``produce(channel)`` in ``pool`` and yield what it puts, as it puts it.

    An exception of ``produce`` is raised here after the chunks before it. Closing this
    generator early (the caller gave up) makes the thread's next ``put`` return False; the
    thread is not waited for, so a blocked Docker read never holds the caller."""
    loop = asyncio.get_running_loop()
    channel = PushToLoop(loop, maxsize)

    def run() -> None:
        try:
            produce(channel)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            channel.finish(exc)
        else:
            channel.finish(None)

    done = loop.run_in_executor(pool, run)
    try:
        async for chunk in channel.chunks():
            yield chunk
        await done
    finally:
        channel.close()


async def feed_thread(pool: Executor, source: AsyncIterator[bytes],
                      consume: Callable[[Iterator[bytes]], T]) -> T:
    """Run ``consume(chunks)`` in ``pool``, its ``chunks`` pulled from ``source`` on the loop
    a few ahead of it; return its result.

    If ``source`` fails, its exception is raised here unchanged (whatever ``consume`` made
    of it); if this call is cancelled, ``consume``'s iteration stops within
    :data:`POLL_S` (with an exception of its own) and the cancellation goes on. Up to four
    chunks are read ahead of ``consume`` (:class:`PullFromLoop`)."""
    loop = asyncio.get_running_loop()
    feed = PullFromLoop(loop, source)
    pump = loop.create_task(feed.pump())
    done = loop.run_in_executor(pool, consume, iter(feed))
    try:
        return await asyncio.shield(done)
    except asyncio.CancelledError:
        feed.cancel()
        done.add_done_callback(_ignore_result)
        raise
    except BaseException:
        if feed.error is not None:
            raise feed.error from None
        raise
    finally:
        pump.cancel()  # the thread stopped early (or was abandoned): stop reading the source


def _ignore_result(fut: asyncio.Future[Any]) -> None:
    with contextlib.suppress(BaseException):
        fut.result()
