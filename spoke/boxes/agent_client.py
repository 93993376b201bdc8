"""The spoke's end of a box's in-box supervisor: one connection per box, many channels.

The connection is the container's attach socket (spoke/boxes/agent_launch.py makes it),
read by one asyncio task that never blocks on a consumer: each channel's output goes to its
own deque, bounded by the supervisor's credit window (it stops reading a child once
:data:`~spoke.boxes.agent_frames.WINDOW` bytes are unacknowledged, and we acknowledge only
what a consumer took). So one slow reader never stalls the box's other channels, and output
is bounded in memory at both ends.

Nothing here is trusted for security: the handle's timeout and kill come from
:class:`~spoke.boxes.streaming.QueueExecHandle` (outside the box), and a supervisor that does
not confirm a kill in :data:`AGENT_KILL_TIMEOUT_S` is declared dead: the docker-exec
``KILL_SCRIPT`` on the command's pid file finishes the job (``fallback_kill``). Pinned by
tests/boxes/test_exec_agent.py and the ``agent`` backend of tests/boxes/test_conformance.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from spoke.boxes import agent_frames as af
from spoke.boxes.base import BoxError, ExecResult
from spoke.boxes.streaming import EXIT_CODE_KILLED, QueueExecHandle

log = logging.getLogger(__name__)

AGENT_REPLY_TIMEOUT_S = 5.0  # an OPEN unanswered this long: the supervisor is declared dead
AGENT_KILL_TIMEOUT_S = 3.0  # a KILL not confirmed this long: docker exec kills instead
ACK_BATCH = 64 * 1024  # acknowledge consumed output in batches of at most this


class AgentDead(BoxError):
    """The box's supervisor is gone, silent or confused: use docker exec."""

    code = "unavailable"


class _Chan:
    def __init__(self, cid: int) -> None:
        self.cid = cid
        self.out: deque[tuple[str, bytes]] = deque()
        self.more = asyncio.Event()
        self.eof = False
        self.opened: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.exit: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.in_unacked = 0
        self.credit = asyncio.Event()
        self.credit.set()
        self.error: BoxError | None = None

    def end(self, error: BoxError | None = None) -> None:
        if error is not None and self.error is None and not self.exit.done():
            self.error = error
        self.eof = True
        self.more.set()
        self.credit.set()
        for fut in (self.opened, self.exit):
            if not fut.done():
                fut.set_exception(error or AgentDead("the channel ended"))
                fut.exception()  # retrieved: nobody may be waiting


MAIN_OUTPUT_KEPT = 512 * 1024  # the last bytes of a box's main process output kept


