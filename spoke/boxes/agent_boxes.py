"""The Docker manager's use of in-box exec agents: launch line, attach, detection, exec.

A box's container command is :func:`box_command`: a ``/bin/sh -c`` line that runs the
supervisor (spoke/boxes/inbox/supervisor.py, passed as text to ``python3 -u -c``) when
``command -v python3`` succeeds, and today's keep-alive loop otherwise — also after the
supervisor died, so killing it never ends the box. The spoke attaches to the container's
stdin/stdout (Engine attach API, ``OpenStdin``) lazily, on the box's first exec, PTY or
port, which is also how a restarted spoke finds its boxes' supervisors again: detection,
never assumption. A box whose supervisor does not answer (an image without python3, a box
made before agents existed, a dead or confused supervisor) uses ``docker exec`` for good
(terminals: Docker's TTY exec, spoke/boxes/agent_docker_tty.py; ports: ``unavailable``).

The box's log driver is ``none``: every byte of every command goes through the main
process's stdout, and the engine must not copy it into a log file.

Pinned by tests/boxes/test_exec_agent.py and the ``agent`` backend of
tests/boxes/test_conformance.py.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import functools
import logging
import re
import socket
import time
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any, TypeVar
from urllib.parse import urlencode

from spoke.boxes import docker_util as du
from spoke.boxes.agent_client import (
    AgentChannel,
    AgentConnection,
    AgentDead,
    AgentExecHandle,
)
from spoke.boxes.agent_docker_tty import DockerTtyChannel
from spoke.boxes.base import BoxError, validate_env
from spoke.boxes.docker_exec import KILL_SCRIPT, make_pidfile_path
from spoke.boxes.docker_raw_api import engine_for

log = logging.getLogger(__name__)
T = TypeVar("T")
Call = Callable[..., Awaitable[Any]]

HELLO_FIRST_WAIT_S = 0.3  # then Docker's process list says whether a supervisor runs
HELLO_TIMEOUT_S = 10.0  # a supervisor that is running but silent this long is not used
PYTHON_MARK = "python3 -u -c"
KEEPALIVE_MARK = "sleep 3600"
NO_AGENT = ("this box has no exec agent (its image has no python3, the box was made before "
            "agents existed, or the agent died)")

# "$1" is the supervisor's source. The background python3 gets the box's stdin back
# through fd 3 (an asynchronous list's stdin is /dev/null, set before its own redirections);
# TERM while waiting ends the box at once, like the keep-alive loop does. Should the
# supervisor die, bytes that are no frame (on stderr, where frames travel) tell the spoke
# at once (agent_client: garbage).
_LAUNCH = ('if command -v python3 >/dev/null 2>&1; then trap \'exit 0\' TERM; exec 3<&0; '
           'python3 -u -c "$1" <&3 3<&- & exec 3<&-; wait $!; '
           "printf '\\377\\377\\377\\377\\377\\377\\377\\377\\377' >&2; fi; ")


_BOXLIB_IMPORT = re.compile(r"^# >>> boxlib.*?^# <<< boxlib$", re.MULTILINE | re.DOTALL)


@functools.cache
def supervisor_source() -> str:
    """The one script the box runs: supervisor.py with its import of boxlib.py replaced by
    boxlib.py's text (the box has no spokehub package). Pinned by
    tests/boxes/test_exec_agent.py::test_supervisor_ships_with_the_package."""
    inbox = resources.files("spoke.boxes.inbox")
    main = inbox.joinpath("supervisor.py").read_text("utf-8")
    lib = inbox.joinpath("boxlib.py").read_text("utf-8")
    lib = lib.replace("from __future__ import annotations\n", "", 1)
    assembled, n = _BOXLIB_IMPORT.subn(lambda _m: lib, main)
    if n != 1:
        raise RuntimeError("supervisor.py has no boxlib import block to replace")
    return assembled


def box_command() -> list[str]:
    """The container command of a box with an agent (see the module docstring)."""
    return ["/bin/sh", "-c", _LAUNCH + du.KEEPALIVE_CMD[2], "sh", supervisor_source()]


def create_args(enabled: bool) -> dict[str, Any]:
    """``create_container`` keyword arguments for a box (with an agent or without)."""
    if not enabled:
        return {"command": du.KEEPALIVE_CMD}
    return {"command": box_command(), "stdin_open": True}


def host_config_args(enabled: bool) -> dict[str, Any]:
    return {"log_config": {"Type": "none", "Config": {}}} if enabled else {}


def launched_with_agent(inspect: dict[str, Any]) -> bool:
    cmd = (inspect.get("Config") or {}).get("Cmd") or []
    return len(cmd) >= 3 and cmd[:2] == ["/bin/sh", "-c"] and str(cmd[2]).startswith(_LAUNCH)


def attach_socket(api: Any, container_id: str) -> socket.socket:
    """The container's hijacked attach stream (stdin, stdout, stderr). Blocking. Only for
    an engine on a unix socket (the raw client of spoke/boxes/docker_raw_api.py)."""
    engine = engine_for(api)
    if engine is None:
        raise BoxError("exec agents need a Docker engine on a unix socket", "unavailable")
    query = urlencode({"stream": 1, "stdin": 1, "stdout": 1, "stderr": 1})
    path = engine._path("/containers/{}/attach", container_id) + "?" + query
    head = "".join(f"{k}: {v}\r\n" for k, v in engine.headers.items())
    request = (f"POST {path} HTTP/1.1\r\nHost: localhost\r\n{head}"
               "Connection: Upgrade\r\nUpgrade: tcp\r\nContent-Length: 0\r\n\r\n").encode()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(10)
        sock.connect(engine.socket_path)
        sock.sendall(request)
        status, reason, _headers = engine._read_head(sock)
        if status not in (101, 200):
            raise BoxError(f"cannot attach to container {container_id[:12]}: {status} {reason}",
                           "unavailable")
        sock.settimeout(None)
        return sock
    except BaseException:
        sock.close()
        raise


def _run_kill_script(api: Any, container_id: str, pidfile: str) -> None:
    created = api.exec_create(container_id, ["/bin/sh", "-c", KILL_SCRIPT, pidfile],
                              stdout=True, stderr=True)
    api.exec_start(created["Id"], detach=False)


def check_pty_args(cmd: builtins.list[str], env: dict[str, str] | None, rows: int,
                   cols: int) -> None:
    if not cmd or not all(isinstance(a, str) and "\x00" not in a for a in cmd):
        raise BoxError("a PTY needs a non-empty command of strings without NUL bytes",
                       "invalid")
    if not (0 < rows <= 10000 and 0 < cols <= 10000):
        raise BoxError(f"invalid terminal size {rows}x{cols}", "invalid")
    validate_env(env or {})


async def docker_tty(call: Call, api: Any, container_id: str, cmd: builtins.list[str], *,
                     env: dict[str, str] | None, workdir: str | None, rows: int,
                     cols: int) -> DockerTtyChannel:
    """A PTY for a box without an agent: ``docker exec -it`` (spoke/boxes/agent_docker_tty.py),
    killed on close through its pid file like any docker exec."""
    check_pty_args(cmd, env, rows, cols)

    async def kill(pidfile: str) -> None:
        await call(_run_kill_script, api, container_id, pidfile)

    return await DockerTtyChannel.open(api, call, container_id, cmd, env=env, workdir=workdir,
                                       rows=rows, cols=cols, kill=kill)


class BoxAgents:
    """Per-container agent connections of one manager (``None`` cached: docker exec)."""

    def __init__(self, call: Call, api: Callable[[], Awaitable[Any]]) -> None:
        self._call = call
        self._api = api
        self._conns: dict[str, AgentConnection] = {}
        self._without: set[str] = set()
        self._locks: dict[str, asyncio.Lock] = {}

    async def connection(self, container_id: str, where: str) -> AgentConnection | None:
        conn = self._conns.get(container_id)
        if conn is not None and conn.dead is None:
            return conn
        if container_id in self._without:
            return None
        lock = self._locks.setdefault(container_id, asyncio.Lock())
        async with lock:
            conn = self._conns.get(container_id)
            if conn is not None:
                if conn.dead is None:
                    return conn
                self._conns.pop(container_id, None)
                self._without.add(container_id)  # a supervisor that failed once is not used
            if container_id in self._without:
                return None
            conn = await self._detect(container_id, where)
            if conn is None:
                self._without.add(container_id)
            else:
                self._conns[container_id] = conn
            return conn

    async def _detect(self, container_id: str, where: str) -> AgentConnection | None:
        api = await self._api()
        try:
            inspect = await self._call(api.inspect_container, container_id)
            if not launched_with_agent(inspect) or engine_for(api) is None:
                return None
            sock = await self._call(attach_socket, api, container_id)
        except Exception as exc:  # noqa: BLE001 - whatever it is, docker exec still works
            log.info("no exec agent for %s: %s", where, exc)
            return None
        sock.setblocking(False)
        reader, writer = await asyncio.open_connection(sock=sock, limit=1 << 20)
        conn = AgentConnection(reader, writer, where)
        started = time.monotonic()
        try:  # a plain hello first: nothing unread piles up in a box without a supervisor
            await conn.handshake(HELLO_FIRST_WAIT_S, pad=False)
            return conn
        except (TimeoutError, AgentDead):
            pass
        padded = False
        while conn.dead is None and time.monotonic() - started < HELLO_TIMEOUT_S:
            if not await self._supervisor_running(api, container_id):
                break
            with contextlib.suppress(TimeoutError, AgentDead):
                if padded:
                    await conn.wait_hello(0.25)
                else:  # a frame a killed spoke left half-written may have eaten the hello
                    padded = True
                    await conn.handshake(0.25, pad=True)
                return conn
        await conn.close()
        log.info("no exec agent answered in %s: using docker exec", where)
        return None

    async def _supervisor_running(self, api: Any, container_id: str) -> bool:
        """Whether Docker's process list shows the supervisor (or the box still starting:
        neither it nor the keep-alive loop yet)."""
        try:
            top = await self._call(api.top, container_id)
        except Exception:  # noqa: BLE001
            return False
        cmds = [str(row[-1]) for row in top.get("Processes") or [] if row]
        if any(c.startswith(PYTHON_MARK) for c in cmds):
            return True
        return not any(c.startswith(KEEPALIVE_MARK) for c in cmds)

    async def fallback_kill(self, container_id: str, pidfile: str) -> None:
        """The docker-exec way to kill a command and its tree (its pid file)."""
        api = await self._api()
        await self._call(_run_kill_script, api, container_id, pidfile)

    def main_output(self, container_id: str) -> bytes:
        """What the box's main process wrote to its stdout while this spoke process was
        attached (b"" if it never was). Pinned by tests/web/test_dashboard.py::
        test_open_a_box_and_run_a_command."""
        conn = self._conns.get(container_id)
        return bytes(conn.main_output) if conn is not None else b""

    async def forget(self, container_id: str) -> None:
        self._without.discard(container_id)
        self._locks.pop(container_id, None)
        conn = self._conns.pop(container_id, None)
        if conn is not None:
            await conn.close()

    async def close(self) -> None:
        for cid in builtins.list(self._conns):
            await self.forget(cid)
        self._without.clear()

    # ---------------------------------------------------------------- operations
    async def exec(self, container_id: str, where: str, cmd: builtins.list[str], *,
                   env: dict[str, str] | None, workdir: str | None, timeout: float | None,
                   on_done: Callable[[AgentExecHandle], None]) -> AgentExecHandle | None:
        """Start ``cmd`` through the box's agent; None when the box has none (use docker
        exec). A supervisor that fails to confirm the start is dropped, and the command it
        may have started is killed through its pid file before docker exec runs it."""
        conn = await self.connection(container_id, where)
        if conn is None:
            return None
        pidfile = make_pidfile_path()
        request = {"kind": "exec", "argv": cmd, "env": env or {}, "cwd": workdir,
                   "pidfile": pidfile}
        try:
            chan = await conn.open(request)
        except AgentDead:
            with contextlib.suppress(Exception):
                await self.fallback_kill(container_id, pidfile)
            return None
        handle = AgentExecHandle(
            conn, chan, pidfile=pidfile, on_done=on_done, timeout=timeout,
            fallback_kill=functools.partial(self.fallback_kill, container_id))
        handle.start()
        return handle

    async def open_pty(self, container_id: str, where: str, cmd: builtins.list[str], *,
                       env: dict[str, str] | None, workdir: str | None, rows: int,
                       cols: int) -> AgentChannel | DockerTtyChannel:
        """Through the agent; without one, Docker's TTY exec (:func:`docker_tty`)."""
        check_pty_args(cmd, env, rows, cols)
        conn = await self.connection(container_id, where)
        if conn is None:
            return await docker_tty(self._call, await self._api(), container_id, cmd, env=env,
                                    workdir=workdir, rows=rows, cols=cols)
        pidfile = make_pidfile_path()
        chan = await conn.open({"kind": "pty", "argv": cmd, "env": env or {}, "cwd": workdir,
                                "pidfile": pidfile, "rows": rows, "cols": cols})
        return AgentChannel(conn, chan, pidfile=pidfile,
                            fallback_kill=functools.partial(self.fallback_kill, container_id))

    async def open_port(self, container_id: str, where: str, port: int) -> AgentChannel:
        if not isinstance(port, int) or not 0 < port < 65536:
            raise BoxError(f"invalid port {port!r}: expected 1-65535", "invalid")
        conn = await self.connection(container_id, where)
        if conn is None:
            raise BoxError(f"cannot reach port {port} in {where}: {NO_AGENT}; port previews "
                           "need an image with python3", "unavailable")
        chan = await conn.open({"kind": "tcp", "port": port})
        return AgentChannel(conn, chan, pidfile=None, fallback_kill=None)
