"""``GET /api/boxes/{id}/pty``: an interactive terminal in a box, over a WebSocket (issue 14).

The query names the program (``cmd``, repeatable: argv; default ``/bin/sh``), the terminal's
``rows`` and ``cols``, and optionally ``workdir`` and ``env`` (repeatable ``K=V``). Before the
upgrade, errors are the API's usual JSON with their HTTP status (404 no box, 409 paused, 503
spoke offline, ...). After it:

- binary messages are terminal bytes, both ways;
- text messages from the client are JSON: ``{"type": "resize", "rows": R, "cols": C}``,
  ``{"type": "eof"}``, ``{"type": "close"}``;
- text messages from the hub: ``{"type": "exit", "exit_code", "timed_out", "cancelled"}`` when
  the program ended (then the hub closes), or ``{"type": "error", "code", "message"}``.

Auth is the API's (hub/http_util.py's middleware; the operator role): a bearer API key, or
the web session cookie, whose WebSocket handshake must come from the hub's own origin (the
middleware's Origin check: a cross-site page cannot open a terminal with a user's cookie).
Closing the socket kills the program. Pinned by tests/test_pty.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any

from aiohttp import WSMsgType, web

from hub.channels import ChannelService, ChannelSession
from hub.events_api import int_param
from protocol import verbs as v
from protocol.errors import ErrorCode, RemoteError

log = logging.getLogger("spokehub.hub.pty")
MAX_MESSAGE_BYTES = 1 << 20
CLOSED, ENDED = "closed", "ended"  # how the client side of a session ended (_read)
END_WAIT_S = 10.0  # an ended program's last output and exit status, at most this long


def _env(pairs: list[str]) -> dict[str, str]:
    env: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise RemoteError(ErrorCode.INVALID, f"env must be K=V, got {pair[:40]!r}")
        env[key] = value
    return env


class PtyApi:
    def __init__(self, channels: ChannelService) -> None:
        self.channels = channels

    def routes(self) -> list[web.RouteDef]:
        return [web.get("/api/boxes/{id}/pty", self.pty)]

    # Left out of the OpenAPI document (hub/openapi/elsewhere.py): it describes no WebSocket.
    async def pty(self, request: web.Request) -> web.StreamResponse:
        socket = web.WebSocketResponse(heartbeat=30.0, max_msg_size=MAX_MESSAGE_BYTES)
        if not socket.can_prepare(request).ok:
            raise RemoteError(ErrorCode.INVALID, "this route needs a WebSocket upgrade "
                              "(GET with Upgrade: websocket)")
        rows = int_param(request, "rows", 24, 1, v.MAX_CHANNEL_ROWS) or 24
        cols = int_param(request, "cols", 80, 1, v.MAX_CHANNEL_COLS) or 80
        cmd = request.query.getall("cmd", []) or ["/bin/sh"]
        box_id = request.match_info["id"]
        session = await self.channels.open_pty(
            box_id, cmd, env=_env(request.query.getall("env", [])),
            workdir=request.query.get("workdir") or None, rows=rows, cols=cols)
        # An open terminal is activity: the janitor's idle TTL does not reap the box under it.
        async with self.channels.boxes.activity.using(box_id):
            return await self._serve(request, socket, session)

    async def _serve(self, request: web.Request, socket: web.WebSocketResponse,
                     session: ChannelSession) -> web.WebSocketResponse:
        try:
            await socket.prepare(request)
            pump = asyncio.create_task(self._pump(session, socket))
            try:
                if await self._read(session, socket) == ENDED:
                    # Input failed because the program ended: its output and exit status are
                    # still on the way down; let the pump deliver them (bounded).
                    await asyncio.wait({pump}, timeout=END_WAIT_S)
            finally:
                if not pump.done():
                    await session.close()
                    pump.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await pump
        finally:
            await session.close()
        return socket

    async def _pump(self, session: ChannelSession, socket: web.WebSocketResponse) -> None:
        """The box's output to the socket, then the exit status; then close."""
        message: dict[str, Any]
        try:
            async for data in session.output():
                await socket.send_bytes(data)
            result = await session.result()
            message = {"type": "exit", **result.model_dump()}
        except RemoteError as err:
            message = {"type": "error", "code": err.code.value, "message": err.message}
        except ConnectionError:
            return
        with contextlib.suppress(ConnectionError, RuntimeError):
            await socket.send_str(json.dumps(message))
            await socket.close()

    async def _read(self, session: ChannelSession, socket: web.WebSocketResponse) -> str:
        """The client's keystrokes and control messages, until it closes (``CLOSED``), or
        until input fails because the program ended (``ENDED``: the caller waits for the
        exit status before it closes). Pinned by tests/test_pty.py and
        tests/test_multihub.py (``box exec -i`` through a hub that does not hold the spoke,
        where the end often overtakes the last input)."""
        async for msg in socket:
            try:
                if msg.type is WSMsgType.BINARY:
                    await session.write(msg.data)
                elif msg.type is WSMsgType.TEXT:
                    if await self._control(session, msg.data):
                        return CLOSED
                else:
                    return CLOSED
            except RemoteError as err:
                if session.done or err.code is ErrorCode.NOT_FOUND:
                    return ENDED  # the program ended while its input was on the way
                log.debug("pty %s: input failed: %s", session.id, err)
                if err.code is ErrorCode.INVALID:
                    await socket.send_str(json.dumps({"type": "error", "code": err.code.value,
                                                      "message": err.message}))
                    continue
                return ENDED
        return CLOSED

    @staticmethod
    async def _control(session: ChannelSession, text: str) -> bool:
        """Handle one JSON control message; True when the client asked to close."""
        try:
            message = json.loads(text)
        except ValueError:
            raise RemoteError(ErrorCode.INVALID, "text messages must be JSON") from None
        kind = message.get("type") if isinstance(message, dict) else None
        if kind == "resize":
            rows, cols = message.get("rows"), message.get("cols")
            if not (isinstance(rows, int) and isinstance(cols, int)):
                raise RemoteError(ErrorCode.INVALID, "resize needs integer rows and cols")
            await session.resize(rows, cols)
        elif kind == "eof":
            await session.close_write()
        elif kind == "close":
            return True
        else:
            raise RemoteError(ErrorCode.INVALID, f"unknown message type {str(kind)[:40]!r} "
                              "(resize, eof, close)")
        return False
