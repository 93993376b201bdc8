"""Execs that outlive a short break of the hub connection.

A ``box.exec`` the hub marks resumable (it carries an ``exec_id``) runs in an
:class:`ExecSession`, not in the call's handler: the session pulls the command's output into
a bounded log, each byte at an offset of the exec's combined output, and the call's handler
only pumps that log to the hub. When the connection drops, the handler ends but the session
does not: the command keeps running (its output waits in the log, and past
``MAX_AHEAD_BYTES`` the command itself waits, as a pipe would make it), and when the hub is
back it calls ``box.attach`` with the offset it had delivered to its caller; the pump resumes
from there, so the caller sees the whole output exactly once. The log keeps
``RETAIN_BYTES`` behind the pump's position, more than the link's flow-control window can have
in flight, so whatever was lost in transit is still there to send again.

A session nobody attaches to within ``DETACHED_GRACE_S`` is killed; a cancel from the hub or
the call's deadline kills it at once, as before. Finished sessions linger ``DETACHED_GRACE_S``
(at most ``MAX_FINISHED``) so a result lost in transit can be fetched again. The trust boundary
does not move: this is bookkeeping on the spoke, the process runs in its box as before.
Pinned by tests/boxes/test_exec_sessions.py and tests/test_work_survives.py::
test_an_exec_survives_a_cut_connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections import OrderedDict, deque
from collections.abc import AsyncGenerator, Callable

from protocol.errors import ErrorCode, RemoteError
from spoke.boxes.base import ExecHandle, ExecResult

log = logging.getLogger("spokehub.spoke.execs")

MAX_AHEAD_BYTES = 1024 * 1024  # output read but not yet pumped: past it, the command waits
RETAIN_BYTES = 8 * 1024 * 1024  # pumped output kept for a resend (the window is 4 MiB)
MERGE_BYTES = 256 * 1024  # output already read is pumped in pieces of up to this (one chunk)
DETACHED_GRACE_S = 60.0
MAX_FINISHED = 16


class ExecSession:
    def __init__(self, exec_id: str, handle: ExecHandle, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.exec_id, self.handle, self.clock = exec_id, handle, clock
        self.log: deque[tuple[int, str, bytes]] = deque()  # (offset, stream, data)
        self.start = 0  # offset of the oldest byte kept
        self.end = 0  # offset after the newest byte read
        self.pumped = 0  # how far the current (or last) pump got
        self.result: ExecResult | None = None
        self.error: BaseException | None = None
        self.detached_at: float | None = None  # no pump attached since (monotonic)
        self._changed = asyncio.Condition()
        self._reader = asyncio.get_running_loop().create_task(self._read())

    @property
    def finished(self) -> bool:
        return self._reader.done()

    async def _read(self) -> None:
        try:
            async for stream, data in self.handle.chunks():
                async with self._changed:
                    await self._changed.wait_for(lambda: self.end - self.pumped < MAX_AHEAD_BYTES)
                    self.log.append((self.end, stream, data))
                    self.end += len(data)
                    self._changed.notify_all()
            self.result = await self.handle.wait()
        except asyncio.CancelledError:
            raise
        except BaseException as err:  # noqa: BLE001 - handed to whoever pumps next
            self.error = err
        finally:
            async with self._changed:
                self._changed.notify_all()

    async def pump(self, offset: int) -> AsyncGenerator[tuple[str, bytes], None]:
        """The output from ``offset`` on, as it comes; then :attr:`result` is set (or the
        command's error raised). ``offset`` older than what is kept is an error: it cannot
        happen while the hub asks for no more than it delivered."""
        if offset < self.start or offset > self.end:
            raise RemoteError(ErrorCode.INVALID, f"exec {self.exec_id}: offset {offset} is outside "
                              f"the output kept ({self.start}..{self.end})")
        self.detached_at = None
        position = offset
        while True:
            async with self._changed:
                await self._changed.wait_for(functools.partial(self._more, position))
                pieces = self._after(position)
            if not pieces and self.finished:
                break
            for stream, cut, end in _merged(pieces, position):
                if cut:
                    yield stream, cut
                position = end
                async with self._changed:
                    self.pumped = max(self.pumped, position)
                    self._forget()
                    self._changed.notify_all()
        if self.error is not None:
            raise self.error

    def _after(self, position: int) -> list[tuple[int, str, bytes]]:
        """The log's pieces ending after ``position``, oldest first: scanned from the newest
        end, so a pump keeping up looks at a few pieces, not the whole retained log."""
        pieces: list[tuple[int, str, bytes]] = []
        for piece in reversed(self.log):
            if piece[0] + len(piece[2]) <= position:
                break
            pieces.append(piece)
        pieces.reverse()
        return pieces

    def _more(self, position: int) -> bool:
        return position < self.end or self.finished

    def _forget(self) -> None:
        """Drop pumped output past what a resend may need."""
        while self.log and self.log[0][0] + len(self.log[0][2]) <= self.pumped - RETAIN_BYTES:
            offset, _stream, data = self.log.popleft()
            self.start = offset + len(data)

    async def kill(self) -> None:
        await self.handle.kill()
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._reader


def _merged(pieces: list[tuple[int, str, bytes]],
            position: int) -> list[tuple[str, bytes, int]]:
    """``pieces`` from ``position`` on as (stream, bytes, end offset): consecutive pieces of
    one stream joined up to :data:`MERGE_BYTES`, so a command writing 8 KiB at a time is
    sent in a few large chunks, not thousands of small ones (issue 14). Pinned by
    tests/boxes/test_exec_merge.py."""
    out: list[tuple[str, bytes, int]] = []
    group: list[bytes] = []
    size, stream, end = 0, "", position
    for offset, name, data in pieces:
        cut = data[position - offset:] if offset < position else data
        if group and (name != stream or size + len(cut) > MERGE_BYTES):
            out.append((stream, b"".join(group), end))
            group, size = [], 0
        if cut:
            group.append(cut)
            size += len(cut)
        stream, end = name, offset + len(data)
    if group or end > position:
        out.append((stream, b"".join(group), end))
    return out


class ExecSessions:
    """The resumable execs of one spoke, by the hub's ``exec_id``."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic,
                 grace_s: float = DETACHED_GRACE_S) -> None:
        self.clock, self.grace_s = clock, grace_s
        self._live: OrderedDict[str, ExecSession] = OrderedDict()

    def __len__(self) -> int:
        return len(self._live)

    def start(self, exec_id: str, handle: ExecHandle) -> ExecSession:
        if exec_id in self._live:
            raise RemoteError(ErrorCode.INVALID, f"exec {exec_id} already exists on this spoke")
        session = ExecSession(exec_id, handle, clock=self.clock)
        self._live[exec_id] = session
        return session

    def get(self, exec_id: str) -> ExecSession:
        session = self._live.get(exec_id)
        if session is None:
            raise RemoteError(ErrorCode.NOT_FOUND, f"no exec {exec_id} on this spoke (it ended "
                              "long ago, or the spoke restarted and the command went with it)")
        return session

    def detached(self, session: ExecSession) -> None:
        """Its pump ended with the connection: keep it for a re-attach, for a while."""
        session.detached_at = self.clock()

    async def end(self, session: ExecSession) -> None:
        """Its caller is done with it (result delivered, cancelled, deadline): kill what still
        runs, and keep a finished one a while in case its result was lost in transit."""
        if not session.finished:
            await session.kill()
            self._live.pop(session.exec_id, None)
            return
        session.detached_at = self.clock()

    async def sweep(self) -> None:
        """Kill and forget what waited past the grace; keep at most MAX_FINISHED done."""
        now = self.clock()
        finished = [s for s in self._live.values() if s.finished]
        for session in list(self._live.values()):
            too_many = session.finished and len(finished) > MAX_FINISHED and session is finished[0]
            if too_many or (session.detached_at is not None and now - session.detached_at >= self.grace_s):
                if too_many:
                    finished.pop(0)
                if not session.finished:
                    log.info("exec %s was not re-attached within %.0fs: killing it",
                             session.exec_id, self.grace_s)
                await session.kill()
                self._live.pop(session.exec_id, None)

    async def close(self) -> None:
        for session in list(self._live.values()):
            await session.kill()
        self._live.clear()