class AgentConnection:
    """One box's supervisor over a stream (the container's attach socket)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 where: str) -> None:
        self.reader = reader
        self.writer = writer
        self.where = where
        self.dead: str | None = None
        self._chans: dict[int, _Chan] = {}
        self._next = secrets.randbelow(1 << 30) + 1  # ids unlike another spoke process's
        self._hello: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._task = asyncio.get_running_loop().create_task(self._read_loop())
        self.info: dict[str, Any] = {}
        # What reached the container's stdout while we were attached (the supervisor's
        # frames travel on its stderr): `box logs` of an agent box. Bounded.
        self.main_output = bytearray()
        # Echoed in the supervisor's HELLO: a reply to another attach (Docker may hand us
        # output produced before we attached) is not ours.
        self.session = secrets.token_hex(8)

    # ---------------------------------------------------------------- life
    async def handshake(self, timeout: float, *, pad: bool = True) -> dict[str, Any]:
        """Say hello (after the sync pad) and wait ``timeout`` for the answer."""
        first = b"\x00" * af.SYNC_PAD if pad else b""
        hello = af.encode_json(af.HELLO, 0, {"v": 1, "session": self.session}, magic=True)
        await self._send(first + hello)
        self.info = await asyncio.wait_for(asyncio.shield(self._hello), timeout)
        return self.info

    async def wait_hello(self, timeout: float) -> dict[str, Any]:
        """Wait ``timeout`` more for the answer to :meth:`handshake`'s hello."""
        self.info = await asyncio.wait_for(asyncio.shield(self._hello), timeout)
        return self.info

    def kill_connection(self, why: str) -> None:
        """Stop trusting this supervisor: every channel ends with :class:`AgentDead`."""
        if self.dead is None:
            self.dead = why
            log.warning("exec agent of %s is not used any more: %s", self.where, why)
        err = AgentDead(f"the exec agent of {self.where} is gone: {why}")
        for chan in list(self._chans.values()):
            chan.end(err)
        self._chans.clear()
        if not self._hello.done():
            self._hello.set_exception(err)
            self._hello.exception()
        with contextlib.suppress(Exception):
            self.writer.close()
        if self._task is not asyncio.current_task():
            self._task.cancel()

    async def close(self) -> None:
        self.kill_connection("closed")
        with contextlib.suppress(BaseException):
            await self._task

    # ---------------------------------------------------------------- I/O
    async def _send(self, data: bytes) -> None:
        if self.dead is not None:
            raise AgentDead(f"the exec agent of {self.where} is gone: {self.dead}")
        try:
            self.writer.write(data)
            if self.writer.transport.get_write_buffer_size() > 1 << 20:
                await asyncio.wait_for(self.writer.drain(), AGENT_REPLY_TIMEOUT_S)
        except (OSError, TimeoutError) as exc:
            self.kill_connection(f"cannot write to it ({exc or type(exc).__name__})")
            raise AgentDead(f"the exec agent of {self.where} is gone: {self.dead}") from exc

    def send_nowait(self, data: bytes) -> None:
        if self.dead is None:
            try:
                self.writer.write(data)
            except OSError as exc:
                self.kill_connection(f"cannot write to it ({exc})")

    async def _read_loop(self) -> None:
        docker_stream = af.DockerStreamDecoder()
        frames = af.FrameDecoder()
        why = "its output stream ended"
        try:
            while True:
                data = await self.reader.read(1 << 18)
                if not data:
                    break
                for stream, payload in docker_stream.feed(data):
                    if stream != 2:  # stdout: the box's main process output, for logs
                        self.main_output += payload
                        del self.main_output[:-MAIN_OUTPUT_KEPT]
                        continue
                    for frame in frames.feed(payload):
                        self._dispatch(frame)
        except af.FrameError as exc:
            why = f"it sent garbage ({exc})"
        except (OSError, asyncio.IncompleteReadError) as exc:
            why = f"its stream failed ({exc})"
        except asyncio.CancelledError:
            return
        self.kill_connection(why)

    def _dispatch(self, frame: af.Frame) -> None:
        if frame.type == af.HELLO:
            info = frame.json()
            if not self._hello.done() and info.get("session") == self.session:
                self._hello.set_result(info)
            return
        chan = self._chans.get(frame.channel)
        if frame.type == af.ERROR and chan is None:
            log.warning("exec agent of %s reports: %s", self.where, frame.json().get("message"))
            return
        if chan is None:
            return  # another spoke process's channel, or one we forgot
        if frame.type in (af.STDOUT, af.STDERR):
            if frame.payload:
                chan.out.append(("stdout" if frame.type == af.STDOUT else "stderr",
                                 frame.payload))
                chan.more.set()
        elif frame.type == af.OPENED:
            if not chan.opened.done():
                chan.opened.set_result(frame.json())
        elif frame.type == af.ACK:
            chan.in_unacked = max(0, chan.in_unacked - frame.count())
            if chan.in_unacked < af.WINDOW:
                chan.credit.set()
        elif frame.type == af.EXIT:
            code = frame.json().get("code")
            if not isinstance(code, int):
                raise af.FrameError(f"EXIT on channel {chan.cid} without an integer code")
            if not chan.opened.done():
                chan.opened.set_result({"pid": None})
            if not chan.exit.done():
                chan.exit.set_result(code)
            chan.eof = True
            chan.more.set()
            self._chans.pop(chan.cid, None)
        elif frame.type == af.ERROR:
            body = frame.json()
            code = body.get("code") if body.get("code") in ("unavailable", "invalid") else None
            chan.end(BoxError(f"{self.where}: {body.get('message', 'error')}",
                              code or "internal"))
            self._chans.pop(chan.cid, None)

    # ---------------------------------------------------------------- channels
    async def open(self, request: dict[str, Any]) -> _Chan:
        """Open a channel; return once the supervisor confirmed it (or :class:`AgentDead`)."""
        cid = self._next
        self._next = self._next + 1 if self._next < 0xFFFFFFF0 else 1
        chan = _Chan(cid)
        self._chans[cid] = chan
        await self._send(af.encode_json(af.OPEN, cid, request))
        try:
            await asyncio.wait_for(asyncio.shield(chan.opened), AGENT_REPLY_TIMEOUT_S)
        except TimeoutError:
            self.kill_connection(f"no answer to an open in {AGENT_REPLY_TIMEOUT_S:.0f}s")
            raise AgentDead(f"the exec agent of {self.where} did not answer") from None
        return chan

    async def write(self, chan: _Chan, data: bytes) -> None:
        view = memoryview(data)
        while view:
            while chan.in_unacked >= af.WINDOW and not chan.eof:
                chan.credit.clear()
                await chan.credit.wait()
            if chan.eof:
                raise BoxError(f"{self.where}: the stream has ended", "unavailable")
            piece = bytes(view[:af.MAX_IN])
            view = view[len(piece):]
            chan.in_unacked += len(piece)
            await self._send(af.encode(af.DATA, chan.cid, piece))

    async def next_chunk(self, chan: _Chan) -> tuple[str, bytes] | None:
        """The channel's next output, None at its end."""
        while not chan.out:
            if chan.eof:
                return None
            chan.more.clear()
            await chan.more.wait()
        return chan.out.popleft()

    def control(self, ftype: int, chan: _Chan, obj: dict[str, Any] | None = None) -> None:
        self.send_nowait(af.encode_json(ftype, chan.cid, obj) if obj is not None
                         else af.encode(ftype, chan.cid))

    def forget(self, chan: _Chan) -> None:
        """Stop listening to a channel (the supervisor is told to close it)."""
        if self._chans.pop(chan.cid, None) is not None:
            self.control(af.CLOSE, chan)
        chan.end()


