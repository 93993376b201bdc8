"""A throwaway PostgreSQL server for tests: real PostgreSQL, on loopback, in a tmp dir.

:func:`server` starts one per test session (``initdb`` into a tmp dir, then ``postgres -D DIR
-k SOCKDIR -p PORT -c listen_addresses=127.0.0.1`` on a free port, durability off: the data is
thrown away) and stops it at exit; :meth:`PgServer.new_database` makes an empty database and
returns its URL, which any process can use (the multi-hub tests start several hubs on one).
The pytest fixtures ``pg_server`` and ``pg_url`` (tests/conftest.py) wrap these.

PostgreSQL refuses to run as root: as root, ``initdb`` and ``postgres`` run as the
``postgres`` system user (made by Debian's ``postgresql`` package) through ``runuser``, with
the dir given to it. Binaries are found in ``/usr/lib/postgresql/*/bin`` (newest first) or
on ``PATH``. With no PostgreSQL installed, :func:`unavailable` says why and the fixtures skip
loudly; ``deploy/install-deps.sh --test`` installs it, so CI runs these tests.
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import psycopg


def _bin_dir() -> Path | None:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"),
                   key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0)
    if found:
        return found[-1].parent
    on_path = shutil.which("postgres")
    return Path(on_path).parent if on_path else None


def unavailable() -> str | None:
    """Why no test server can run here (None when it can)."""
    bin_dir = _bin_dir()
    if bin_dir is None or not (bin_dir / "initdb").exists():
        return ("no PostgreSQL server installed (apt-get install postgresql, or "
                "deploy/install-deps.sh --test)")
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no 'postgres' user to run the server as"
        if shutil.which("runuser") is None:
            return "running as root and runuser is missing"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PgServer:
    """One PostgreSQL server; superuser ``postgres``, trust auth on loopback only."""

    def __init__(self) -> None:
        bin_dir = _bin_dir()
        assert bin_dir is not None, unavailable()
        self.bin = bin_dir
        self.root = Path(tempfile.mkdtemp(prefix="spokehub-pg-"))
        self.data = self.root / "data"
        self.sockets = self.root / "sock"
        self.port = _free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self._names = itertools.count(1)
        self._lock = threading.Lock()
        self.log = self.root / "postgres.log"

    def _as_owner(self, *argv: str) -> list[str]:
        return ["runuser", "-u", "postgres", "--", *argv] if os.geteuid() == 0 else list(argv)

    def start(self) -> PgServer:
        self.sockets.mkdir()
        if os.geteuid() == 0:
            self.root.chmod(0o755)
            entry = pwd.getpwnam("postgres")
            for path in (self.root, self.sockets):
                os.chown(path, entry.pw_uid, entry.pw_gid)
        subprocess.run(self._as_owner(str(self.bin / "initdb"), "-D", str(self.data), "-U",
                                      "postgres", "--auth=trust", "-E", "UTF8",
                                      "--locale=C", "--no-sync"),
                       check=True, capture_output=True, cwd="/")
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                self._as_owner(str(self.bin / "postgres"), "-D", str(self.data),
                               "-k", str(self.sockets), "-p", str(self.port),
                               "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off",
                               "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
                               "-c", "max_connections=300"),
                stdout=log, stderr=subprocess.STDOUT, cwd="/")
        deadline = time.monotonic() + 60
        while True:
            try:
                psycopg.connect(self.url("postgres"), connect_timeout=2).close()
                return self
            except psycopg.OperationalError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"PostgreSQL did not start: {self.log.read_text()[-2000:]}"
                                       ) from None
                time.sleep(0.1)

    def url(self, database: str, password: str | None = None) -> str:
        """A libpq URL for ``database`` (with ``password``: trust auth ignores it)."""
        creds = "postgres" + (f":{password}" if password else "")
        return f"postgresql://{creds}@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        """A new, empty database; its URL."""
        with self._lock:
            name = f"t{os.getpid()}_{next(self._names)}"
        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name} TEMPLATE template0")
        return self.url(name)

    def drop_database(self, url: str) -> None:
        """Drop a database made by :meth:`new_database` (closing what is still connected)."""
        name = url.rsplit("/", 1)[1]
        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            subprocess.run(self._as_owner(str(self.bin / "pg_ctl"), "stop", "-D", str(self.data),
                                          "-m", "immediate", "-s"), capture_output=True, cwd="/")
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        shutil.rmtree(self.root, ignore_errors=True)


_server: PgServer | None = None


def server() -> PgServer:
    """The session's server, started on first use and stopped at exit."""
    global _server
    if _server is None:
        reason = unavailable()
        if reason:
            raise RuntimeError(reason)
        _server = PgServer().start()
        atexit.register(stop)
    return _server


def stop() -> None:
    global _server
    if _server is not None:
        with contextlib.suppress(Exception):
            _server.stop()
        _server = None
