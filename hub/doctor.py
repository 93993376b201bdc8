"""``hub doctor``: what is wrong with a hub's data dir, certificate, database and process.

Each check is a small function of a :class:`HubContext` returning a
:class:`protocol.doctor.Check`; :data:`CHECKS` lists them in the order they print and
:func:`run` runs them. Everything here blocks (files, SQLite, a TLS connection, the Docker
engine): it is for the CLI command, never for the event loop of a serving hub.

Nothing is changed: the database is opened read-only (never migrated), modes are reported,
not fixed. Whether a hub runs on the data dir is the caller's to find out (``cli/runlock.py``
holds the run lock, and ``hub/`` imports nothing from ``cli/``): it passes :class:`Running`.

Every check and what to do when it fails: docs/troubleshooting.md. Pinned by
tests/test_doctor.py.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import datetime as dt
import functools
import http.client
import json
import os
import socket
import sqlite3
import ssl
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from protocol import doctor as d
from protocol.doctor import Check
from protocol.pins import cert_pin

SECRET_FILES = ("tls.key", "admin.json", "hub.db", "hub.db-wal", "hub.db-shm", "hub.lock")
FUTURE_SLACK_S = 60.0  # a record this far in the future means the clock went back
DOCS = d.TROUBLESHOOTING


@dataclass
class Running:
    """The ``hub serve`` holding the data dir's run lock: its pid and the URL it recorded."""

    pid: int
    url: str = ""


@dataclass
class Served:
    """What the running hub answered: its certificate (DER) and ``GET /healthz``."""

    url: str
    der: bytes | None = None
    error: str = ""
    status: int = 0
    body: Any = None


@dataclass
class DbFacts:
    """What a read-only look at ``hub.db`` found."""

    error: str = ""
    quick_check: list[str] = field(default_factory=list)
    version: int = 0
    newest_ts: float | None = None


@dataclass
class HubContext:
    """What the checks look at; the facts more than one check needs are read once."""

    data_dir: Path
    running: Running | None = None
    tls_cert: Path | None = None  # a hub started with --tls-cert/--tls-key: check those
    tls_key: Path | None = None
    timeout_s: float = 5.0
    clock: Callable[[], float] = time.time
    database: str | None = None  # hub serve --database: a postgresql:// URL is checked there

    @property
    def cert_path(self) -> Path:
        return self.tls_cert or self.data_dir / "tls.crt"

    @property
    def key_path(self) -> Path:
        return self.tls_key or self.data_dir / "tls.key"

    @functools.cached_property
    def admin(self) -> dict[str, Any] | str | None:
        """``admin.json`` as a dict, None when missing, or why it cannot be read."""
        path = self.data_dir / "admin.json"
        try:
            doc = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as err:
            return f"{path} cannot be read: {err}"
        return doc if isinstance(doc, dict) else f"{path} is not a JSON object"

    @functools.cached_property
    def file_pin(self) -> str | None:
        """The pin of the certificate file, None when there is none or it does not parse."""
        try:
            return cert_pin(_load_cert(self.cert_path).public_bytes(_der()))
        except (OSError, ValueError):
            return None

    @functools.cached_property
    def url(self) -> str:
        """Where the running hub listens: its lock record, else ``admin.json``."""
        if self.running is not None and self.running.url:
            return self.running.url
        return str(self.admin.get("url") or "") if isinstance(self.admin, dict) else ""

    @functools.cached_property
    def served(self) -> Served | None:
        if self.running is None or not self.url:
            return None
        return probe(self.url, self.timeout_s)

    @functools.cached_property
    def db(self) -> DbFacts | None:
        if self.pg_url:
            from hub.doctor_pg import read_pg

            return read_pg(self.pg_url, self.timeout_s)
        path = self.data_dir / "hub.db"
        return read_db(path) if path.exists() else None

    @property
    def pg_url(self) -> str:
        """The PostgreSQL URL of ``database`` ("" for SQLite, and for what does not parse)."""
        from hub.store.pg_url import parse_database

        try:
            chosen = parse_database(self.database, self.data_dir)
        except ValueError:
            return ""
        return chosen.url if chosen.kind == "postgresql" else ""


# ------------------------------------------------------------------------ helpers
def _der() -> Any:
    from cryptography.hazmat.primitives import serialization

    return serialization.Encoding.DER


