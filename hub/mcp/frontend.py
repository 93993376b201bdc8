"""The hub's MCP front-end: streamable HTTP at ``/mcp`` on the hub's own server and port.

The SDK's ``MCPServer`` holds the tools; its ``StreamableHTTPSessionManager`` (an ASGI app)
serves every protocol revision the SDK supports — the initialize-handshake revisions with
sessions, and the stateless per-request revision — and is reached through a small
aiohttp→ASGI bridge (:mod:`hub.mcp.asgi`), so MCP shares the hub's TLS certificate, port,
middlewares and lifecycle instead of needing a second server.

Auth: ``/mcp`` is behind the hub's bearer API-key middleware like every API route (a missing,
invalid or revoked key gets 401 before the SDK sees the request). The bridge then hands the
SDK the key's identity as an ``AuthenticatedUser`` whose ``client_id`` is the key id, which
the SDK uses to bind a session to the key that opened it, and the tools use to scope jobs.
The SDK's ``RequireAuthMiddleware`` stays in front as a second, fail-closed check.

DNS-rebinding protection: requests must name this hub in ``Host`` (and in ``Origin`` if a
browser sends one): the host of the hub's public URL, the address it binds, or loopback.

Wiring: the front-end is given the services it uses (:class:`McpServices`), never the ``Hub``,
so nothing under ``hub/mcp/`` imports ``hub.app``; and it registers no startup or shutdown
hook of its own: the hub places :meth:`McpFrontend.lifecycle` among its other lifecycles, so
where MCP stops (first: before the links and the store close) is fixed in one list in
``hub/app.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from urllib.parse import urlsplit

from aiohttp import web
from mcp.server.auth.middleware.auth_context import AuthContextMiddleware
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser, RequireAuthMiddleware
from mcp.server.auth.provider import AccessToken
from mcp.server.mcpserver import MCPServer
from mcp.server.transport_security import TransportSecuritySettings
from starlette.authentication import AuthCredentials

from hub.boxes import BoxService
from hub.mcp.asgi import HTTP_REQUEST_KEY, AsgiApp, Scope, serve_asgi
from hub.mcp.cluster_tools import register_cluster_tools
from hub.mcp.jobs import JobRunner
from hub.mcp.sessions import McpSessionRouter
from hub.mcp.tracing import RequestSpanParent
from hub.mcp.workstream_tools import register_workstream_tools
from hub.registry import Registry
from hub.store import Store
from hub.workstreams.service import WorkstreamService
from protocol.tracecontext import tracing_enabled

log = logging.getLogger("spokehub.hub.mcp")

MCP_PATH = "/mcp"
MAX_BODY_BYTES = 8 * 1024 * 1024  # a write_file of 4 MiB, base64-encoded, fits
SESSION_IDLE_TIMEOUT_S = 3600.0
LOOPBACK = ("127.0.0.1", "localhost", "::1")
INSTRUCTIONS = """\
spokehub runs sandboxed commands and AI agents on a cluster of machines (spokes).
Typical flow: list_spokes -> create_box on a connected spoke -> write_file / exec / read_file
-> destroy_box. exec is for short commands; for anything long use start_exec, then
read_output with the returned cursor until done is true (cancel_job stops it). Jobs survive
disconnects and hub restarts and belong to your API key."""


@dataclass(frozen=True)
class McpServices:
    """Everything the MCP front-end uses from the hub, and nothing more.

    ``workstreams`` is ``None`` for a hub without agents (the workstream tools are then not
    offered); ``public_url`` and ``bind_host`` decide the allowed Host/Origin values."""

    store: Store
    registry: Registry
    boxes: BoxService
    workstreams: WorkstreamService | None
    public_url: str
    bind_host: str
    version: str


def transport_security(public_url: str, bind_host: str) -> TransportSecuritySettings:
    """Allowed Host/Origin values: the public URL's host, the bound address, and loopback."""
    parts = urlsplit(public_url)
    names: list[str] = []
    for name in (parts.hostname, bind_host, *LOOPBACK):
        if name and name not in ("0.0.0.0", "::") and name not in names:
            names.append(name)
    hosts: list[str] = []
    origins: list[str] = []
    for name in names:
        host = f"[{name}]" if ":" in name else name
        public = name == parts.hostname and name not in LOOPBACK
        schemes = (parts.scheme or "https",) if public else ("https", "http")
        hosts += [host, f"{host}:*"]
        origins += [f"{s}://{h}" for s in schemes for h in (host, f"{host}:*")]
    return TransportSecuritySettings(
        enable_dns_rebinding_protection=True, allowed_hosts=hosts, allowed_origins=origins
    )


