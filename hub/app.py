"""Assembling and running the hub: TLS identity, store, registry, API, one aiohttp server."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import json
import logging
import os
import signal
import socket
import ssl
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp.web_response
from aiohttp import web

from hub import metrics, model_config, tls, tracing
from hub.alerts import AlertService
from hub.alerts import load as load_alerts
from hub.api import Api
from hub.boxes import BoxService
from hub.channels import ChannelService
from hub.cluster.api import ClusterApi
from hub.cluster.node import ClusterNode
from hub.cluster.peer_api import PeerApi
from hub.cluster.peer_link import PeerClient
from hub.conn_limits import GuardedSite
from hub.events_api import EventsApi
from hub.fleet import Fleet, FleetApi
from hub.health import Health, ModelProbe, connected
from hub.history import HistoryApi, HistorySampler
from hub.http_util import auth_middleware, errors_middleware
from hub.janitor import Janitor, JanitorConfig
from hub.mcp.frontend import McpServices, mount_mcp
from hub.mcp.sessions import McpSessionRouter
from hub.openapi.serve import OpenApiRoute
from hub.preview import Previews
from hub.pty_api import PtyApi
from hub.registry import Registry
from hub.relay import Relay
from hub.store import Store, open_engine
from hub.web import pages
from hub.web.auth import WebAuth, ensure_first_admin
from hub.web.headers import install_security_headers
from hub.workstreams.api import WorkstreamApi
from hub.workstreams.service import WorkstreamService
from protocol.connection import Limits
from protocol.tokens import hash_secret, new_id, new_secret
from protocol.version import VERSION

log = logging.getLogger("spokehub.hub")


@dataclass
class HubConfig:
    data_dir: Path
    host: str = "127.0.0.1"
    port: int = 8443
    public_url: str | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    insecure_http: bool = False
    limits: Limits = Limits()
    config_file: Path | None = None  # default: hub.toml in the data dir
    # The store (hub/store/pg_url.py): None for DATA_DIR/hub.db, sqlite:PATH, postgresql://…
    database: str | None = None
    default_model: str | None = None
    fallback_models: tuple[str, ...] = ()
    approval_timeout_s: float | None = None  # None: approvals wait until answered
    history_interval_s: float = 10.0  # metrics history: one sample every … (hub/history.py)
    history_retention_s: float = 7 * 86400.0  # … kept this long
    resume_grace_s: float = 15.0  # a lost spoke's workstreams wait this long, then move on
    janitor: JanitorConfig = JanitorConfig()  # idle boxes and retentions (hub/janitor.py)
    # HTTP connection bounds (hub/conn_limits.py): headers of a first request must arrive
    # within header_timeout_s (and a TLS handshake complete), an idle keep-alive connection
    # closes after keepalive_timeout_s, and one address holds at most max_connections_per_ip.
    header_timeout_s: float = 10.0
    keepalive_timeout_s: float = 15.0
    max_connections_per_ip: int = 256
    # How the other hubs of a cluster reach this one directly (docs/scaling.md); default:
    # the address it binds.
    peer_url: str | None = None

    def url(self) -> str:
        if self.public_url:
            return self.public_url.rstrip("/")
        return self.direct_url()

    def direct_url(self) -> str:
        """This hub's own address (not a load balancer's in front of several)."""
        if self.peer_url:
            return self.peer_url.rstrip("/")
        host = self.host if self.host not in ("0.0.0.0", "::", "") else socket.getfqdn()
        if ":" in host:
            host = f"[{host}]"
        return f"{'http' if self.insecure_http else 'https'}://{host}:{self.port}"


CleanupCtx = Callable[[web.Application], AsyncIterator[None]]


class Lifecycles:
    """An app's lifecycles as one aiohttp cleanup context: set up in the order given, torn
    down in reverse, each exactly once, so the order they are listed in is the whole story.

    Each is what aiohttp's ``cleanup_ctx`` takes (an async generator: setup before ``yield``,
    teardown after); a failed setup tears down the ones already set up. One difference from
    appending them to ``cleanup_ctx`` one by one: the teardown starts at ``on_shutdown``.
    aiohttp runs cleanup contexts only after the server has waited ``shutdown_timeout`` for
    the handlers still running, and spoke links and MCP streams end only when their
    lifecycle's teardown ends them: the stop would hang for the timeout and then cut the
    links instead of telling the spokes. By the cleanup stage nothing is left to undo.
    Pinned by ``tests/test_lifecycle.py::test_stopping_a_hub_with_spokes_is_quiet`` and
    ``tests/test_up_down.py::test_ctrl_c_of_up_stops_both_quietly_and_says_what_is_left``."""

    def __init__(self, *contexts: CleanupCtx) -> None:
        self._contexts = contexts
        self._stack = contextlib.AsyncExitStack()

    def install(self, app: web.Application) -> None:
        app.cleanup_ctx.append(self._run)
        app.on_shutdown.append(self._tear_down)

    async def _run(self, app: web.Application) -> AsyncIterator[None]:
        async with self._stack:
            for ctx in self._contexts:
                await self._stack.enter_async_context(contextlib.asynccontextmanager(ctx)(app))
            yield

    async def _tear_down(self, app: web.Application) -> None:
        await self._stack.aclose()


# aiohttp writes ``Server: Python/3.x aiohttp/3.x`` on every response it makes itself, the
# 400 for a request it cannot parse included: those never reach ``on_response_prepare``, so the
# default it reads is replaced here, once, for this process's server responses (its client's
# User-Agent is a separate name and unchanged). Pinned by tests/test_tls_suites.py::
# test_malformed_requests_get_no_versions_either.
aiohttp.web_response.SERVER_SOFTWARE = "spokehub"  # type: ignore[attr-defined]


async def _server_header(request: web.Request, response: web.StreamResponse) -> None:
    """``Server: spokehub`` instead of aiohttp's ``Python/3.x aiohttp/3.x``: versions only
    help a scanner. Pinned by tests/test_tls_suites.py."""
    response.headers["Server"] = "spokehub"


def secure_dir(path: Path) -> None:
    """The data dir holds the TLS key, the admin key and the database: owner only (0700),
    with a warning if it was not. Pinned by tests/test_file_modes.py."""
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        log.warning("%s was open to others (mode %o): setting it to 0700", path, mode)
        path.chmod(0o700)


class Hub:
    def __init__(self, config: HubConfig) -> None:
        self.config = config
        config.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        secure_dir(config.data_dir)
        self.store = Store(config.data_dir / "hub.db",
                           engine=open_engine(config.database, config.data_dir))
        self.pin = ""
        self.ssl_context: ssl.SSLContext | None = None
        if not config.insecure_http:
            cert = config.tls_cert or config.data_dir / "tls.crt"
            key = config.tls_key or config.data_dir / "tls.key"
            if config.tls_cert is None:
                tls.ensure_self_signed(cert, key, [config.host])
            self.pin = tls.certificate_pin(cert)
            self.ssl_context = tls.server_context(cert, key)
        self.models = model_config.load(config.config_file or config.data_dir / "hub.toml",
                                        default=config.default_model, fallback=list(config.fallback_models))
        self.registry = Registry(self.store, self.pin, config.limits, VERSION)
        # This hub as a member of a cluster (alone, on SQLite: a cluster of one).
        self.node = ClusterNode(self.store, config.direct_url(), VERSION,
                                alone=not config.database)  # the data dir's own hub.db
        self.registry.hub_id = self.node.hub_id
        self.peers = PeerClient(self.pin, lambda: self.node.secret, self.node.hub_id,
                                insecure_http=config.insecure_http)
        self.registry.remote.make_link = lambda h: self.peers.link(h.spoke, h.hub_url, h)
        self.boxes = BoxService(self.store, self.registry)
        self.api = Api(self.store, self.registry, self.boxes, config.url(), self.pin)
        self.workstreams = WorkstreamService(self.store, self.registry, lambda: self.models,
                                            approval_timeout_s=config.approval_timeout_s,
                                            resume_grace_s=config.resume_grace_s,
                                            models_file=config.config_file or config.data_dir / "hub.toml")
        self.relay = Relay(lambda: self.models, self.registry.relay_spoke)
        self.events = EventsApi(self.store)
        self.history = HistorySampler(self.store, self.registry, self.boxes,
                                      interval_s=config.history_interval_s,
                                      retention_s=config.history_retention_s)
        # Alerts ([alerts] in hub.toml: hub/alerts/), fed by the history sampler like the
        # Prometheus gauges (hub/metrics.py); /healthz's model probe (hub/health.py).
        self.alerts = AlertService(load_alerts(config.config_file or config.data_dir / "hub.toml"),
                                   self.store, self.registry, config.url())
        self.history.on_sample += [self.alerts.on_sample, metrics.SNAPSHOT.set]
        self.model_probe = ModelProbe(lambda: self.models)
        self.janitor = Janitor(self.store, self.registry, self.boxes,
                               dataclasses.replace(config.janitor,
                                                   history_retention_s=config.history_retention_s),
                               job_running=lambda job_id: self.mcp.jobs.is_running(job_id))
        self.api.health = Health(lambda: connected(self.registry), self.model_probe)
        self.https = config.url().startswith("https://")  # the cookie's Secure flag, HSTS
        self.web_auth = WebAuth(self.store, config.url(), https=self.https)
        self._join_cluster()

    def _join_cluster(self) -> None:
        """What the cluster node drives (hub/cluster/node.py): wake-ups from other hubs, the
        view of the spokes they hold, spokes lost with a dead hub, and the leader-only work."""
        node = self.node
        node.on("spoke:", self.registry.spoke_changed)
        node.on("ws:", self.workstreams.journal.wake)
        node.on("audit", lambda _rest: self.store.wake_audit_readers())
        node.on("kick", lambda _rest: self.workstreams.leasing.wake())
        node.on_holders.append(self.registry.remote.replace)
        node.on_spokes_lost += [self.workstreams.moves.spokes_lost, self.alerts.spokes_lost]
        self.janitor.is_leader = self.history.is_leader = node.is_leader
        self.alerts.is_leader = self.workstreams.leasing.is_leader = node.is_leader
        self.workstreams.leasing.on_kick = lambda: node.publish("kick")

    def make_app(self) -> web.Application:
        """The hub's one aiohttp app: routes, middlewares and the lifecycles of its services.

        The stop runs in the reverse of the listed order, tuned for a quiet stop: MCP first
        (running jobs are cancelled over their still-open links, so the spoke kills the
        process and the job is recorded ``interrupted``, not ``failed``; then open MCP
        streams end); then the scheduler, so nothing new is leased to a spoke about to be cut
        off; then the history sampler and the open event streams; then the links, each
        handler recording its disconnect; then the relay; and the
        store last, so no handler ever meets a closed database."""
        app = web.Application(
            client_max_size=1024 * 1024,
            # Who may call what: one table, hub/roles.py (pages, sign-in, health are public there).
            middlewares=[*tracing.middlewares(), errors_middleware, auth_middleware(self.store, self.config.url())],
        )
        install_security_headers(app, https=self.https)
        app.on_response_prepare.append(_server_header)
        app.router.add_get("/spoke/connect", self.registry.handle_connect)
        app.router.add_get("/metrics", metrics.handle_metrics)
        app.router.add_routes(self.api.routes())
        app.router.add_routes(WorkstreamApi(self.workstreams, lambda: self.models).routes())
        app.router.add_routes(self.relay.routes())
        app.router.add_routes(self.web_auth.routes())  # sign-in, sessions, users
        app.router.add_routes(pages.Pages().routes())  # the web pages: public, no data in them
        self.mcp = mount_mcp(app, McpServices(
            store=self.store, registry=self.registry, boxes=self.boxes,
            workstreams=self.workstreams, public_url=self.config.url(),
            bind_host=self.config.host, version=VERSION))
        self.mcp.route_sessions(McpSessionRouter(self.store, self.node.hub_id, self.peers,
                                                 self.node.ttl_s))
        # The fleet views, the events timeline and the metrics history (docs/api.md).
        app.router.add_routes(FleetApi(Fleet(self.store, self.registry, self.boxes,
                                             job_running=self.mcp.jobs.is_running)).routes())
        app.router.add_routes(self.events.routes())
        app.router.add_routes(HistoryApi(self.store, self.config.history_interval_s).routes())
        app.router.add_routes(ClusterApi(self.node).routes())  # GET /api/cluster
        app.router.add_routes(PeerApi(self.registry, lambda: self.node.secret).routes())
        app.router.add_routes(OpenApiRoute().routes())  # GET /api/openapi.json, from this table
        # PTY sessions and port previews in boxes (hub/channels.py, issue 14).
        channels = ChannelService(self.boxes)
        app.router.add_routes(PtyApi(channels).routes())
        app.router.add_routes(Previews(channels, self.store,
                                       self.config.url()).routes())
        # Set up top to bottom, torn down bottom to top (see Lifecycles and the methods).
        Lifecycles(
            self._database,       # opened first, closed last: no handler meets a closed store
            self._cluster,        # joined before any spoke link is taken, left after the last
            self._relay_client,
            self._spoke_links,
            self._alerts,         # stopped before the links close: a hub stopping is no alert
            self._history_and_streams,
            self._janitor,        # reaps through the links: stopped before they close
            self._scheduler,
            self.mcp.lifecycle,   # stopped first, while links and store still work
        ).install(app)
        return app

    async def _database(self, app: web.Application) -> AsyncIterator[None]:
        """The store, and the admin file written from it; closed after everything else."""
        await self.store.open()
        try:
            password = await ensure_first_admin(self.store)
            if password is not None:  # first start: shown here once, stored only as a bcrypt hash
                print(f"admin password (shown once): {password}; change it with "
                      "`hub admin set-password`", flush=True)
            await self._write_admin_file()
            yield
        finally:
            await self.store.close()

    async def _cluster(self, app: web.Application) -> AsyncIterator[None]:
        """Join the cluster (this hub's row, the secret, the wake-ups, the leader lease);
        leave it at the stop, after the links closed, so the others see it gone at once."""
        await self.node.start()
        try:
            yield
        finally:
            await self.node.stop()
            await self.peers.close()

    async def _relay_client(self, app: web.Application) -> AsyncIterator[None]:
        """The relay makes its upstream client on first use; closed once no spoke is left."""
        try:
            yield
        finally:
            await self.relay.close()

    async def _spoke_links(self, app: web.Application) -> AsyncIterator[None]:
        """No spoke is connected to a hub that is starting; at the stop every spoke is told
        the hub is going away (1001: it reconnects with backoff) and its link handler records
        the disconnect while the store still works. Pinned by
        ``tests/test_lifecycle.py::test_stopping_a_hub_with_spokes_is_quiet``."""
        await self.store.mark_unheld_disconnected(self.node.ttl_s)
        folding = asyncio.get_running_loop().create_task(self.registry.housekeeping_forever())
        try:
            yield
        finally:
            folding.cancel()
            await self.registry.close_all(timeout_s=10.0)
            await self.registry.flush_rejections(everything=True)

    async def _alerts(self, app: web.Application) -> AsyncIterator[None]:
        """Alerts start once spokes are marked disconnected (those of the previous run are
        expected back within the startup grace) and stop before the links close; the model
        probe makes its first check. Pinned by tests/test_alerts_e2e.py."""
        await self.alerts.start()
        self.model_probe.problem()
        try:
            yield
        finally:
            await self.alerts.stop()
            await self.model_probe.close()

    async def _history_and_streams(self, app: web.Application) -> AsyncIterator[None]:
        """The history sampler runs while the store is open; at the stop it ends before the
        links close (no sample of a hub half torn down), and open event streams are ended
        so the server need not wait for them."""
        self.history.start()
        try:
            yield
        finally:
            self.events.close()
            await self.history.stop()

    async def _janitor(self, app: web.Application) -> AsyncIterator[None]:
        """Idle boxes and retentions (hub/janitor.py); it destroys boxes over the links and
        prunes the store, so it stops before either closes."""
        self.janitor.start()
        try:
            yield
        finally:
            await self.janitor.stop()

    async def _scheduler(self, app: web.Application) -> AsyncIterator[None]:
        """Leasing work to spokes; stops before the links close, so nothing new is leased to
        a spoke about to be cut off."""
        self.workstreams.start_scheduler()
        try:
            yield
        finally:
            await self.workstreams.stop()

    async def _write_admin_file(self) -> None:
        """What the local admin CLI needs (URL, pin, an admin API key), readable by owner only.

        The key itself is stored hashed in the database; this file is the only plaintext copy,
        and it is reused across restarts while its key stays valid."""
        path = self.config.data_dir / "admin.json"
        key: str | None = None
        if path.exists():
            try:
                old = json.loads(path.read_text())
                if await self.store.api_key_by_hash(hash_secret(old.get("api_key", ""))):
                    key = old["api_key"]
            except (ValueError, KeyError, TypeError):
                key = None
        if key is None:
            key = "shk_" + new_secret()
            await self.store.add_api_key(new_id("key"), "local-admin", hash_secret(key))
        doc: dict[str, Any] = {"url": self.config.url(), "pin": self.pin, "api_key": key}
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(doc, fh)
        os.replace(tmp, path)


class ListenError(Exception):
    """The hub's address cannot be bound; the message is one line for the operator."""


def bind_listener(host: str, port: int, backlog: int = 1024) -> socket.socket:
    """Bind the hub's listening socket, before anything is written to the data dir.

    A hub that cannot listen must leave nothing behind: an ``admin.json`` written next to a
    port some other hub holds points every later command at that hub (and a pin mismatch)."""
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
    except socket.gaierror as err:
        raise ListenError(f"cannot listen on {host}:{port}: {err.strerror or err}") from None
    family, _type, _proto, _name, addr = infos[0]
    try:
        return socket.create_server(addr[:2], family=family, backlog=backlog)
    except OSError as err:
        if err.errno == errno.EADDRINUSE:
            raise ListenError(f"port {port} on {host} is in use (another hub? `--port`)") from None
        raise ListenError(f"cannot listen on {host}:{port}: {err.strerror or err}") from None


async def serve(config: HubConfig, ready: asyncio.Event | None = None,
                sock: socket.socket | None = None) -> None:
    """Serve until SIGINT/SIGTERM on ``sock`` (bound here from the config if not given)."""
    if sock is None:
        sock = bind_listener(config.host, config.port)
    config.port = int(sock.getsockname()[1])  # --port 0: the port the kernel chose
    hub = Hub(config)
    app = hub.make_app()
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=15.0,
                           keepalive_timeout=config.keepalive_timeout_s)
    await runner.setup()
    site = GuardedSite(runner, sock, ssl_context=hub.ssl_context, backlog=1024,
                       header_timeout_s=config.header_timeout_s,
                       max_per_ip=config.max_connections_per_ip)
    await site.start()
    # One line on stdout whatever the log level (and not again as a log line).
    print(f"hub listening on {config.url()} (pin {hub.pin or 'none: plain HTTP'})", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    if ready is not None:
        ready.set()
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
