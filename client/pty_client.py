"""A terminal in a box through the hub: ``hub box exec -it`` (issue 14).

:func:`open_pty` dials the hub's ``GET /api/boxes/{id}/pty`` WebSocket with the same
certificate pin as :class:`~client.http_client.HubClient` (checked on the TLS socket before
the API key is sent), over client/tls_socket.py's :class:`LockedTlsSocket`: websockets reads
in a thread while this one writes, which an ``ssl.SSLSocket`` does not survive.
:func:`run_terminal` is what ``docker exec -it`` does with it: the local terminal in raw mode
(restored on exit and on errors), keystrokes up as binary messages (so Ctrl-C reaches the
box's program as a byte, like any key), the box's bytes to stdout, ``SIGWINCH`` sent as a
resize, and the program's exit code returned.

Pinned by tests/test_pty.py (tmux drives the real CLI) and tests/test_multihub.py.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import socket
import ssl
import sys
import threading
from collections.abc import Callable
from typing import Any, cast
from urllib.parse import urlencode

from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from client.errors import api_error
from client.http_client import HubClient
from client.tls_socket import LockedTlsSocket
from protocol.errors import ErrorCode, RemoteError

NOT_A_TTY = "the input device is not a TTY"


def open_pty(client: HubClient, box_id: str, cmd: list[str], *, rows: int = 24, cols: int = 80,
             env: dict[str, str] | None = None, workdir: str | None = None) -> ClientConnection:
    """The PTY WebSocket of ``box_id`` running ``cmd`` (use it as a context manager);
    typed errors for a refusal."""
    query: list[tuple[str, str]] = [("cmd", arg) for arg in cmd]
    query += [("rows", str(rows)), ("cols", str(cols))]
    query += [("env", f"{k}={val}") for k, val in (env or {}).items()]
    if workdir:
        query.append(("workdir", workdir))
    host, port = client._host, client._port
    try:
        raw = socket.create_connection((host, port), timeout=30)
    except OSError as err:
        raise client._unreachable(err) from None
    sock: socket.socket | LockedTlsSocket = raw
    try:
        if client._https:
            # Not an ssl.SSLSocket: websockets reads it in a thread while this one writes
            # (client/tls_socket.py says why that needs the lock).
            sock = LockedTlsSocket(raw, client._ssl_context(), server_hostname=host)
    except OSError as err:
        raw.close()
        raise client._unreachable(err) from None
    try:
        client._check_pin(sock)
        sock.settimeout(None)
        return connect(f"ws://{host}:{port}/api/boxes/{box_id}/pty?{urlencode(query)}",
                       sock=cast(socket.socket, sock),  # socket-like: what websockets uses
                       max_size=None, open_timeout=60,
                       additional_headers={"Authorization": f"Bearer {client.api_key}"})
    except InvalidStatus as err:
        sock.close()
        raise api_error(err.response.status_code, bytes(err.response.body or b"")) from None
    except (OSError, ssl.SSLError) as err:
        sock.close()
        raise client._unreachable(err) from None
    except BaseException:
        sock.close()
        raise


def _say(message: str) -> None:
    sys.stderr.write(message + "\r\n" if not message.endswith("\n") else message)
    sys.stderr.flush()


class _Outcome:
    def __init__(self) -> None:
        self.code = 1
        self.done = threading.Event()


def _receive(ws: ClientConnection, out: int, outcome: _Outcome, wake: int) -> None:
    """The box's bytes to ``out``; the exit message sets the code."""
    try:
        for message in ws:
            if isinstance(message, bytes):
                os.write(out, message)
                continue
            event: dict[str, Any] = json.loads(message)
            if event.get("type") == "exit":
                outcome.code = int(event.get("exit_code", 1))
            elif event.get("type") == "error":
                _say(f"error: {event.get('message')} ({event.get('code')})")
                outcome.code = 1
    except ConnectionClosed:
        pass
    finally:
        outcome.done.set()
        os.write(wake, b"x")


def run_terminal(client: HubClient, box_id: str, cmd: list[str], *, interactive: bool,
                 tty: bool, env: dict[str, str] | None = None,
                 workdir: str | None = None) -> int:
    """Run ``cmd`` on a PTY in the box wired to this terminal; return its exit code (1 and a
    message on stderr for an error; 2 for a refused request, like ``hub box exec``)."""
    stdin = sys.stdin.fileno()
    if tty and not os.isatty(stdin):
        _say(f"error: {NOT_A_TTY} (drop -t, or run it from a terminal)")
        return 1
    size = os.get_terminal_size(stdin) if tty else shutil.get_terminal_size()
    try:
        ws = open_pty(client, box_id, cmd, rows=size.lines, cols=size.columns, env=env,
                      workdir=workdir)
    except RemoteError as err:
        _say(f"error: {err.message} ({err.code.value})")
        return 2 if err.code in (ErrorCode.INVALID, ErrorCode.NOT_FOUND, ErrorCode.DENIED) else 1
    with ws:  # the connection's context: closed however this ends
        return _attached(ws, stdin, interactive=interactive, tty=tty)


def _attached(ws: ClientConnection, stdin: int, *, interactive: bool, tty: bool) -> int:
    """The session, with this terminal in raw mode (``tty``) until it ends."""
    wake_r, wake_w = os.pipe()
    outcome = _Outcome()
    saved: list[Any] | None = None
    previous: Callable[..., Any] | int | None = None
    try:
        if tty:
            import termios
            import tty as ttymod

            saved = termios.tcgetattr(stdin)
            ttymod.setraw(stdin)
            previous = signal.signal(signal.SIGWINCH, lambda *_: os.write(wake_w, b"w"))
        reader = threading.Thread(target=_receive, args=(ws, sys.stdout.fileno(), outcome, wake_w),
                                  daemon=True)
        reader.start()
        _send_loop(ws, stdin, interactive, wake_r, outcome, tty)
        reader.join(timeout=10)
    finally:
        if saved is not None:
            import termios

            termios.tcsetattr(stdin, termios.TCSADRAIN, saved)
        if previous is not None:
            signal.signal(signal.SIGWINCH, previous)
        ws.close()
        os.close(wake_r)
        os.close(wake_w)
    return outcome.code


def _send_loop(ws: ClientConnection, stdin: int, interactive: bool, wake: int,
               outcome: _Outcome, tty: bool) -> None:
    """Keystrokes up (with ``interactive``), resizes on SIGWINCH, until the program ends."""
    watched = [wake, stdin] if interactive else [wake]
    while not outcome.done.is_set():
        try:
            ready, _, _ = select.select(watched, [], [])
        except InterruptedError:
            continue
        try:
            if wake in ready:
                signals = os.read(wake, 1024)
                if b"w" in signals and tty:
                    size = os.get_terminal_size(stdin)
                    ws.send(json.dumps({"type": "resize", "rows": size.lines,
                                        "cols": size.columns}))
            if stdin in watched and stdin in ready:
                data = os.read(stdin, 64 * 1024)
                if data:
                    ws.send(data)
                else:
                    ws.send(json.dumps({"type": "eof"}))
                    watched = [wake]
        except ConnectionClosed:
            return