def _identity(request: web.Request, scope: Scope) -> None:
    """Pass the API key the hub's auth middleware accepted on to the SDK, and the aiohttp
    request itself, so a tool whose work belongs to its caller (``exec``) can end it when the
    caller's connection goes (hub/disconnect.py)."""
    scope[HTTP_REQUEST_KEY] = request
    row = request.get("api_key")
    if isinstance(row, dict) and row.get("id"):
        # The role travels as the token's one scope: the tool registrar checks it per tool.
        token = AccessToken(token=f"apikey:{row['id']}", client_id=str(row["id"]),
                            scopes=[str(row.get("role") or "")])
        scope["user"] = AuthenticatedUser(token)
        scope["auth"] = AuthCredentials([])


class McpFrontend:
    """Owns the MCP server, its session manager and the job runner, for one hub process."""

    def __init__(self, services: McpServices) -> None:
        self.services = services
        self.jobs = JobRunner(services.store, services.boxes)
        self.server: MCPServer = MCPServer(
            name="spokehub", version=services.version, instructions=INSTRUCTIONS,
            log_level="WARNING",
        )
        if tracing_enabled():  # each message under its HTTP request's span (hub/mcp/tracing.py)
            self.server.middleware.insert(0, RequestSpanParent())
        register_cluster_tools(self.server, services.registry, services.boxes, self.jobs)
        if services.workstreams is not None:
            register_workstream_tools(self.server, services.workstreams)
        # Builds the SDK's session manager; the Starlette app it returns is not used (the
        # bridge calls the manager directly, under the hub's own routing and middlewares).
        self.server.streamable_http_app(
            streamable_http_path=MCP_PATH,
            transport_security=transport_security(services.public_url, services.bind_host),
            max_request_body_size=MAX_BODY_BYTES,
            session_idle_timeout=SESSION_IDLE_TIMEOUT_S,
        )
        self.manager = self.server.session_manager
        self._asgi: AsgiApp = AuthContextMiddleware(
            RequireAuthMiddleware(self.manager.handle_request, required_scopes=[])
        )
        self._stop = asyncio.Event()
        self.router: McpSessionRouter | None = None  # a cluster's (hub/mcp/sessions.py)

    def route_sessions(self, router: McpSessionRouter) -> None:
        """Several hubs: record the sessions opened here, forward the others' requests."""
        self.router = router
        self._asgi = router.recording(self._asgi)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if self.router is not None:
            peer = await self.router.elsewhere(request)
            if peer is not None:
                return await self.router.forward(request, peer)
        return await serve_asgi(self._asgi, request, _identity)

    async def _run_manager(self, ready: asyncio.Event) -> None:
        # The manager's task group must be entered and left in one task: this one.
        async with self.manager.run():
            ready.set()
            await self._stop.wait()

    async def lifecycle(self, app: web.Application) -> AsyncIterator[None]:
        """An aiohttp cleanup context: the session manager runs until teardown.

        Teardown needs the spoke links and the store still open: running jobs end first
        (each exec is cancelled on its spoke, which kills the process, and the job is
        recorded ``interrupted``), then the session manager stops, which ends open MCP
        streams so the server can drain. Hence the hub sets this up after its store and
        links and tears it down before them. Pinned by ``tests/test_mcp.py::
        test_jobs_survive_a_hub_restart_and_are_scoped_to_the_key`` (a job running at the stop
        reads as interrupted) and ``tests/test_lifecycle.py`` (a stop without a traceback)."""
        loop = asyncio.get_running_loop()
        ready = asyncio.Event()
        task = loop.create_task(self._run_manager(ready))
        waiter = loop.create_task(ready.wait())
        await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
        if not ready.is_set():
            waiter.cancel()
            await task  # raises what stopped the manager from starting
        try:
            yield
        finally:
            await self.jobs.stop()
            self._stop.set()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(task, 10.0)


def mount_mcp(app: web.Application, services: McpServices) -> McpFrontend:
    """Add ``/mcp`` to the hub's app. Its lifecycle is left to the caller: put
    :meth:`McpFrontend.lifecycle` among the app's cleanup contexts after the store's (it
    must stop while the store is still open)."""
    frontend = McpFrontend(services)
    app.router.add_route("*", MCP_PATH, frontend.handle)
    return frontend
