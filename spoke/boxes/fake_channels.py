"""The fake manager's channels (spoke/boxes/fake_boxes.py): a local PTY and a local TCP socket.

:class:`LocalPty` runs a command as a local subprocess on a real pseudo-terminal
(``os.openpty``): its own session with the PTY as controlling terminal, so Ctrl-C, job
control and ``SIGWINCH`` on resize behave as in ``docker exec -it``. :class:`LocalPort` is the
fake's **stand-in** for a connection made from inside a box: it connects to
``127.0.0.1:port`` on the spoke machine itself (the fake has no box to reach into; the Docker
manager asks its in-box agent instead). Both are test doubles, not sandboxes.

Pinned by tests/test_pty.py and tests/test_port_preview.py (over the memory cluster).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import os
import signal
import struct
import termios

from spoke.boxes.base import BoxError, ExecResult

READ_SIZE = 64 * 1024


def set_winsize(fd: int, rows: int, cols: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def _controlling_tty() -> None:  # runs in the child, after setsid (start_new_session)
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


class LocalPty:
    """A subprocess on a PTY; reads end when it exits (and its output is drained)."""

    def __init__(self, proc: asyncio.subprocess.Process, master: int) -> None:
        self.proc, self.master = proc, master
        self._closed = False
        self._killed = False

    @classmethod
    async def spawn(cls, argv: list[str], *, cwd: str, env: dict[str, str],
                    rows: int, cols: int) -> LocalPty:
        master, slave = os.openpty()
        try:
            set_winsize(slave, rows, cols)
            proc = await asyncio.create_subprocess_exec(
                *argv, cwd=cwd, env=env, stdin=slave, stdout=slave, stderr=slave,
                start_new_session=True, preexec_fn=_controlling_tty)
        except BaseException:
            os.close(master)
            raise
        finally:
            os.close(slave)  # the child has it: EIO on the master once the child's copies go
        os.set_blocking(master, False)
        return cls(proc, master)

    async def _readable(self) -> None:
        loop = asyncio.get_running_loop()
        readable = asyncio.Event()
        loop.add_reader(self.master, readable.set)
        waiters = [asyncio.ensure_future(readable.wait()), asyncio.ensure_future(self.proc.wait())]
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            loop.remove_reader(self.master)
            for waiter in waiters:
                waiter.cancel()

    async def read(self) -> bytes:
        while not self._closed:
            try:
                data = os.read(self.master, READ_SIZE)
                return data
            except BlockingIOError:
                if self.proc.returncode is not None:
                    return b""  # exited and drained (a background child may hold the PTY)
            except OSError as err:
                if err.errno == errno.EIO:  # every slave end closed: the program is gone
                    return b""
                raise
            await self._readable()
        return b""

    async def write(self, data: bytes) -> None:
        loop = asyncio.get_running_loop()
        view = memoryview(data)
        while view and not self._closed:
            try:
                view = view[os.write(self.master, view):]
            except BlockingIOError:
                writable = asyncio.Event()
                loop.add_writer(self.master, writable.set)
                try:
                    await writable.wait()
                finally:
                    loop.remove_writer(self.master)
            except OSError as err:
                if err.errno == errno.EIO:
                    return  # the program is gone: input has nowhere to go
                raise

    async def close_write(self) -> None:
        await self.write(b"\x04")  # the terminal's EOF character (VEOF)

    async def resize(self, rows: int, cols: int) -> None:
        if not self._closed:
            set_winsize(self.master, rows, cols)  # the kernel sends SIGWINCH

    async def wait(self) -> ExecResult:
        code = await self.proc.wait()
        return ExecResult(exit_code=128 - code if code < 0 else code, timed_out=False,
                          cancelled=self._killed)

    async def close(self) -> None:
        if self.proc.returncode is None:
            self._killed = True
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.proc.wait(), 10)
        if not self._closed:
            self._closed = True
            os.close(self.master)


class LocalPort:
    """A TCP connection to ``127.0.0.1:port`` on the spoke machine: the fake's stand-in for
    a connection made inside a box."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def connect(cls, port: int, where: str) -> LocalPort:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError as err:
            raise BoxError(f"nothing answers on port {port} in {where}: "
                           f"{err.strerror or err}", "unavailable") from None
        return cls(reader, writer)

    async def read(self) -> bytes:
        try:
            return await self.reader.read(READ_SIZE)
        except (ConnectionError, OSError):
            return b""

    async def write(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def close_write(self) -> None:
        if self.writer.can_write_eof():
            with contextlib.suppress(OSError):
                self.writer.write_eof()

    async def resize(self, rows: int, cols: int) -> None:
        return None

    async def wait(self) -> ExecResult:
        return ExecResult(exit_code=0, timed_out=False, cancelled=False)

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(Exception):
            await self.writer.wait_closed()
