"""The exec handle machinery both managers share.

Output travels through a small bounded :class:`asyncio.Queue`. The producer (a reader
thread for Docker, reader tasks for the fake) blocks when the queue is full, so a consumer
that stops reading slows the command down instead of the spoke buffering gigabytes. The
timeout and ``kill()`` logic lives here once, so both managers report ``timed_out`` and
``cancelled`` the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Coroutine
from concurrent.futures import CancelledError as FutureCancelledError
from typing import Any

from spoke.boxes.base import ExecResult

log = logging.getLogger(__name__)

Chunk = tuple[str, bytes]

# After a kill: how long the stream may stay open with nothing flowing (a daemonised
# grandchild holding the pipe) before we cut it, and how long a full queue may sit unread
# (the consumer walked away) before we start discarding output.
KILL_STREAM_GRACE_S = 3.0
EXIT_CODE_KILLED = 137


class QueueExecHandle:
    """A bounded-queue :class:`~spoke.boxes.base.ExecHandle`; subclasses supply the I/O.

    Subclasses implement :meth:`_pump` (produce all output via :meth:`_put` or
    :meth:`_put_threadsafe`, return at EOF), :meth:`_exit_code` (wait for the process and
    return its status), :meth:`_kill_process` and :meth:`_abort_stream`.
    """

    def __init__(self, *, max_buffered: int = 64, timeout: float | None = None) -> None:
        self.max_buffered = max_buffered
        self.kill_grace_s = KILL_STREAM_GRACE_S  # tests shorten it
        # Highest number of chunks ever sitting in the queue: tests assert it stays bounded.
        self.peak_buffered = 0
        self._loop = asyncio.get_running_loop()
        self._q: asyncio.Queue[Chunk | None] = asyncio.Queue(maxsize=max_buffered)
        self._timeout = timeout
        self._started_at = time.monotonic()
        self._last_progress = self._started_at
        self._iter_started = False
        self._consumer_active = False
        self._eof_seen = False
        self._drain_lock = asyncio.Lock()
        self._discard = False
        self._producer_blocked = False
        self._pumped = asyncio.Event()
        self._timed_out = False
        self._cancelled = False
        self._kill_task: asyncio.Task[None] | None = None
        self._result: asyncio.Future[ExecResult] = self._loop.create_future()
        self._tasks: set[asyncio.Task[None]] = set()

    # ----------------------------------------------------------------- subclass hooks
    async def _pump(self) -> None:
        raise NotImplementedError

    async def _exit_code(self) -> int:
        raise NotImplementedError

    async def _kill_process(self) -> None:
        raise NotImplementedError

    def _abort_stream(self) -> None:
        """Close the output stream from our side so :meth:`_pump` returns. Thread-safe."""
        raise NotImplementedError

    # ----------------------------------------------------------------- state
    @property
    def buffered(self) -> int:
        """Chunks currently waiting for the consumer."""
        return self._q.qsize()

    @property
    def done(self) -> bool:
        return self._result.done()

    # ----------------------------------------------------------------- producer side
    async def _put(self, stream: str, data: bytes) -> None:
        self._last_progress = time.monotonic()
        if self._discard or not data:
            return
        self._producer_blocked = self._q.full()
        try:
            await self._q.put((stream, data))
        finally:
            self._producer_blocked = False
        self.peak_buffered = max(self.peak_buffered, self._q.qsize())

    def _put_threadsafe(self, stream: str, data: bytes) -> bool:
        """From a reader thread: block that thread until the queue has room.

        Returns False when the reader should stop (event loop gone)."""
        try:
            fut = asyncio.run_coroutine_threadsafe(self._put(stream, data), self._loop)
        except RuntimeError:  # loop closed
            return False
        while True:
            try:
                fut.result(timeout=1.0)
                return True
            except TimeoutError:
                if self._loop.is_closed():  # nobody will ever run the put: free the thread
                    fut.cancel()
                    return False
            except (FutureCancelledError, RuntimeError):
                return False

    def start(self) -> None:
        """Begin pumping output (and arm the timeout). Call once, from the event loop."""
        self._spawn(self._drive())
        if self._timeout is not None:
            self._spawn(self._watch_timeout(self._timeout))

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = self._loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _drive(self) -> None:
        exit_code: int | None = None
        error: Exception | None = None
        try:
            try:
                await self._pump()
            finally:
                self._pumped.set()
            exit_code = await self._exit_code()
        except asyncio.CancelledError:
            pass
        except Exception as exc:  # reported through wait()
            log.warning("exec stream failed: %s", exc)
            error = exc
        finally:
            await self._end_of_output()
        if not self._result.done():
            if exit_code is None and error is not None and not self._cancelled:
                self._result.set_exception(error)
            else:
                code = EXIT_CODE_KILLED if exit_code is None else exit_code
                self._result.set_result(ExecResult(code, self._timed_out, self._cancelled))
        for task in list(self._tasks):
            if task is not asyncio.current_task():
                task.cancel()

    async def _end_of_output(self) -> None:
        if self._discard:
            self._drain_nowait()
        try:
            self._q.put_nowait(None)
        except asyncio.QueueFull:
            await self._q.put(None)

    def _drain_nowait(self) -> None:
        """Drop queued output, keeping the end-of-output marker for whoever reads next."""
        saw_eof = False
        while True:
            try:
                saw_eof = self._q.get_nowait() is None or saw_eof
            except asyncio.QueueEmpty:
                break
        if saw_eof:
            self._q.put_nowait(None)

    async def _watch_timeout(self, timeout: float) -> None:
        await asyncio.sleep(max(0.0, timeout - (time.monotonic() - self._started_at)))
        if self._result.done() or self._cancelled:
            return
        self._timed_out = True
        await self._kill_once()

    # ----------------------------------------------------------------- consumer side
    async def chunks(self) -> AsyncIterator[Chunk]:
        """Yield output chunks in order; may be iterated by one consumer, once."""
        if self._iter_started:
            raise RuntimeError("chunks() of an exec handle can only be iterated once")
        self._iter_started = True
        self._consumer_active = True
        try:
            while not self._eof_seen:
                item = await self._q.get()
                self._last_progress = time.monotonic()
                if item is None:
                    self._eof_seen = True
                    return
                yield item
        finally:
            self._consumer_active = False

    async def wait(self) -> ExecResult:
        """Wait for the process to end. If nobody is iterating :meth:`chunks` (never
        started, or abandoned), the remaining output is discarded so the command is not
        stuck behind a full buffer."""
        if not self._consumer_active:
            async with self._drain_lock:
                self._iter_started = True
                while not self._eof_seen:
                    if await self._q.get() is None:
                        self._eof_seen = True
        return await asyncio.shield(self._result)

    async def kill(self) -> None:
        """Kill the process and its children; idempotent, a no-op once it has ended (a
        recorded pid could by then belong to another process)."""
        if self._result.done():
            return
        if not self._timed_out:
            self._cancelled = True
        await self._kill_once()

    async def _kill_once(self) -> None:
        if self._kill_task is None:
            self._kill_task = self._loop.create_task(self._kill_and_watch())
        await asyncio.shield(self._kill_task)

    async def _kill_and_watch(self) -> None:
        # The watchdog starts first so it also covers a kill that is slow to confirm.
        self._last_progress = time.monotonic()
        self._spawn(self._watchdog_after_kill())
        try:
            await self._kill_process()
        except Exception as exc:  # the watchdog still applies
            log.warning("killing exec failed: %s", exc)

    async def _watchdog_after_kill(self) -> None:
        """Make sure a killed command's handle finishes without anybody's help.

        If output stops flowing while the stream stays open, something escaped the kill
        and holds the pipe: cut the stream. If the queue stays full with nobody reading,
        the consumer walked away (a cancelled caller): discard the rest. A consumer that
        is still reading, however slowly, gets every byte."""
        while not self._pumped.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._pumped.wait(), timeout=0.5)
                return
            if time.monotonic() - self._last_progress < self.kill_grace_s:
                continue
            if self._producer_blocked:
                log.info("exec output unread %.0fs after kill; discarding", self.kill_grace_s)
                self._discard = True
                self._drain_nowait()
            else:
                log.warning("exec stream still open %.0fs after kill; closing it",
                            self.kill_grace_s)
                self._abort_stream()
                return

    def discard(self) -> None:
        """Stop buffering output, unblocking the producer: used when the box is destroyed
        under the command (so the result says ``cancelled``)."""
        if not self._result.done() and not self._timed_out:
            self._cancelled = True
        self._discard = True
        self._drain_nowait()

    async def abandon(self) -> None:
        """Kill and throw away unread output: used when the manager shuts down."""
        self._discard = True
        self._drain_nowait()
        if not self._result.done():
            await self.kill()
            self._drain_nowait()
