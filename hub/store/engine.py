"""The store's engine seam: transactions over one database, and the SQLite engine behind them.

Table code (``hub/store/*.py``, :mod:`hub.workstreams.store`, :mod:`hub.mcp.jobs`) never sees a
connection. It hands a plain synchronous function to :meth:`Engine.transaction` (reads and
writes) or :meth:`Engine.read` (reads only); the engine runs it off the event loop and passes it
a :class:`Tx` (or a :class:`Reader`), valid only while the function runs::

    def take(tx: Tx) -> bool:
        return tx.execute("UPDATE tokens SET used_at=? WHERE id=? AND used_at IS NULL",
                          (now, token_id)) == 1

    taken = await store.transaction(take)

:class:`SqliteEngine` is the embedded default: SQLite in WAL mode, one connection used only by
one dedicated worker thread (so the event loop never blocks and the connection needs no lock),
every transaction ``BEGIN IMMEDIATE … COMMIT``, rolled back if the function raises.

What a PostgreSQL engine must provide to implement :class:`Engine` for the same table code:

- **Serializable transactions.** A transaction function must behave as if transactions ran one
  at a time: table code reads and then writes (``append`` reads ``last_seq`` and inserts
  ``last_seq + 1``). SQLite gets that from ``BEGIN IMMEDIATE`` (the write lock is taken up
  front). PostgreSQL needs ``ISOLATION LEVEL SERIALIZABLE`` and a retry on serialization failure
  (SQLSTATE 40001), so **a transaction function may run more than once**: it must have no effect
  outside ``tx`` (no I/O, no event-loop calls; computing ``clock()`` inside is fine).
- **Snapshot reads.** :meth:`Engine.read` sees one consistent snapshot across its statements
  (``REPEATABLE READ READ ONLY``).
- **Synchronous functions off the loop.** The functions are plain ``def``: run them on a worker
  thread with a synchronous driver (e.g. psycopg 3 with a connection pool).
- **One placeholder style.** SQL is written with ``?`` placeholders (qmark), which SQLite takes
  as is; a PostgreSQL engine rewrites each ``?`` to ``%s`` (psycopg) or ``$n``. Table code keeps
  ``?`` and ``%`` out of SQL text other than as placeholders (values always go in ``params``).
- **Portable SQL only in table code.** Standard SQL that both engines accept: ``INSERT … ON
  CONFLICT (…) DO UPDATE SET c = excluded.c`` (see :func:`upsert_sql`), aggregates ``count``,
  ``sum``, ``max``; no ``INSERT OR REPLACE``, no two-argument scalar ``max(a, b)``, no PRAGMA,
  no sqlite-utils helpers. Booleans are stored as INTEGER 0/1 and JSON as TEXT, so rows read
  back the same from both. The statement builders below are engine-neutral: reuse them.
- **Generated ids.** :meth:`Tx.insert` returns the generated integer ``id`` for tables that have
  one (``ws_inbox``, ``usage``, ``audit``): PostgreSQL adds ``RETURNING id`` for those.
- **Its own migrations** with the same version numbers, tables and columns (identity columns for
  ``AUTOINCREMENT``, ``DOUBLE PRECISION`` for ``REAL``), its version kept in a table.
- **The closed-store rule.** Once :meth:`Engine.close` has begun, every call raises
  ``RemoteError(UNAVAILABLE, "the hub is shutting down")``; calls already submitted finish first.
- **Wake-ups after commit.** :meth:`Tx.notify` names a topic; once (and only if) the
  transaction commits, every callback given to :meth:`Engine.subscribe` is called with it on
  its engine's event loop. SQLite: this engine's own subscribers (one hub). PostgreSQL
  (:mod:`hub.store.pg_engine`): ``pg_notify`` and a ``LISTEN`` connection, so every hub on the
  database hears it. Wake-ups are hints (a dropped listener may miss some), never data.

:class:`hub.store.pg_engine.PostgresEngine` does all this; :func:`hub.store.open_engine` picks.
Pinned by tests/hub/test_store.py and tests/hub/test_store_notify.py.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import re
import sqlite3
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol, TypeVar

from protocol.errors import ErrorCode, RemoteError

log = logging.getLogger("spokehub.hub.store")

T = TypeVar("T")
Params = Sequence[Any]
Row = dict[str, Any]


class Reader(Protocol):
    """Read-only access inside :meth:`Engine.read` (and, through :class:`Tx`, in transactions)."""

    def rows(self, sql: str, params: Params = ()) -> list[Row]:
        """Every row of a query, as dicts keyed by column name."""
        ...

    def one(self, sql: str, params: Params = ()) -> Row | None:
        """The first row of a query, or None."""
        ...


class Tx(Reader, Protocol):
    """Reads and writes inside :meth:`Engine.transaction`; valid only while its function runs.

    Table and column names given to ``insert``/``update``/``upsert`` come from code, never from
    users; they are still checked to be plain lower-case identifiers (ValueError otherwise)."""

    def execute(self, sql: str, params: Params = ()) -> int:
        """Run one statement; returns the number of rows it changed."""
        ...

    def insert(self, table: str, row: Mapping[str, Any]) -> int:
        """Insert one row; returns the generated integer ``id`` of tables that have one."""
        ...

    def update(self, table: str, key_column: str, key: Any, fields: Mapping[str, Any]) -> int:
        """Set ``fields`` on the row whose ``key_column`` is ``key``; returns rows changed
        (0 for a missing row, or when ``fields`` is empty)."""
        ...

    def upsert(self, table: str, row: Mapping[str, Any], key_columns: Sequence[str]) -> None:
        """Insert a row, or overwrite every non-key column of the row with the same key."""
        ...

    def notify(self, topic: str) -> None:
        """Wake every subscriber (of every engine on this database) with ``topic`` once this
        transaction commits; never if it rolls back."""
        ...


class Engine(Protocol):
    """What :class:`hub.store.Store` needs of a database. Pinned by tests/hub/test_store.py."""

    kind: str  # "sqlite" or "postgresql"

    async def open(self) -> None:
        """Connect and bring the schema up to date (migrations run once, in order)."""
        ...

    async def close(self) -> None:
        """Refuse new calls, let submitted ones finish, then disconnect."""
        ...

    async def transaction(self, fn: Callable[[Tx], T]) -> T:
        """Run ``fn`` in one serializable transaction: committed if it returns, rolled back
        (leaving nothing) if it raises. ``fn`` may be re-run (see the module docstring)."""
        ...

    async def read(self, fn: Callable[[Reader], T]) -> T:
        """Run read-only ``fn`` against one consistent snapshot."""
        ...

    def subscribe(self, callback: Callable[[str], None]) -> None:
        """Call ``callback(topic)`` on the event loop for every committed :meth:`Tx.notify`."""
        ...


# ------------------------------------------------------------- engine-neutral statement builders
# Identifiers are checked, not quoted: SQLite reads an unknown "quoted" name in a WHERE clause as
# a string literal (a silent no-match); a bare unknown name is an error, as it should be.
_IDENT = re.compile(r"[a-z_][a-z0-9_]*\Z")


# Columns named like PostgreSQL reserved words (``user``): quoted (table code quotes them too).
RESERVED = frozenset({"user"})


def ident(name: str) -> str:
    """``name`` if it is a plain lower-case SQL identifier (quoted when PostgreSQL reserves
    it), else ValueError. Pinned by tests/hub/test_store.py::test_tx_helpers_check_identifiers_and_count_rows."""
    if not _IDENT.match(name):
        raise ValueError(f"{name!r} is not a plain SQL identifier")
    return f'"{name}"' if name in RESERVED else name


@functools.lru_cache(maxsize=256)
def insert_sql(table: str, columns: tuple[str, ...]) -> str:
    cols = ", ".join(ident(c) for c in columns)
    return f"INSERT INTO {ident(table)} ({cols}) VALUES ({', '.join('?' for _ in columns)})"


@functools.lru_cache(maxsize=256)
def update_sql(table: str, key_column: str, columns: tuple[str, ...]) -> str:
    sets = ", ".join(f"{ident(c)}=?" for c in columns)
    return f"UPDATE {ident(table)} SET {sets} WHERE {ident(key_column)}=?"


@functools.lru_cache(maxsize=256)
def upsert_sql(table: str, columns: tuple[str, ...], key_columns: tuple[str, ...]) -> str:
    """``INSERT … ON CONFLICT (keys) DO UPDATE``: the same text on SQLite (3.24+) and PostgreSQL."""
    if not key_columns or not set(key_columns) <= set(columns):
        raise ValueError(f"upsert into {table}: key columns {key_columns} must be in the row")
    rest = [c for c in columns if c not in key_columns]
    action = ("DO UPDATE SET " + ", ".join(f"{ident(c)}=excluded.{ident(c)}" for c in rest)
              if rest else "DO NOTHING")
    keys = ", ".join(ident(k) for k in key_columns)
    return f"{insert_sql(table, columns)} ON CONFLICT ({keys}) {action}"


# ------------------------------------------------------------------------------- SQLite engine
class SqliteReader:
    """:class:`Reader` over the worker thread's connection, for the duration of one call."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn: sqlite3.Connection | None = conn

    def _c(self) -> sqlite3.Connection:
        if self._conn is None:
            raise RuntimeError("this transaction has ended: use tx only inside its function")
        return self._conn

    def end(self) -> None:
        self._conn = None

    def rows(self, sql: str, params: Params = ()) -> list[Row]:
        cur = self._c().execute(sql, params)
        cols = [d[0] for d in cur.description or ()]
        return [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]

    def one(self, sql: str, params: Params = ()) -> Row | None:
        cur = self._c().execute(sql, params)
        try:
            r = cur.fetchone()
            return None if r is None else dict(zip([d[0] for d in cur.description], r, strict=True))
        finally:
            cur.close()


