"""The ``hub`` click command tree: serve the hub, and the admin commands (thin: they go
through ``client``).

The console script enters through :func:`cli.hub_cli.main`, which answers ``hub box exec``
without importing this module (click and every command module cost more start-up time than
the command itself should take) and hands everything else to :data:`hub`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from cli.common import (
    aliased_group,
    data_dir_option,
    emit,
    env_vars,
    fail,
    json_option,
    table,
    version_option,
)
from cli.common import guarded as _call
from cli.common import hub_client as _client

hub_dir = data_dir_option("hub", "SPOKEHUB_HUB_DIR")


@click.group(cls=aliased_group(), context_settings={"help_option_names": ["-h", "--help"]})
@version_option("hub")
def hub() -> None:
    """spokehub hub: run the hub and administer spokes, tokens, keys, users and boxes.

    Admin commands find the local hub through its data dir (SPOKEHUB_HUB_DIR, default
    ~/.local/share/spokehub/hub); `ls` and `list` (and `rm` and `remove`) mean the same.

    \b
    Start here:  hub up          (a hub and a local spoke, as `make up` does)
                 hub spoke list
    """


@env_vars("SPOKEHUB_HUB_", skip=("default_model", "fallback_models"), config_file="SPOKEHUB_HUB_CONFIG",
          database="SPOKEHUB_DATABASE_URL")
@hub.command()
@hub_dir
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on (0.0.0.0 for every interface).")
@click.option("--port", default=8443, show_default=True, type=click.IntRange(0, 65535),
              help="Port for HTTPS, wss and /mcp (0: any free port).")
@click.option("--public-url", help="URL spokes and clients use to reach this hub.")
@click.option("--peer-url", default=None, metavar="URL",
              help="How the other hubs of a cluster reach this one directly (docs/scaling.md); "
                   "default: the address it binds.")
@click.option("--tls-cert", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="PEM certificate to serve instead of the self-signed one (with --tls-key).")
@click.option("--tls-key", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="PEM private key of --tls-cert.")
@click.option("--insecure-http", is_flag=True, help="Serve plain HTTP (only behind a TLS proxy).")
@click.option("--log-level", default="INFO", show_default=True,
              help="DEBUG, INFO, WARNING or ERROR (DEBUG adds HTTP requests and protocol frames).")
@click.option("--log-format", type=click.Choice(["text", "json"]), default="text", show_default=True,
              help="text for people; json: one JSON object a line, with trace_id/span_id "
                   "when tracing (OTEL_EXPORTER_OTLP_ENDPOINT).")
@click.option("--config", "config_file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Models and alerts TOML (default: hub.toml in the data dir).")
@click.option("--database", default=None, metavar="URL",
              help="The store: postgresql://USER:PASSWORD@HOST/DB (hubs sharing one database), "
                   "or sqlite:PATH. Default: hub.db in the data dir. `hub migrate-store` "
                   "copies a hub.db into PostgreSQL.")
@click.option("--default-model", default=None, help="Default model alias (over env and file).")
@click.option("--fallback-model", "fallback_models", multiple=True, help="Fallback alias, in order (repeatable).")
@click.option("--header-timeout", type=click.FloatRange(min=0.1), default=10.0, show_default=True,
              metavar="SECONDS", help="Close a connection whose request headers (or TLS "
              "handshake) take longer.")
@click.option("--keepalive-timeout", type=click.FloatRange(min=0.1), default=15.0,
              show_default=True, metavar="SECONDS", help="Close idle keep-alive connections after this.")
@click.option("--max-connections-per-ip", type=click.IntRange(1, 1_000_000), default=256,
              show_default=True, help="Connections one address may hold (spokes included).")
@click.option("--approval-timeout", default=None, metavar="DURATION",
              help="Deny tool approvals left unanswered this long (e.g. 30m). Default: wait forever.")
@click.option("--resume-grace", default="15s", show_default=True, metavar="DURATION",
              help="How long a lost spoke's workstreams wait for it before they move on.")
@click.option("--history-interval", default="10s", show_default=True, metavar="DURATION",
              help="Sample the hub's metrics into its history this often (at least 1s).")
@click.option("--history-retention", default="7d", show_default=True, metavar="DURATION",
              help="Keep the metrics history this long.")
@click.option("--box-idle-ttl", default="off", show_default=True, metavar="DURATION|off",
              help="Destroy boxes nobody used (exec, file transfer) for this long, e.g. 12h. "
                   "Boxes of open workstreams are never idle.")
@click.option("--audit-retention", default="90d", show_default=True, metavar="DURATION|off",
              help="Keep the audit log (and events timeline) this long.")
@click.option("--closed-ws-retention", default="30d", show_default=True, metavar="DURATION|off",
              help="Keep the event logs of closed workstreams this long after they closed.")
@click.option("--job-retention", default="7d", show_default=True, metavar="DURATION|off",
              help="Keep MCP jobs that ended, and their output, this long.")
def serve(
    data_dir: Path,
    host: str,
    port: int,
    public_url: str | None,
    peer_url: str | None,
    tls_cert: Path | None,
    tls_key: Path | None,
    insecure_http: bool,
    log_level: str,
    log_format: str,
    config_file: Path | None,
    database: str | None,
    default_model: str | None,
    fallback_models: tuple[str, ...],
    approval_timeout: str | None,
    header_timeout: float,
    keepalive_timeout: float,
    max_connections_per_ip: int,
    history_interval: str,
    history_retention: str,
    resume_grace: str,
    box_idle_ttl: str,
    audit_retention: str,
    closed_ws_retention: str,
    job_retention: str,
) -> None:
    """Serve HTTPS + wss (self-signed certificate made in the data dir on first start).

    \b
    Example:  hub serve --host 0.0.0.0 --public-url https://hub.example.org:8443
    """
    import asyncio

    from cli.common import setup_logging
    from cli.runlock import HUB_LOCK, Busy, RunLock, holder
    from hub.app import HubConfig, ListenError, bind_listener
    from hub.app import serve as run
    from hub.janitor import JanitorConfig
    from hub.store.pg_url import DatabaseUnreachable, parse_database

    if bool(tls_cert) != bool(tls_key):
        fail("--tls-cert and --tls-key go together", 2)
    try:
        store_at = parse_database(database, data_dir).shown()
    except ValueError as err:
        fail(f"--database: {err}", 2)
        return
    approval_timeout_s: float | None = None
    if approval_timeout is not None:
        from protocol.errors import RemoteError
        from protocol.units import parse_ttl

        try:
            approval_timeout_s = parse_ttl(approval_timeout)
        except RemoteError:
            fail(f"--approval-timeout: bad duration {approval_timeout!r} (use e.g. 90s, 30m, 1h)", 2)
    history_s = _durations(("--history-interval", history_interval), ("--history-retention", history_retention))
    if history_s[0] < 1:
        fail("--history-interval must be at least 1s", 2)
    (resume_grace_s,) = _durations(("--resume-grace", resume_grace))
    janitor = JanitorConfig(
        box_idle_ttl_s=_duration_or_off("--box-idle-ttl", box_idle_ttl),
        audit_retention_s=_duration_or_off("--audit-retention", audit_retention),
        closed_ws_retention_s=_duration_or_off("--closed-ws-retention", closed_ws_retention),
        job_retention_s=_duration_or_off("--job-retention", job_retention))
    # One hub per data dir, and nothing written before the port is ours: check the lock,
    # bind, then take the lock (which creates the data dir) and only then make files.
    running = holder(data_dir, HUB_LOCK)
    if running is not None:
        fail(_already_running(data_dir, running))
    try:
        sock = bind_listener(host, port)
    except ListenError as err:
        fail(str(err))
        return
    setup_logging(log_level, log_format, service="spokehub-hub")
    config = HubConfig(
        data_dir=data_dir,
        host=host,
        port=port,
        public_url=public_url,
        peer_url=peer_url,
        tls_cert=tls_cert,
        tls_key=tls_key,
        insecure_http=insecure_http,
        config_file=config_file,
        database=database,
        default_model=default_model,
        fallback_models=fallback_models,
        approval_timeout_s=approval_timeout_s,
        history_interval_s=history_s[0],
        history_retention_s=history_s[1],
        resume_grace_s=resume_grace_s,
        janitor=janitor,
        header_timeout_s=header_timeout,
        keepalive_timeout_s=keepalive_timeout,
        max_connections_per_ip=max_connections_per_ip,
    )
    config.port = int(sock.getsockname()[1])
    lock = RunLock(data_dir, HUB_LOCK)
    try:
        lock.acquire(url=config.url(), kind="hub")
    except Busy as err:  # another hub won the race for this data dir
        sock.close()
        fail(_already_running(data_dir, err.holder))
    from hub.alerts import AlertConfigError
    from hub.model_config import ConfigError
    from hub.store.engine import SchemaTooNew

    try:
        asyncio.run(run(config, sock=sock))
    except ConfigError as err:
        fail(f"model configuration: {err}", 2)
    except AlertConfigError as err:
        fail(f"alert configuration: {err}", 2)
    except SchemaTooNew as err:
        fail(f"{store_at}: {err}")
    except DatabaseUnreachable as err:
        fail(str(err))
    finally:
        lock.release()


def _durations(*flags: tuple[str, str]) -> list[float]:
    """Seconds of each ``(flag, value)`` (``90s``, ``10m``, ``7d``); a usage error (exit 2)
    naming the flag for one that does not parse."""
    from protocol.errors import RemoteError
    from protocol.units import parse_ttl

    out: list[float] = []
    for flag, value in flags:
        try:
            out.append(parse_ttl(value))
        except RemoteError:
            fail(f"{flag}: bad duration {value!r} (use e.g. 10s, 1h, 7d)", 2)
    return out


def _duration_or_off(flag: str, value: str) -> float | None:
    """Seconds of a duration flag that may be ``off`` (None: that part of the janitor is
    off, hub/janitor.py); a usage error naming the flag otherwise."""
    if value.strip().lower() in ("off", "0", "never", "none"):
        return None
    return _durations((flag, value))[0]


def _already_running(data_dir: Path, running: Any) -> str:
    where = f" at {running.url}" if running.url else ""
    return (f"a hub is already running on {data_dir} (pid {running.pid}{where}); "
            "stop it with `hub down` first")


# ------------------------------------------------------------------- tokens
@hub.group(cls=aliased_group())
def token() -> None:
    """Join tokens for enrolling spokes (expiring; one-time and bound to a spoke name, or
    with --uses for up to N spokes under a name prefix)."""


@token.command("create")
@hub_dir
@json_option
@click.option("--name", required=True,
              help="The spoke name this token enrolls (with --uses: the names' prefix).")
@click.option("--ttl", default="1h", show_default=True, help="Lifetime, e.g. 30m, 1h, 7d.")
@click.option("--uses", type=click.IntRange(1, 100_000), default=None,
              help="Make one token for up to this many spokes named NAME-… (each `spoke join "
                   "--name`, or its hostname, picks the rest; `spoke sim` uses NAME-00001…).")
def token_create(data_dir: Path, as_json: bool, name: str, ttl: str, uses: int | None) -> None:
    """Make a join token; run `spoke join TOKEN` on the new spoke's machine.

    \b
    Example:  hub token create --name laptop --ttl 30m
              hub token create --name gpu --uses 20 --ttl 1d   (gpu-…, up to 20 spokes)
    """
    body: dict[str, Any] = {"name": name, "ttl": ttl}
    if uses is not None:
        body["uses"] = uses
    data = _call(lambda: _client(data_dir).request("POST", "/api/tokens", body))

    def human(d: dict[str, Any]) -> None:
        if d.get("prefix"):
            click.echo(f"join token for up to {d['uses']} spokes named {d['name']}-… "
                       f"(id {d['id']}); on each spoke machine run:", err=True)
            click.echo(f"  spoke join --name {d['name']}-NAME {d['token']}", err=True)
        else:
            click.echo(
                f"join token for spoke {d['name']!r} (id {d['id']}); on the spoke machine run:",
                err=True,
            )
            click.echo(f"  spoke join {d['token']}", err=True)
        click.echo(d["token"])

    emit(data, as_json, human)


@token.command("list")
@hub_dir
@json_option
def token_list(data_dir: Path, as_json: bool) -> None:
    """Join tokens, their state (valid, used, expired, revoked) and uses left; never the
    secrets."""
    data = _call(lambda: _client(data_dir).request("GET", "/api/tokens"))
    emit(data, as_json, lambda d: table(d, ["id", "name", "state", "uses_left", "expires_at"]))


@token.command("revoke")
@hub_dir
@json_option
@click.argument("token_id")
def token_revoke(data_dir: Path, as_json: bool, token_id: str) -> None:
    """Make an unused join token unusable (TOKEN_ID from `hub token list`)."""
    data = _call(lambda: _client(data_dir).request("DELETE", f"/api/tokens/{token_id}"))
    emit(data, as_json, lambda d: click.echo(f"token {token_id} revoked"))


# ----------------------------------------------------------------- api keys
@hub.group(cls=aliased_group())
def apikey() -> None:
    """API keys for the CLI, SDK and MCP clients."""


@apikey.command("create")
@hub_dir
@json_option
@click.option("--name", required=True, help="What the key is for (shown in lists and the audit log).")
@click.option("--role", type=click.Choice(["admin", "operator", "viewer"]), default="admin",
              show_default=True,
              help="admin: everything; operator: boxes, workstreams, approvals; viewer: read only.")
def apikey_create(data_dir: Path, as_json: bool, name: str, role: str) -> None:
    """Make an API key for the SDK, a remote CLI (SPOKEHUB_API_KEY) or an MCP client.

    \b
    Example:  hub apikey create --name claude-desktop --role operator
    """
    data = _call(lambda: _client(data_dir).request("POST", "/api/apikeys",
                                                   {"name": name, "role": role}))

    def human(d: dict[str, Any]) -> None:
        click.echo(f"API key {d['id']} ({d['name']}, {d['role']}); it is shown only once:",
                   err=True)
        click.echo(d["key"])

    emit(data, as_json, human)


@apikey.command("list")
@hub_dir
@json_option
def apikey_list(data_dir: Path, as_json: bool) -> None:
    """API keys (never the keys themselves: only their hashes are kept)."""
    data = _call(lambda: _client(data_dir).request("GET", "/api/apikeys"))
    emit(data, as_json, lambda d: table(d, ["id", "name", "role", "created_at", "revoked_at"]))


@apikey.command("revoke")
@hub_dir
@json_option
@click.argument("key_id")
def apikey_revoke(data_dir: Path, as_json: bool, key_id: str) -> None:
    """Revoke an API key (KEY_ID from `hub apikey list`); it stops working within seconds."""
    data = _call(lambda: _client(data_dir).request("DELETE", f"/api/apikeys/{key_id}"))
    emit(data, as_json, lambda d: click.echo(f"API key {key_id} revoked"))


# ------------------------------------------------------------------- spokes
@hub.group("spoke", cls=aliased_group())
def spoke_group() -> None:
    """Enrolled spokes."""


@spoke_group.command("list")
@hub_dir
@json_option
def spoke_list(data_dir: Path, as_json: bool) -> None:
    """Enrolled spokes: state (connected, stale, lost, left, revoked), boxes, labels, last
    seen, why they went."""
    data = _call(lambda: _client(data_dir).request("GET", "/api/spokes"))
    emit(
        data,
        as_json,
        lambda d: table(
            d, ["name", "state", "boxes", "labels", "last_seen", "disconnect_reason"]
        ),
    )


@spoke_group.command("revoke")
@hub_dir
@json_option
@click.argument("name")
def spoke_revoke(data_dir: Path, as_json: bool, name: str) -> None:
    """Revoke spoke NAME: its key is forgotten and its connection closed at once; it stops
    for good (enroll it again with a new token)."""
    data = _call(lambda: _client(data_dir).request("DELETE", f"/api/spokes/{name}"))
    emit(data, as_json, lambda d: click.echo(f"spoke {name} revoked"))


from cli.box_commands import box  # noqa: E402

hub.add_command(box)

from cli.up_command import up  # noqa: E402
from cli.ws_commands import ws  # noqa: E402

hub.add_command(ws)

hub.add_command(up)

from cli.down_command import down  # noqa: E402

hub.add_command(down)

from cli.mcp_command import mcp_stdio  # noqa: E402

hub.add_command(mcp_stdio)

from cli.admin_commands import admin  # noqa: E402

hub.add_command(admin)


# -------------------------------------------------------------------- audit
@hub.command("audit")
@hub_dir
@json_option
@click.option("--spoke", default=None, help="Only what concerns this spoke.")
@click.option("--actor", default=None, metavar="WHO",
              help="Only what this user or key did: user:NAME or key:KEY_ID.")
@click.option("--kind", default=None, help="Only this kind (box.exec), or a family (box.*).")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 1000),
              help="How many rows, newest first.")
def audit(data_dir: Path, as_json: bool, spoke: str | None, actor: str | None,
          kind: str | None, limit: int) -> None:
    """The audit log, newest first: who (user or key) did what, on which spoke, with what
    result — every admin action and every verb that changes or runs something."""
    query: dict[str, Any] = {"limit": limit}
    query.update({k: v for k, v in (("spoke", spoke), ("actor", actor), ("kind", kind)) if v})
    from urllib.parse import urlencode

    data = _call(lambda: _client(data_dir).request("GET", f"/api/audit?{urlencode(query)}"))
    emit(data["audit"] if not as_json else data, as_json, lambda rows: table(
        rows, ["ts", "actor", "kind", "spoke", "subject", "detail", "result"]))


from cli.backup_commands import backup as _backup  # noqa: E402
from cli.backup_commands import restore as _restore  # noqa: E402

hub.add_command(_backup)
hub.add_command(_restore)

from cli.migrate_store_command import migrate_store as _migrate_store  # noqa: E402

hub.add_command(_migrate_store)  # hub migrate-store: SQLite -> PostgreSQL


from cli.cluster_command import cluster as _cluster  # noqa: E402

hub.add_command(_cluster)  # hub cluster: the hubs of the cluster

from cli.doctor_command import hub_doctor  # noqa: E402

hub.add_command(hub_doctor)  # hub doctor: cli/doctor_command.py

hub.file_defaults = ("hub", ("serve",))  # type: ignore[attr-defined]  # hub.toml [serve]: cli/config_file.py

from cli.config_command import config as _config  # noqa: E402

hub.add_command(_config)  # hub config show