def _load_cert(path: Path) -> Any:
    from cryptography import x509

    return x509.load_pem_x509_certificate(path.read_bytes())


def _short(pin: str | None) -> str:
    return f"{pin[:23]}…" if pin else "(none)"


def probe(url: str, timeout_s: float) -> Served:
    """``GET /healthz`` at ``url``, keeping the certificate the hub served. The certificate
    is not verified here (the pin check compares it with the files); ``/healthz`` is public,
    so nothing secret is sent to whoever answers."""
    served = Served(url)
    parts = urlsplit(url)
    host = parts.hostname or "127.0.0.1"
    tls = parts.scheme == "https"
    port = parts.port or (443 if tls else 80)
    try:
        sock = socket.create_connection((host, port), timeout=timeout_s)
    except OSError as err:
        served.error = f"cannot connect to {host}:{port}: {err.strerror or err}"
        return served
    conn = http.client.HTTPConnection(host, port, timeout=timeout_s)
    try:
        if tls:
            ctx = ssl.create_default_context()
            ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
            tls_sock = ctx.wrap_socket(sock, server_hostname=host)
            served.der = tls_sock.getpeercert(binary_form=True)
            conn.sock = tls_sock
        else:
            conn.sock = sock
        conn.request("GET", "/healthz", headers={"Host": parts.netloc})
        resp = conn.getresponse()
        served.status = resp.status
        raw = resp.read(1 << 20)
        with contextlib.suppress(ValueError):
            served.body = json.loads(raw)
    except (OSError, http.client.HTTPException) as err:
        served.error = f"{url}: {err}"
    finally:
        conn.close()
        sock.close()
    return served


def read_db(path: Path) -> DbFacts:
    """Open ``path`` read-only and look: ``quick_check``, ``user_version``, the newest
    timestamp. Without a ``-wal`` file the database is complete in itself and is opened
    ``immutable`` (so nothing is created next to it); with one, SQLite reads it too."""
    facts = DbFacts()
    wal = Path(f"{path}-wal").exists()
    uri = f"{path.resolve().as_uri()}?mode=ro" + ("" if wal else "&immutable=1")
    try:
        conn = sqlite3.connect(uri, uri=True, timeout=5)
    except sqlite3.Error as err:
        facts.error = str(err)
        return facts
    try:
        facts.version = int(conn.execute("PRAGMA user_version").fetchone()[0])
        facts.quick_check = [str(row[0]) for row in conn.execute("PRAGMA quick_check(20)")]
        newest = []
        for sql in ("SELECT ts FROM audit ORDER BY id DESC LIMIT 1", "SELECT max(ts) FROM history"):
            with contextlib.suppress(sqlite3.Error):
                row = conn.execute(sql).fetchone()
                if row and row[0] is not None:
                    newest.append(float(row[0]))
        facts.newest_ts = max(newest, default=None)
    except sqlite3.Error as err:
        facts.error = str(err)
    finally:
        conn.close()
    return facts


def mode_check(name: str, path: Path, allowed: int, fix: str) -> Check | None:
    """None when ``path`` is no more open than ``allowed`` and ours; else what is wrong."""
    st = path.stat()
    if d.loose_mode(st.st_mode, allowed):
        return d.fail(name, f"{path}: {d.describe_loose(st.st_mode, allowed)}", fix)
    if st.st_uid != os.geteuid():
        return d.warn(name, f"{path} belongs to uid {st.st_uid}, not to you (uid {os.geteuid()})",
                      "run the doctor as the user that runs the hub")
    return None


