"""What ``hub doctor`` looks at, gathered: the data dir's context, the running hub's answer,
the database's facts, and small probes (file modes, the kernel clock). The checks that judge
them are :mod:`hub.doctor`. Everything here blocks: for the CLI, never a serving hub's loop.
Pinned by tests/test_doctor.py.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
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
            return cert_pin(load_cert(self.cert_path).public_bytes(der_encoding()))
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
def der_encoding() -> Any:
    from cryptography.hazmat.primitives import serialization

    return serialization.Encoding.DER


def load_cert(path: Path) -> Any:
    from cryptography import x509

    return x509.load_pem_x509_certificate(path.read_bytes())


def short_pin(pin: str | None) -> str:
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