class SqliteTx(SqliteReader):
    """:class:`Tx` over the worker thread's connection, inside ``BEGIN IMMEDIATE``."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        super().__init__(conn)
        self.topics: list[str] = []

    def notify(self, topic: str) -> None:
        self._c()
        self.topics.append(topic)

    def execute(self, sql: str, params: Params = ()) -> int:
        return self._c().execute(sql, params).rowcount

    def insert(self, table: str, row: Mapping[str, Any]) -> int:
        cur = self._c().execute(insert_sql(table, tuple(row)), tuple(row.values()))
        return int(cur.lastrowid or 0)

    def update(self, table: str, key_column: str, key: Any, fields: Mapping[str, Any]) -> int:
        if not fields:
            return 0
        sql = update_sql(table, key_column, tuple(fields))
        return self._c().execute(sql, (*fields.values(), key)).rowcount

    def upsert(self, table: str, row: Mapping[str, Any], key_columns: Sequence[str]) -> None:
        self._c().execute(upsert_sql(table, tuple(row), tuple(key_columns)), tuple(row.values()))


class SqliteEngine:
    """:class:`Engine` on one SQLite file (WAL), one connection, one worker thread.

    ``migrations[i]`` is the script that takes the schema from version ``i`` to ``i + 1``
    (``PRAGMA user_version``); each runs once, atomically with its version bump.
    Pinned by tests/hub/test_store.py (transactions, closing, migrations, concurrent writers)."""

    kind = "sqlite"

    def __init__(self, path: Path, migrations: Sequence[str]) -> None:
        self.path = path
        self.migrations = list(migrations)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hub-store")
        self._conn: sqlite3.Connection | None = None
        self._closed = False
        self._subscribers: list[Callable[[str], None]] = []
        self._loop: asyncio.AbstractEventLoop | None = None

    async def open(self) -> None:
        self._loop = asyncio.get_running_loop()
        await self._submit(self._open)

    def subscribe(self, callback: Callable[[str], None]) -> None:
        """One hub per SQLite file: a committed topic wakes this engine's subscribers only.
        Pinned by tests/hub/test_store_notify.py."""
        self._subscribers.append(callback)

    async def close(self) -> None:
        """Refuse new work first, then close: calls already queued on the worker thread run
        before the close (one worker, first in first out), and any call made from now on gets
        the typed ``unavailable`` error instead of a closed database's traceback.
        Pinned by tests/hub/test_store.py::test_a_closed_store_refuses_after_queued_calls_finish."""
        if self._closed:
            return
        self._closed = True
        if self._conn is not None:
            await asyncio.get_running_loop().run_in_executor(self._pool, self._conn.close)
        self._pool.shutdown(wait=True)

    async def transaction(self, fn: Callable[[Tx], T]) -> T:
        """Pinned by tests/hub/test_store.py::test_a_transaction_commits_all_or_nothing."""
        return await self._submit(functools.partial(self._in_transaction, fn))

    async def read(self, fn: Callable[[Reader], T]) -> T:
        """Pinned by tests/hub/test_store.py::test_tx_is_valid_only_inside_its_function."""
        return await self._submit(functools.partial(self._in_read, fn))

    async def _submit(self, fn: Callable[[], T]) -> T:
        # Requests and spoke links still draining during shutdown get a clear, typed error
        # instead of a traceback from a closed database or executor. The check and the submit
        # happen in one step of the event loop, so nothing slips in after close() begins.
        if self._closed:
            raise RemoteError(ErrorCode.UNAVAILABLE, "the hub is shutting down")
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn)

    # ---------------------------------------------------------- on the worker thread only
    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise RuntimeError("the store is not open")
        return self._conn

    def _in_transaction(self, fn: Callable[[Tx], T]) -> T:
        conn = self._connection()
        conn.execute("BEGIN IMMEDIATE")
        tx = SqliteTx(conn)
        try:
            result = fn(tx)
            conn.execute("COMMIT")
            if tx.topics and self._loop is not None:
                for topic in tx.topics:
                    for callback in list(self._subscribers):
                        self._loop.call_soon_threadsafe(callback, topic)
            return result
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        finally:
            tx.end()

    def _in_read(self, fn: Callable[[Reader], T]) -> T:
        conn = self._connection()
        conn.execute("BEGIN")  # deferred: a read snapshot from the first SELECT to the end
        reader = SqliteReader(conn)
        try:
            return fn(reader)
        finally:
            reader.end()
            if conn.in_transaction:
                conn.execute("ROLLBACK")

    def _open(self) -> None:
        # The database holds hashes of every secret and the whole transcript history: only
        # its owner may read it, whatever the umask (and the data dir may not stay 0700).
        # SQLite gives the -wal and -shm files the database file's mode, so making that one
        # 0600 first (and tightening old ones) covers all three.
        if not self.path.exists():
            os.close(os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600))
        secure_files([self.path, Path(f"{self.path}-wal"), Path(f"{self.path}-shm")])
        conn = sqlite3.connect(self.path, isolation_level=None)  # transactions are explicit
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute("PRAGMA busy_timeout=5000")
        try:
            migrate(conn, self.migrations)
        except BaseException:
            conn.close()
            raise
        self._conn = conn


class SchemaTooNew(RuntimeError):
    """The database was written by a newer hub: an older hub must not run on it (it would
    not know the newer tables and columns, and there is no way down). Pinned by
    tests/hub/test_store.py::test_a_newer_database_is_refused_with_both_versions and
    tests/test_backup.py."""

    def __init__(self, found: int, known: int) -> None:
        self.found, self.known = found, known
        super().__init__(
            f"the database's schema version is {found}, newer than this hub knows (up to "
            f"{known}): it was used by a newer spokehub. Run that version (or newer), or "
            f"restore a backup made with this one; nothing was changed")


def migrate(conn: sqlite3.Connection, migrations: Sequence[str]) -> int:
    """Run the scripts past ``PRAGMA user_version``, each with its version bump in one
    transaction (a failing script leaves the schema at the version before it); returns the
    version reached; refuses (:class:`SchemaTooNew`) a database past the last script. Pinned
    by tests/hub/test_store.py::test_migrations_run_once_in_order."""
    version = int(conn.execute("PRAGMA user_version").fetchone()[0])
    if version > len(migrations):
        raise SchemaTooNew(version, len(migrations))
    for number, script in enumerate(migrations[version:], start=version + 1):
        try:
            conn.executescript(f"BEGIN;{script};PRAGMA user_version={number};COMMIT;")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        version = number
    return version


def secure_files(paths: Sequence[Path]) -> None:
    """Make the existing ``paths`` owner-only (0600), warning about any that were not: a
    database made by an older hub, or copied in with a loose mode. Pinned by
    tests/test_file_modes.py."""
    for path in paths:
        try:
            mode = path.stat().st_mode & 0o777
        except FileNotFoundError:
            continue
        if mode & 0o077:
            log.warning("%s was readable by others (mode %o): setting it to 0600", path, mode)
            path.chmod(0o600)