def kernel_clock_synchronized() -> bool | None:
    """Whether the kernel considers the clock synchronized (``adjtimex``: not
    ``TIME_ERROR``), None where that cannot be asked (not Linux)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        timex = ctypes.create_string_buffer(512)  # struct timex, modes = 0: only read
        state = int(libc.adjtimex(timex))
    except (OSError, AttributeError):
        return None
    if state < 0:
        return None
    return state != 5  # TIME_ERROR: the clock is not synchronized


# ------------------------------------------------------------------------- checks
def check_data_dir(ctx: HubContext) -> Check:
    path = ctx.data_dir
    if not path.exists():
        return d.fail("data-dir", f"{path} does not exist",
                      f"start a hub on it (`hub serve --data-dir {path}` or `hub up`), or point "
                      "--data-dir / SPOKEHUB_HUB_DIR at the hub's data dir")
    if not path.is_dir():
        return d.fail("data-dir", f"{path} is not a directory",
                      "point --data-dir / SPOKEHUB_HUB_DIR at the hub's data dir")
    problem = mode_check("data-dir", path, 0o700, f"chmod 700 {path}")
    return problem or d.ok("data-dir", f"{path} (owner only)")


def check_file_modes(ctx: HubContext) -> Check:
    """The files holding secrets are 0600 (the key, the admin key, the database, the lock)."""
    paths = [ctx.data_dir / name for name in SECRET_FILES]
    if ctx.tls_key is not None:
        paths[0] = ctx.tls_key
    loose: list[tuple[Path, int]] = []
    foreign: list[str] = []
    for path in paths:
        try:
            st = path.stat()
        except FileNotFoundError:
            continue
        if d.loose_mode(st.st_mode, 0o600):
            loose.append((path, st.st_mode))
        elif st.st_uid != os.geteuid():
            foreign.append(path.name)
    if loose:
        found = "; ".join(f"{p.name} ({d.describe_loose(m, 0o600)})" for p, m in loose)
        return d.fail("file-modes", f"open to others: {found}",
                      "chmod 600 " + " ".join(str(p) for p, _ in loose))
    if foreign:
        return d.warn("file-modes", f"not yours (uid {os.geteuid()}): {', '.join(foreign)}",
                      "run the doctor as the user that runs the hub")
    toml = ctx.data_dir / "hub.toml"
    if toml.exists() and d.loose_mode(toml.stat().st_mode, 0o600):
        return d.warn("file-modes", f"hub.toml: {d.describe_loose(toml.stat().st_mode, 0o600)} "
                      "(it may hold model API keys)", f"chmod 600 {toml}")
    return d.ok("file-modes", "keys, admin.json and the database are owner-only (0600)")


def check_tls(ctx: HubContext) -> Check:
    """Certificate and key present, the key is the certificate's, and the dates."""
    cert, key = ctx.cert_path, ctx.key_path
    plain = ctx.url.startswith("http://")
    if not cert.exists() and not key.exists():
        if plain:
            return d.ok("tls", "plain HTTP (--insecure-http): no certificate to check")
        if ctx.tls_cert is not None:
            return d.fail("tls", f"{cert} and {key} do not exist",
                          "give the files `hub serve --tls-cert/--tls-key` uses")
        return d.warn("tls", f"no tls.crt and tls.key in {ctx.data_dir} yet",
                      "`hub serve` makes them at its first start; a hub started with "
                      "--tls-cert/--tls-key: run `hub doctor --tls-cert FILE --tls-key FILE`")
    if not cert.exists() or not key.exists():
        there, gone = (cert, key) if cert.exists() else (key, cert)
        return d.fail("tls", f"{gone} is missing but {there} is there: the next `hub serve` "
                      "would make a new certificate, and every spoke's pin would break",
                      f"restore {gone.name} from a backup (operator-guide section 13); if it "
                      f"is lost for good, see {DOCS} (certificate changed)")
    from cryptography.hazmat.primitives import serialization

    try:
        certificate = _load_cert(cert)
    except (OSError, ValueError) as err:
        return d.fail("tls", f"{cert} is not a PEM certificate ({err})",
                      f"restore it from a backup, see {DOCS}")
    try:
        private = serialization.load_pem_private_key(key.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as err:
        return d.fail("tls", f"{key} is not an unencrypted PEM private key ({err})",
                      f"restore it from a backup, see {DOCS}")
    spki = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    if private.public_key().public_bytes(*spki) != certificate.public_key().public_bytes(*spki):
        return d.fail("tls", f"{key.name} is not the key of {cert.name}: the hub cannot serve them",
                      "put back the key that belongs to the certificate (from the same backup)")
    now = dt.datetime.fromtimestamp(ctx.clock(), dt.UTC)
    status, detail = d.cert_dates(certificate.not_valid_before_utc,
                                  certificate.not_valid_after_utc, now, cert.name)
    pin = f"; pin {_short(ctx.file_pin)}"
    if status == d.OK:
        return d.ok("tls", f"{detail}, key matches{pin}")
    return d.Check("tls", status, detail + pin,
                   "renew it and restart the hub with the new files (spokes pin the "
                   f"certificate: see {DOCS}, certificate changed)")


def check_pin(ctx: HubContext) -> Check:
    """The certificate file, ``admin.json`` and the running hub all agree on one pin."""
    admin = ctx.admin
    if isinstance(admin, str):
        return d.fail("pin", admin, "restart the hub: it rewrites admin.json at start")
    served = ctx.served
    served_pin = cert_pin(served.der) if served is not None and served.der else None
    if admin is None:
        if ctx.running is not None:
            return d.fail("pin", f"{ctx.data_dir / 'admin.json'} is missing: the admin CLI "
                          "cannot find the hub", "a hub that just started writes it in a "
                          "moment: run the doctor again; else restart the hub (`hub down`, "
                          "then `hub up` or `hub serve`): it writes admin.json at start")
        return d.warn("pin", "no admin.json yet (the hub writes it at start)",
                      f"hub serve --data-dir {ctx.data_dir}")
    admin_pin = str(admin.get("pin") or "")
    file_pin = ctx.file_pin
    if served_pin and file_pin and served_pin != file_pin:
        return d.fail("pin", f"the running hub serves {_short(served_pin)}, {ctx.cert_path} is "
                      f"{_short(file_pin)}", "a hub started with --tls-cert: run `hub doctor "
                      "--tls-cert FILE --tls-key FILE`; else the file changed after the hub "
                      f"started: put the served one back (spokes pin it), see {DOCS}")
    if served_pin and admin_pin and served_pin != admin_pin:
        return d.fail("pin", f"the hub at {ctx.url} serves {_short(served_pin)}, admin.json "
                      f"pins {_short(admin_pin)}: the admin CLI will refuse it",
                      "another hub answers there, or restart this one (it rewrites admin.json)")
    if file_pin and admin_pin and file_pin != admin_pin:
        return d.fail("pin", f"admin.json (what the hub served last) pins {_short(admin_pin)}, "
                      f"{ctx.cert_path.name} is {_short(file_pin)}: the certificate changed, and "
                      "spokes enrolled before refuse the new one", "put the old tls.crt/tls.key "
                      f"back, or re-enroll every spoke (see {DOCS}); a hub started with "
                      "--tls-cert: run `hub doctor --tls-cert FILE --tls-key FILE`")
    if not admin_pin and not file_pin:
        return d.ok("pin", "no pin: plain HTTP (--insecure-http), clients trust the proxy's "
                    "certificate through their CAs")
    agree = [name for name, pin in (("admin.json", admin_pin), (ctx.cert_path.name, file_pin),
                                    ("the running hub", served_pin)) if pin]
    return d.ok("pin", f"{admin_pin or file_pin} ({', '.join(agree)} agree)")


def check_database(ctx: HubContext) -> Check:
    db = ctx.db
    if ctx.pg_url:
        from hub.store.pg_url import redact

        if db is None or db.error:
            return d.fail("database", f"PostgreSQL cannot be reached: {db.error if db else ''}",
                          "check the server, the URL (--database / SPOKEHUB_DATABASE_URL / "
                          f"[database] url) and the network, see {DOCS}")
        return d.ok("database", f"PostgreSQL at {redact(ctx.pg_url)} answers")
    path = ctx.data_dir / "hub.db"
    if db is None:
        return d.fail("database", f"{path} does not exist",
                      f"start the hub (`hub serve --data-dir {ctx.data_dir}`) to create it, or "
                      "restore it from a backup")
    if db.error:
        return d.fail("database", f"{path} cannot be read: {db.error}",
                      f"restore hub.db from a backup (operator-guide section 13), see {DOCS}")
    if db.quick_check != ["ok"]:
        return d.fail("database", f"{path} is damaged: {'; '.join(db.quick_check[:3])}",
                      "stop the hub, copy the data dir aside, then restore hub.db from a backup "
                      f"(or salvage with `sqlite3 hub.db .recover`), see {DOCS}")
    return d.ok("database", f"{path} opens read-only, quick_check ok")


def check_schema(ctx: HubContext) -> Check:
    from hub.store.migrations import MIGRATIONS

    db, known = ctx.db, len(MIGRATIONS)
    if db is None or db.error:
        return d.skip("schema", "no readable database")
    if db.version > known:
        return d.fail("schema", f"schema version {db.version}, newer than this hub knows (up to "
                      f"{known}): a newer spokehub used it, and this one refuses to start on it",
                      "run that spokehub version (or newer), or restore a backup made with "
                      "this one")
    if db.version < known:
        if ctx.running is not None:
            return d.warn("schema", f"schema version {db.version}; this installation knows "
                          f"{known}: the running hub is older than the installed code",
                          "restart the hub to upgrade (back up the data dir first)")
        return d.warn("schema", f"schema version {db.version}; the next `hub serve` migrates "
                      f"it to {known}", "back up the data dir first (operator-guide section 13)")
    return d.ok("schema", f"schema version {db.version} (current)")


def check_running(ctx: HubContext) -> Check:
    if ctx.running is None:
        return d.warn("hub", f"no hub is running on {ctx.data_dir}",
                      f"hub serve --data-dir {ctx.data_dir}  (or `hub up`)")
    who = f"pid {ctx.running.pid}"
    served = ctx.served
    if served is None:
        return d.warn("hub", f"a hub ({who}) holds the data dir but recorded no URL yet",
                      "run the doctor again in a moment")
    if served.error:
        return d.fail("hub", f"a hub ({who}) runs, but /healthz does not answer: {served.error}",
                      "read its log; restart it (`hub down`, then `hub up` or `hub serve`)")
    body = served.body if isinstance(served.body, dict) else {}
    if served.status != 200 or not body:
        return d.fail("hub", f"{served.url}/healthz answered HTTP {served.status}",
                      "another service answers there, or read the hub's log")
    spokes = body.get("spokes_connected")
    where = f"{who} at {served.url}, {spokes} spoke(s) connected"
    if body.get("status") == "degraded":
        reasons = [str(r) for r in body.get("reasons") or []]
        fixes = []
        if not spokes:
            fixes.append("join a spoke: `hub token create --name NAME`, then `spoke join TOKEN` "
                         "on its machine (or `hub up`)")
        if any("spoke" not in r for r in reasons):
            fixes.append("check the default model's endpoint and hub.toml (operator-guide "
                         "section 11)")
        return d.warn("hub", f"{where}; degraded: {'; '.join(reasons)}", "; ".join(fixes))
    return d.ok("hub", f"{where}; /healthz ok")


def check_docker(ctx: HubContext) -> Check:
    """Only a warning here: the hub needs no Docker, but `hub up`'s local spoke does."""
    try:
        import docker

        client = docker.from_env(timeout=int(max(ctx.timeout_s, 1)))
        try:
            client.ping()
            version = client.version()
        finally:
            client.close()
    except Exception as err:  # the SDK raises DockerException, requests' errors, OSError
        return d.warn("docker", f"the Docker engine is unreachable ({err}); the hub does not "
                      "need it, a spoke on this machine (`hub up`) does",
                      "start Docker (`systemctl start docker`) or set DOCKER_HOST")
    return d.ok("docker", f"Docker {version.get('Version')} (API {version.get('ApiVersion')})")


def check_clock(ctx: HubContext) -> Check:
    now = ctx.clock()
    db = ctx.db
    if db is not None and db.newest_ts is not None and db.newest_ts > now + FUTURE_SLACK_S:
        ahead = db.newest_ts - now
        return d.warn("clock", f"hub.db holds records {ahead:.0f}s in the future: this clock "
                      "went back", "set the clock right and keep it synchronized (chrony, "
                      "systemd-timesyncd); expiries and history are off until then")
    synced = kernel_clock_synchronized()
    if synced is False:
        return d.warn("clock", "the kernel says this clock is not synchronized (no NTP)",
                      "enable time synchronization (chrony, systemd-timesyncd or ntpd): "
                      "token expiries and spoke clocks are judged by it")
    return d.ok("clock", ("synchronized" if synced else "not known to be synchronized")
                + ", no records from the future in hub.db")


CHECKS: list[Callable[[HubContext], Check]] = [
    check_data_dir, check_file_modes, check_tls, check_pin, check_database, check_schema,
    check_running, check_docker, check_clock,
]


def run(ctx: HubContext) -> list[Check]:
    """Every check in order; with no data dir there is nothing else to look at."""
    return d.run_checks(CHECKS, ctx, runs_as="the hub",
                        alone=lambda first: first.status == d.FAIL and not ctx.data_dir.is_dir())
