"""Serve an ASGI application from an aiohttp handler, streaming both ways.

The `mcp` SDK's streamable-HTTP server is an ASGI application, while the hub is one aiohttp
server on one port (with its own TLS, auth and error middlewares). Rather than run a second
server (uvicorn) on another port, or proxy through a socket, each request to the mounted path
is handed to the ASGI app in-process:

- the request body is fed to ``receive()`` chunk by chunk as aiohttp reads it (never buffered
  whole here: the SDK enforces its own body limit);
- every ``http.response.body`` message is written to the socket as it is sent, so a
  ``text/event-stream`` response (progress notifications, the standalone GET stream) reaches
  the client event by event;
- once the body is consumed, ``receive()`` reports ``http.disconnect`` when the client goes
  away (or after the response completes), which is how the SDK and sse-starlette notice that
  a stream's reader is gone and cancel its work.

aiohttp does not cancel a handler when its client disconnects, and offers no callback for
it, so the disconnect check polls the connection's transport every quarter second; only
requests still waiting in ``receive()`` after their body (open streams) poll.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from aiohttp import web
from multidict import CIMultiDict

log = logging.getLogger("spokehub.hub.mcp.asgi")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
AsgiApp = Callable[[Scope, Receive, Send], Awaitable[None]]
ScopeHook = Callable[[web.Request, Scope], None]

DISCONNECT_POLL_S = 0.25
# Where the bridge leaves the aiohttp request in the ASGI scope, for tools whose work must
# end when their caller disconnects (the MCP exec tool).
HTTP_REQUEST_KEY = "spokehub.request"
READ_CHUNK = 64 * 1024
# Hop-by-hop or framing headers that aiohttp computes itself.
_SKIP_RESPONSE_HEADERS = {"transfer-encoding", "connection", "keep-alive"}


def build_scope(request: web.Request) -> Scope:
    """The ASGI HTTP connection scope for an aiohttp request."""
    transport = request.transport
    peer = transport.get_extra_info("peername") if transport is not None else None
    sock = transport.get_extra_info("sockname") if transport is not None else None
    raw_path = request.raw_path.split("?", 1)[0]
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": f"{request.version.major}.{request.version.minor}",
        "method": request.method,
        "scheme": request.scheme,
        "path": request.path,
        "raw_path": raw_path.encode("latin-1", "replace"),
        "query_string": request.query_string.encode("latin-1", "replace"),
        "root_path": "",
        "headers": [(k.lower(), v) for k, v in request.raw_headers],
        "client": (str(peer[0]), int(peer[1])) if isinstance(peer, tuple) else None,
        "server": (str(sock[0]), int(sock[1])) if isinstance(sock, tuple) else None,
        "state": {},
        "extensions": {},
    }


class _Exchange:
    """One request/response pair: the ``receive`` and ``send`` callables of the ASGI app."""

    def __init__(self, request: web.Request) -> None:
        self.request = request
        self.response: web.StreamResponse | None = None
        self._status = 200
        self._headers: CIMultiDict[str] = CIMultiDict()
        self.started = False
        self._body_done = False
        self.complete = False
        self._finished = asyncio.Event()  # the response is complete
        self.disconnected = False

    def _gone(self) -> bool:
        transport = self.request.transport
        return (
            self.disconnected
            or transport is None
            or transport.is_closing()
            or self.request.content.exception() is not None
        )

    async def receive(self) -> Message:
        if not self._body_done:
            try:
                chunk = await self.request.content.readany()
            except (ConnectionError, asyncio.IncompleteReadError):
                self.disconnected = True
                return {"type": "http.disconnect"}
            if chunk:
                return {"type": "http.request", "body": chunk, "more_body": True}
            self._body_done = True
            return {"type": "http.request", "body": b"", "more_body": False}
        while not (self.complete or self._gone()):
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._finished.wait(), DISCONNECT_POLL_S)
        return {"type": "http.disconnect"}

    async def send(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            if self.started:
                raise RuntimeError("ASGI app sent http.response.start twice")
            self.started = True
            self._status = int(message["status"])
            for name, value in message.get("headers", []):
                key = name.decode("latin-1") if isinstance(name, bytes) else str(name)
                if key.lower() not in _SKIP_RESPONSE_HEADERS:
                    val = value.decode("latin-1") if isinstance(value, bytes) else str(value)
                    self._headers.add(key, val)
        elif kind == "http.response.body":
            if not self.started:
                raise RuntimeError("ASGI app sent a body before http.response.start")
            if self.complete:
                return
            if self._gone():
                self.disconnected = True
                raise ConnectionResetError("client disconnected")
            response = await self.prepared()
            body = message.get("body", b"")
            try:
                if body:
                    await response.write(body)
                if not message.get("more_body", False):
                    await response.write_eof()
                    self.complete = True
                    self._finished.set()
            except ConnectionError:
                self.disconnected = True
                raise
        else:  # pragma: no cover - extensions the SDK does not use
            log.debug("ignoring ASGI message %s", kind)

    async def prepared(self) -> web.StreamResponse:
        if self.response is None:
            response = web.StreamResponse(status=self._status, headers=self._headers)
            length = self._headers.get("content-length")
            if length is not None and length.isdigit():
                response.content_length = int(length)
            else:
                # An event stream must reach the client as it is written.
                response.enable_chunked_encoding()
            await response.prepare(self.request)
            self.response = response
        return self.response


async def serve_asgi(app: AsgiApp, request: web.Request, hook: ScopeHook | None = None) -> web.StreamResponse:
    """Run ``app`` for ``request`` and return the (already streamed) aiohttp response."""
    scope = build_scope(request)
    if hook is not None:
        hook(request, scope)
    exchange = _Exchange(request)
    try:
        await app(scope, exchange.receive, exchange.send)
    except ConnectionError:
        exchange.disconnected = True
    except Exception:
        log.exception("ASGI application failed on %s %s", request.method, request.path)
        if exchange.response is None:
            return web.json_response(
                {"error": {"code": "internal", "message": "MCP endpoint failed"}}, status=500
            )
    if exchange.response is None:
        if exchange.started:  # headers only, and the app returned without a body message
            response = await exchange.prepared()
            await response.write_eof()
            return response
        return web.json_response(
            {"error": {"code": "internal", "message": "MCP endpoint sent no response"}}, status=500
        )
    if not exchange.complete and not exchange.disconnected:
        try:
            await exchange.response.write_eof()
        except ConnectionError:
            pass
    return exchange.response