FallbackKill = Callable[[str], Awaitable[None]]  # run docker-exec KILL_SCRIPT on a pid file


class AgentExecHandle(QueueExecHandle):
    """An :class:`~spoke.boxes.base.ExecHandle` on an agent channel."""

    def __init__(self, conn: AgentConnection, chan: _Chan, *, pidfile: str,
                 fallback_kill: FallbackKill, on_done: Callable[[AgentExecHandle], None],
                 timeout: float | None, max_buffered: int = 64) -> None:
        super().__init__(max_buffered=max_buffered, timeout=timeout)
        self.conn = conn
        self.chan = chan
        self.pidfile = pidfile
        self._fallback_kill = fallback_kill
        self._on_done = on_done

    async def _pump(self) -> None:
        unacked = 0
        try:
            while True:
                item = await self.conn.next_chunk(self.chan)
                if item is None:
                    return
                await self._put(*item)
                unacked += len(item[1])
                if unacked >= ACK_BATCH or not self.chan.out:
                    self.conn.send_nowait(af.ack(self.chan.cid, unacked))
                    unacked = 0
        finally:
            self._on_done(self)

    async def _exit_code(self) -> int:
        try:
            return await self.chan.exit
        except AgentDead:
            if self._kill_task is not None:  # finish the kill (maybe docker exec's) first
                with contextlib.suppress(Exception):
                    await asyncio.shield(self._kill_task)
            if self._cancelled or self._timed_out:
                return EXIT_CODE_KILLED
            # The supervisor died under the command: make sure nothing is left running.
            with contextlib.suppress(Exception):
                await self._fallback_kill(self.pidfile)
            raise

    async def _kill_process(self) -> None:
        self.conn.control(af.KILL, self.chan)
        try:
            await asyncio.wait_for(asyncio.shield(self.chan.exit), AGENT_KILL_TIMEOUT_S)
            return
        except TimeoutError:
            self.conn.kill_connection(f"a kill was not confirmed in {AGENT_KILL_TIMEOUT_S:.0f}s")
        except (AgentDead, BoxError):
            pass
        await self._fallback_kill(self.pidfile)

    def _abort_stream(self) -> None:
        self._loop.call_soon_threadsafe(self.conn.forget, self.chan)


class AgentChannel:
    """A :class:`~spoke.boxes.base.Channel` (PTY or TCP) on an agent channel."""

    def __init__(self, conn: AgentConnection, chan: _Chan, *, pidfile: str | None,
                 fallback_kill: FallbackKill | None) -> None:
        self.conn = conn
        self.chan = chan
        self.pidfile = pidfile
        self._fallback_kill = fallback_kill
        self._closed = False

    async def read(self) -> bytes:
        item = await self.conn.next_chunk(self.chan)
        if item is None:
            return b""
        self.conn.send_nowait(af.ack(self.chan.cid, len(item[1])))
        return item[1]

    async def write(self, data: bytes) -> None:
        await self.conn.write(self.chan, data)

    async def close_write(self) -> None:
        self.conn.control(af.EOF, self.chan)

    async def resize(self, rows: int, cols: int) -> None:
        if not (0 < rows <= 10000 and 0 < cols <= 10000):
            raise BoxError(f"invalid terminal size {rows}x{cols}", "invalid")
        self.conn.control(af.RESIZE, self.chan, {"rows": rows, "cols": cols})

    async def wait(self) -> ExecResult:
        try:
            code = await asyncio.shield(self.chan.exit)
        except AgentDead:
            code = EXIT_CODE_KILLED
        return ExecResult(code, False, self._closed)

    async def close(self) -> None:
        if self._closed or self.chan.exit.done():
            self._closed = True
            return
        self._closed = True
        self.conn.control(af.KILL, self.chan)
        try:
            await asyncio.wait_for(asyncio.shield(self.chan.exit), AGENT_KILL_TIMEOUT_S)
        except TimeoutError:
            if self.pidfile and self._fallback_kill is not None:
                await self._fallback_kill(self.pidfile)
            self.conn.forget(self.chan)
        except BoxError:
            pass
