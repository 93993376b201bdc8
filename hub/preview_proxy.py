"""HTTP/1.1 and WebSocket proxying to a port inside a box, over a channel (issue 14).

The hub speaks HTTP/1.1 itself over the channel's bytes (spoke/channels.py: a TCP
connection made from inside the box), with h11 for HTTP and websockets' sans-I/O
``ClientProtocol`` for a WebSocket upgrade. One channel per request (``Connection: close``
upstream). Bodies stream both ways, never held whole. What the box sees has no credentials
of the hub: ``Authorization`` and the hub's own cookies are removed (hub/preview.py).

Pinned by tests/test_port_preview.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable

import h11
from aiohttp import WSMsgType, web
from websockets.client import ClientProtocol
from websockets.exceptions import InvalidHandshake
from websockets.frames import Frame, Opcode
from websockets.http11 import Response as WsResponse
from websockets.typing import Subprotocol
from websockets.uri import parse_uri

from hub.channels import ChannelSession
from protocol.errors import ErrorCode, RemoteError

log = logging.getLogger("spokehub.hub.preview")
HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization",
                        "te", "trailer", "trailers", "transfer-encoding", "upgrade", "host",
                        "content-length"})
# What a previewed page may do: it runs in an opaque origin (no allow-same-origin), so its
# scripts cannot read the hub's pages or call its API with the user's session.
PREVIEW_CSP = ("sandbox allow-scripts allow-forms allow-popups allow-modals allow-downloads; "
               "frame-ancestors 'self'")
READ_BYTES = 64 * 1024


def _bad_gateway(message: str) -> RemoteError:
    return RemoteError(ErrorCode.UNAVAILABLE, f"the box's server: {message}")


async def proxy_http(request: web.Request, session: ChannelSession, target: str,
                     headers: list[tuple[str, str]],
                     decorate: Callable[[web.StreamResponse], None] | None = None,
                     ) -> web.StreamResponse:
    """Send ``request`` (method, ``target``, ``headers``, its body streamed) to the box's
    server and stream its answer back."""
    conn = h11.Connection(h11.CLIENT)
    framing: list[tuple[str, str]] = []
    if request.content_length is not None:
        framing.append(("Content-Length", str(request.content_length)))
    elif request.body_exists:
        framing.append(("Transfer-Encoding", "chunked"))
    try:
        head = conn.send(h11.Request(method=request.method, target=target,
                                     headers=[*headers, *framing, ("Connection", "close")]))
    except h11.LocalProtocolError as err:
        raise RemoteError(ErrorCode.INVALID, f"cannot forward this request: {err}") from None
    await session.write(head or b"")

    async def upload() -> None:
        if request.body_exists:
            async for piece in request.content.iter_chunked(READ_BYTES):
                await session.write(conn.send(h11.Data(data=piece)) or b"")
        await session.write(conn.send(h11.EndOfMessage()) or b"")

    sender = asyncio.create_task(upload())
    response: web.StreamResponse | None = None
    try:
        output = session.output()
        async for event in _events(conn, output):
            if isinstance(event, h11.Response):
                response = web.StreamResponse(status=event.status_code,
                                              reason=event.reason.decode("latin-1") or None)
                for name, value in event.headers:
                    key = name.decode("latin-1")
                    if key.lower() not in HOP_BY_HOP:
                        response.headers.add(key, value.decode("latin-1"))
                    elif key.lower() == "content-length":
                        response.content_length = int(value)
                response.headers["Content-Security-Policy"] = PREVIEW_CSP
                response.headers["X-Frame-Options"] = "SAMEORIGIN"
                if decorate is not None:
                    decorate(response)
                await response.prepare(request)
            elif isinstance(event, h11.Data) and response is not None:
                await response.write(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                break
        if response is None:
            raise _bad_gateway("it closed the connection without an answer")
        await response.write_eof()
        return response
    finally:
        if not sender.done():
            sender.cancel()
        with contextlib.suppress(BaseException):
            await sender
        await session.close()


async def _events(conn: h11.Connection, output: AsyncIterator[bytes]) -> AsyncIterator[h11.Event]:
    """h11's client-side events from the channel's bytes."""
    while True:
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError as err:
            raise _bad_gateway(f"invalid HTTP answer ({err})") from None
        if event is h11.NEED_DATA:
            data = await anext(output, b"")
            conn.receive_data(data)
            continue
        if not isinstance(event, h11.Event) or isinstance(event, h11.ConnectionClosed):
            return  # PAUSED: the answer is complete (its connection closes after it)
        yield event


async def proxy_websocket(request: web.Request, session: ChannelSession, target: str,
                          port: int) -> web.WebSocketResponse:
    """Upgrade to the box's WebSocket server first, then accept the browser's upgrade with
    the subprotocol the box chose, and relay messages both ways until either side closes."""
    offered = [Subprotocol(p.strip()) for p in
               request.headers.get("Sec-WebSocket-Protocol", "").split(",") if p.strip()]
    proto = ClientProtocol(parse_uri(f"ws://127.0.0.1:{port}{target}"),
                           subprotocols=offered or None, max_size=None)
    proto.send_request(proto.connect())
    output = session.output()

    async def flush() -> None:
        data = b"".join(proto.data_to_send())
        if data:
            await session.write(data)

    await flush()
    pending: list[object] = []
    while not pending:
        data = await anext(output, b"")
        proto.receive_data(data) if data else proto.receive_eof()
        pending = list(proto.events_received())
        if not data and not pending:
            raise _bad_gateway("it closed the connection during the WebSocket handshake")
    answer = pending.pop(0)
    if not isinstance(answer, WsResponse) or proto.handshake_exc is not None:
        reason = proto.handshake_exc if isinstance(proto.handshake_exc, InvalidHandshake) else answer
        raise _bad_gateway(f"WebSocket upgrade refused ({reason})")
    socket = web.WebSocketResponse(protocols=[proto.subprotocol] if proto.subprotocol else (),
                                   max_msg_size=16 * 1024 * 1024)
    await socket.prepare(request)
    parts: list[Frame] = []

    async def deliver(frames: list[object]) -> bool:
        for frame in frames:
            if not isinstance(frame, Frame):
                continue
            if frame.opcode in (Opcode.TEXT, Opcode.BINARY, Opcode.CONT):
                parts.append(frame)
                if frame.fin:
                    payload = b"".join(bytes(p.data) for p in parts)
                    text = parts[0].opcode is Opcode.TEXT
                    parts.clear()
                    if text:
                        await socket.send_str(payload.decode("utf-8", "replace"))
                    else:
                        await socket.send_bytes(payload)
            elif frame.opcode is Opcode.CLOSE:
                await flush()
                return False
        await flush()  # pongs and close answers the protocol queued
        return True

    async def downstream() -> None:
        try:
            if not await deliver(pending):
                return
            async for data in output:
                proto.receive_data(data)
                if not await deliver(list(proto.events_received())):
                    return
        finally:
            await socket.close()  # the box's side ended: so does the browser's

    relay = asyncio.create_task(downstream())
    try:
        async for msg in socket:
            if relay.done():
                break
            if msg.type is WSMsgType.TEXT:
                proto.send_text(msg.data.encode())
            elif msg.type is WSMsgType.BINARY:
                proto.send_binary(msg.data)
            else:
                break
            await flush()
        else:
            with contextlib.suppress(Exception):
                proto.send_close(socket.close_code or 1000)
                await flush()
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(asyncio.shield(relay), 5)
        relay.cancel()
        with contextlib.suppress(BaseException):
            await relay
        await socket.close()
        await session.close()
    return socket
