"""MCP sessions across the hubs of a cluster: each request reaches the hub holding its session.

The SDK keeps a session (opened by ``initialize``, named by the ``Mcp-Session-Id`` header of
every later request) in the memory of the hub that opened it. Behind a load balancer a
client's next request may reach another hub — a new TCP connection is enough — which would
answer "session not found". So the hub that opens a session records it in the store
(``mcp_sessions``: its id and the hub), before the client learns the id; a hub that gets a
request for a session it does not hold looks it up and passes the request, streamed both
ways, to the holder's ``--peer-url`` (pinned TLS, the caller's own API key, which every hub
checks against the shared store), marked so that it is never passed on again. A session
whose hub died is gone with it: the request is answered here, "session not found", and the
client starts a new one. A hub alone (or the stateless revision, which has no session id)
never forwards. Pinned by tests/test_multihub.py::test_an_mcp_session_works_through_every_hub.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

from aiohttp import web

from hub.cluster.peer_link import PeerClient
from hub.mcp.asgi import AsgiApp, Message, Receive, Scope, Send
from hub.store import Store
from protocol.errors import RemoteError

log = logging.getLogger("spokehub.hub.mcp")

SESSION_HEADER = "mcp-session-id"
FORWARDED_HEADER = "X-Spokehub-Forwarded-By"
# Headers that describe one hop, not the request: aiohttp sets them again for the next one.
_HOP = {"connection", "keep-alive", "transfer-encoding", "upgrade", "te", "trailer",
        "proxy-authorization", "proxy-connection", "content-length", "host"}


class McpSessionRouter:
    """Records the sessions this hub opens and forwards requests for other hubs' sessions."""

    def __init__(self, store: Store, hub_id: str, peers: PeerClient, ttl_s: float) -> None:
        self.store, self.hub_id, self.peers, self.ttl_s = store, hub_id, peers, ttl_s
        self._local: set[str] = set()

    def recording(self, app: AsgiApp) -> AsgiApp:
        """``app``, noting every session id it hands out (in the store, before the response
        that names it leaves) and forgetting one its client ends with DELETE."""

        async def wrapped(scope: Scope, receive: Receive, send: Send) -> None:
            ended = (scope.get("method") == "DELETE" and _header(scope, SESSION_HEADER)) or None

            async def noting(message: Message) -> None:
                if message.get("type") == "http.response.start":
                    sid = _header({"headers": message.get("headers", [])}, SESSION_HEADER)
                    if sid and sid not in self._local:
                        self._local.add(sid)
                        await self.store.mcp_session_add(sid, self.hub_id)
                    if ended and int(message.get("status", 500)) < 300:
                        self._local.discard(ended)
                        await self.store.mcp_session_drop(ended)
                await send(message)

            await app(scope, receive, noting)

        return wrapped

    async def elsewhere(self, request: web.Request) -> str | None:
        """The peer URL of the hub holding this request's session, when that is not this hub
        (and the request was not forwarded here already); else None: serve it here."""
        sid = request.headers.get(SESSION_HEADER)
        if not sid or sid in self._local or FORWARDED_HEADER in request.headers or len(sid) > 200:
            return None
        found = await self.store.mcp_session_hub(sid, self.ttl_s)
        if found is None or found[0] == self.hub_id:
            return None
        return found[1]

    async def forward(self, request: web.Request, peer_url: str) -> web.StreamResponse:
        """Pass ``request`` to the hub at ``peer_url`` and stream its answer back."""
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP}
        headers["Host"] = request.host  # the DNS-rebinding check there sees the client's view
        headers[FORWARDED_HEADER] = self.hub_id

        async def body() -> AsyncIterator[bytes]:
            async for chunk in request.content.iter_chunked(64 * 1024):
                yield chunk

        try:
            upstream = await self.peers.forward(request.method, f"{peer_url.rstrip('/')}"
                                                f"{request.rel_url}", headers,
                                                body() if request.can_read_body else None)
        except RemoteError as err:
            log.warning("MCP session request not forwarded to %s: %s", peer_url, err)
            return web.json_response({"error": {"code": err.code.value, "message": err.message}},
                                     status=503)
        try:
            response = web.StreamResponse(status=upstream.status)
            for key, value in upstream.headers.items():
                if key.lower() not in _HOP and key.lower() != "content-encoding":
                    response.headers.add(key, value)
            await response.prepare(request)
            async for chunk in upstream.content.iter_any():
                await response.write(chunk)
            await response.write_eof()
            return response
        finally:
            upstream.close()


def _header(scope: Scope, name: str) -> str | None:
    for key, value in scope.get("headers", []):
        k = key.decode("latin-1") if isinstance(key, bytes) else str(key)
        if k.lower() == name:
            return value.decode("latin-1") if isinstance(value, bytes) else str(value)
    return None
