"""Assembling and running the hub: TLS identity, store, registry, API, one aiohttp server."""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import os
import signal
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from hub import metrics, tls
from hub import models as model_config
from hub.api import Api
from hub.boxes import BoxService
from hub.http_util import auth_middleware, errors_middleware
from hub.mcp.frontend import mount_mcp
from hub.registry import Registry
from hub.relay import Relay
from hub.store import Store
from hub.workstreams.api import WorkstreamApi
from hub.workstreams.service import WorkstreamService
from protocol.connection import Limits
from protocol.tokens import hash_secret, new_id, new_secret

VERSION = "0.1.0"
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
    default_model: str | None = None
    fallback_models: tuple[str, ...] = ()
    approval_timeout_s: float | None = None  # None: approvals wait until answered

    def url(self) -> str:
        if self.public_url:
            return self.public_url.rstrip("/")
        host = self.host if self.host not in ("0.0.0.0", "::", "") else socket.getfqdn()
        if ":" in host:
            host = f"[{host}]"
        return f"{'http' if self.insecure_http else 'https'}://{host}:{self.port}"


class Hub:
    def __init__(self, config: HubConfig) -> None:
        self.config = config
        config.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.store = Store(config.data_dir / "hub.db")
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
        self.boxes = BoxService(self.store, self.registry)
        self.api = Api(self.store, self.registry, self.boxes, config.url(), self.pin)
        self.workstreams = WorkstreamService(self.store, self.registry, lambda: self.models,
                                            approval_timeout_s=config.approval_timeout_s,
                                            models_file=config.config_file or config.data_dir / "hub.toml")
        self.relay = Relay(lambda: self.models, self.registry.spoke_for_relay_token)

    def make_app(self) -> web.Application:
        app = web.Application(
            client_max_size=1024 * 1024,
            middlewares=[errors_middleware, auth_middleware(self.store, ("/healthz", "/metrics"), ("/spoke/", "/relay/"))],
        )
        app.router.add_get("/spoke/connect", self.registry.handle_connect)
        app.router.add_get("/metrics", metrics.handle_metrics)
        app.router.add_routes(self.api.routes())
        app.router.add_routes(WorkstreamApi(self.workstreams, lambda: self.models).routes())
        app.router.add_routes(self.relay.routes())
        self.mcp = mount_mcp(app, self)  # before the hub's hooks: jobs stop while the store is open
        app.on_startup.append(self._startup)
        app.on_shutdown.append(self._shutdown)
        return app

    async def _startup(self, app: web.Application) -> None:
        await self.store.open()
        await self.store.mark_all_disconnected()
        await self._write_admin_file()
        self.workstreams.start_scheduler()

    async def _shutdown(self, app: web.Application) -> None:
        """Stop taking on work, then close the links, then the rest, then the store.

        The scheduler stops first so nothing new is leased to a spoke about to be cut off.
        Then every spoke is told the hub is going away (1001: it reconnects with backoff) and
        its link handler records the disconnect while the store still works; only then do
        the relay and the database close, so no handler ever meets a closed database."""
        await self.workstreams.stop()
        await self.registry.close_all(timeout_s=10.0)
        await self.relay.close()
        await self.store.close()

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
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=15.0)
    await runner.setup()
    site = web.SockSite(runner, sock, ssl_context=hub.ssl_context, backlog=1024)
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
