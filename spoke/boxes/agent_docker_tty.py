"""A PTY for a box without an exec agent: Docker's own TTY exec (``docker exec -it``).

Used by :meth:`spoke.boxes.agent_boxes.BoxAgents.open_pty` when a box has no supervisor (an
image without python3, a box made before agents, a dead agent). The exec is started through
the docker-exec wrapper, so its pid file lets the docker-exec ``KILL_SCRIPT`` end its whole
tree on close; the size is set with the Engine's exec resize. Reads are pulled from the
hijacked socket (no buffering of our own). Only for an engine on a unix socket (the raw
client of spoke/boxes/docker_raw_api.py). Pinned by
tests/boxes/test_exec_agent.py::test_a_pty_without_an_agent_uses_docker_tty_exec.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import Awaitable, Callable
from typing import Any

from spoke.boxes.base import BoxError, ExecResult
from spoke.boxes.docker_exec import make_pidfile_path, wrap_command
from spoke.boxes.docker_raw_api import engine_for

Call = Callable[..., Awaitable[Any]]
EXIT_POLL_S = 0.05


def _start_tty_exec(api: Any, container_id: str, cmd: list[str], env: dict[str, str] | None,
                    workdir: str | None, rows: int, cols: int) -> tuple[str, socket.socket]:
    """Create and start a TTY exec; return its id and hijacked socket. Blocking."""
    engine = engine_for(api)
    if engine is None:
        raise BoxError("a terminal without an exec agent needs a Docker engine on a unix "
                       "socket", "unavailable")
    exec_id = str(api.exec_create(container_id, cmd, stdout=True, stderr=True, stdin=True,
                                  tty=True, environment=env or None, workdir=workdir)["Id"])
    path = engine._path("/exec/{}/start", exec_id)
    body = json.dumps({"Tty": True, "Detach": False}).encode()
    head = "".join(f"{k}: {v}\r\n" for k, v in engine.headers.items())
    request = (f"POST {path} HTTP/1.1\r\nHost: localhost\r\n{head}"
               "Content-Type: application/json\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n"
               f"Content-Length: {len(body)}\r\n\r\n").encode() + body
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(10)
        sock.connect(engine.socket_path)
        sock.sendall(request)
        status, reason, _ = engine._read_head(sock)
        if status not in (101, 200):
            raise BoxError(f"cannot start a terminal: {status} {reason}", "unavailable")
        sock.settimeout(None)
    except BaseException:
        sock.close()
        raise
    with contextlib.suppress(Exception):  # the size may only be set once it runs
        api.exec_resize(exec_id, height=rows, width=cols)
    return exec_id, sock


class DockerTtyChannel:
    """A :class:`~spoke.boxes.base.Channel` over a Docker TTY exec."""

    def __init__(self, api: Any, call: Call, exec_id: str, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter, pidfile: str,
                 kill: Callable[[str], Awaitable[None]]) -> None:
        self._api = api
        self._call = call
        self.exec_id = exec_id
        self._reader = reader
        self._writer = writer
        self.pidfile = pidfile
        self._kill = kill
        self._closed = False

    @classmethod
    async def open(cls, api: Any, call: Call, container_id: str, cmd: list[str], *,
                   env: dict[str, str] | None, workdir: str | None, rows: int, cols: int,
                   kill: Callable[[str], Awaitable[None]]) -> DockerTtyChannel:
        pidfile = make_pidfile_path()
        exec_id, sock = await call(_start_tty_exec, api, container_id,
                                   wrap_command(pidfile, cmd), env, workdir, rows, cols)
        sock.setblocking(False)
        reader, writer = await asyncio.open_connection(sock=sock)
        return cls(api, call, exec_id, reader, writer, pidfile, kill)

    async def read(self) -> bytes:
        try:
            return await self._reader.read(1 << 16)
        except OSError:
            return b""

    async def write(self, data: bytes) -> None:
        if self._writer.is_closing():
            raise BoxError("the terminal has ended", "unavailable")
        self._writer.write(data)
        await self._writer.drain()

    async def close_write(self) -> None:
        await self.write(b"\x04")

    async def resize(self, rows: int, cols: int) -> None:
        if not (0 < rows <= 10000 and 0 < cols <= 10000):
            raise BoxError(f"invalid terminal size {rows}x{cols}", "invalid")
        await self._call(self._api.exec_resize, self.exec_id, height=rows, width=cols)

    async def wait(self) -> ExecResult:
        while True:
            info = await self._call(self._api.exec_inspect, self.exec_id)
            if not info.get("Running"):
                code = info.get("ExitCode")
                return ExecResult(int(code) if code is not None else 137, False, self._closed)
            await asyncio.sleep(EXIT_POLL_S)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(Exception):
            info = await self._call(self._api.exec_inspect, self.exec_id)
            if info.get("Running"):
                await self._kill(self.pidfile)
        self._writer.close()
