"""The store on PostgreSQL: :class:`PostgresEngine`, the same :class:`~hub.store.engine.Engine`
seam as SQLite's, for hubs that share one database (``hub serve --database postgresql://…``).

How it meets the contract written in :mod:`hub.store.engine`:

- A few worker threads (:class:`~concurrent.futures.ThreadPoolExecutor`) run the table code's
  synchronous functions with psycopg 3 over a ``psycopg_pool`` connection pool, so the event
  loop never waits on the database.
- :meth:`PostgresEngine.transaction` is ``SERIALIZABLE``; a serialization failure (40001) or a
  deadlock (40P01) rolls back and runs the function again after a short jittered sleep, up to
  :data:`MAX_ATTEMPTS` times (then ``RemoteError(BUSY)``). :meth:`~PostgresEngine.read` is
  ``REPEATABLE READ READ ONLY``: one snapshot.
- SQL arrives with ``?`` placeholders: each becomes ``%s`` and a literal ``%`` becomes ``%%``.
- Values read back as from SQLite: ``bool`` parameters go in as 0/1 (the columns are
  integers), and ``numeric`` results (``sum`` of integers, ``avg``) come out as ``int`` when
  whole-typed (``sum``) and ``float`` otherwise, not ``Decimal``.
- :meth:`Tx.insert` adds ``RETURNING id`` on tables whose ``id`` is an identity column (found
  in the catalog at open: every ``AUTOINCREMENT`` table of the migrations).
- Migrations: :data:`hub.store.pg_migrations.PG_MIGRATIONS`, the version in
  ``spokehub_schema``; each runs in its own transaction under ``pg_advisory_xact_lock``, so
  hubs starting together migrate once; a newer schema is :class:`SchemaTooNew`.
- Wake-ups: :meth:`PgTx.notify` is ``pg_notify('spokehub', topic)`` (delivered by PostgreSQL
  at commit, never on rollback); a dedicated listener thread holds a ``LISTEN spokehub``
  connection, reconnects when it drops (logged), and hands each topic to the subscribers on
  the owner's event loop. The listener is up before :meth:`open` returns.
- A connection lost before COMMIT (server restart, killed backend) is replaced and the
  function run again (twice at most); lost during COMMIT, or for good, the call raises
  ``RemoteError(UNAVAILABLE)``.
- The closed-store rule: once :meth:`close` began, calls raise ``RemoteError(UNAVAILABLE)``;
  submitted ones finish first.

Pinned by tests/hub/test_store.py (run on both engines), tests/hub/test_pg_engine.py and
tests/hub/test_store_notify.py.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from typing import Any, TypeVar

import psycopg
from psycopg import errors as pg_errors
from psycopg.adapt import Loader
from psycopg_pool import ConnectionPool

from hub.store.engine import (
    Params,
    Reader,
    Row,
    SchemaTooNew,
    Tx,
    insert_sql,
    update_sql,
    upsert_sql,
)
from hub.store.pg_url import DatabaseUnreachable, redact
from protocol.errors import ErrorCode, RemoteError

log = logging.getLogger("spokehub.hub.store")

T = TypeVar("T")
CHANNEL = "spokehub"
MAX_ATTEMPTS = 30
MIGRATION_LOCK = 0x5370_6B48_7562  # pg_advisory_xact_lock key: "SpkHub"
CONNECT_TIMEOUT_S = 10
_RETRY = (pg_errors.SerializationFailure, pg_errors.DeadlockDetected)
LOST_CONNECTION_ATTEMPTS = 3


class _Committing(psycopg.OperationalError):
    """The connection was lost during COMMIT: whether it committed is unknown (never re-run)."""


@functools.lru_cache(maxsize=1024)
def to_pyformat(sql: str) -> str:
    """``?`` -> ``%s``, ``%`` -> ``%%`` (table code keeps both out of SQL literals)."""
    return sql.replace("%", "%%").replace("?", "%s")


def _params(params: Params) -> tuple[Any, ...]:
    return tuple(int(p) if isinstance(p, bool) else p for p in params)


class _NumericLoader(Loader):
    """``numeric`` as SQLite would give it: ``sum`` of integers is an integer (scale 0),
    ``avg`` a float."""

    def load(self, data: Any) -> int | float:
        value = Decimal(bytes(data).decode())
        exponent = value.as_tuple().exponent
        return int(value) if isinstance(exponent, int) and exponent >= 0 else float(value)


def _configure(conn: psycopg.Connection[Any]) -> None:
    conn.adapters.register_loader("numeric", _NumericLoader)


class PgReader:
    """:class:`~hub.store.engine.Reader` over one pooled connection, for one call."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self._conn: psycopg.Connection[Any] | None = conn

    def _c(self) -> psycopg.Connection[Any]:
        if self._conn is None:
            raise RuntimeError("this transaction has ended: use tx only inside its function")
        return self._conn

    def end(self) -> None:
        self._conn = None

    def _run(self, sql: str, params: Params) -> psycopg.Cursor[Any]:
        return self._c().execute(to_pyformat(sql), _params(params))

    def rows(self, sql: str, params: Params = ()) -> list[Row]:
        cur = self._run(sql, params)
        if cur.description is None:
            return []
        cols = [d.name for d in cur.description]
        return [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]

    def one(self, sql: str, params: Params = ()) -> Row | None:
        cur = self._run(sql, params)
        r = cur.fetchone() if cur.description is not None else None
        return None if r is None else dict(zip([d.name for d in cur.description or ()], r, strict=True))


class PgTx(PgReader):
    """:class:`~hub.store.engine.Tx` inside ``SERIALIZABLE``."""

    def __init__(self, conn: psycopg.Connection[Any], identity_tables: frozenset[str]) -> None:
        super().__init__(conn)
        self._identity = identity_tables

    def execute(self, sql: str, params: Params = ()) -> int:
        return self._run(sql, params).rowcount

    def insert(self, table: str, row: Mapping[str, Any]) -> int:
        sql = insert_sql(table, tuple(row))
        if table not in self._identity:
            self._run(sql, tuple(row.values()))
            return 0
        found = self._run(sql + " RETURNING id", tuple(row.values())).fetchone()
        return int(found[0]) if found else 0

    def update(self, table: str, key_column: str, key: Any, fields: Mapping[str, Any]) -> int:
        if not fields:
            return 0
        return self._run(update_sql(table, key_column, tuple(fields)), (*fields.values(), key)).rowcount

    def upsert(self, table: str, row: Mapping[str, Any], key_columns: Sequence[str]) -> None:
        self._run(upsert_sql(table, tuple(row), tuple(key_columns)), tuple(row.values()))

    def notify(self, topic: str) -> None:
        self._c().execute("SELECT pg_notify(%s, %s)", (CHANNEL, topic))


class PostgresEngine:
    """:class:`~hub.store.engine.Engine` on a PostgreSQL database (see the module docstring).
    ``url`` is a libpq URL (``postgresql://user:pass@host:5432/db``); ``migrations`` in
    PostgreSQL's dialect (:data:`~hub.store.pg_migrations.PG_MIGRATIONS`)."""

    kind = "postgresql"

    def __init__(self, url: str, migrations: Sequence[str], *, workers: int = 4) -> None:
        self.url = url
        self.migrations = list(migrations)
        self.workers = workers
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="hub-pg")
        self._pool: ConnectionPool[Any] | None = None
        self._identity: frozenset[str] = frozenset()
        self._closed = False
        self._subscribers: list[Callable[[str], None]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._listener: _Listener | None = None

    def __repr__(self) -> str:
        return f"PostgresEngine({redact(self.url)})"

    async def open(self) -> None:
        """Connect, migrate, fill the pool and start listening. Pinned by
        tests/hub/test_pg_engine.py::test_hubs_starting_together_migrate_once."""
        self._loop = asyncio.get_running_loop()
        await self._submit(self._open)
        self._listener = _Listener(self.url, self._deliver)
        await self._loop.run_in_executor(None, self._listener.start_and_wait)

    async def close(self) -> None:
        """Pinned by tests/hub/test_store.py::test_a_closed_store_refuses_after_queued_calls_finish."""
        if self._closed:
            return
        self._closed = True
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, functools.partial(self._executor.shutdown, wait=True))
        if self._listener is not None:
            await loop.run_in_executor(None, self._listener.stop)
        if self._pool is not None:
            await loop.run_in_executor(None, self._pool.close)

    async def transaction(self, fn: Callable[[Tx], T]) -> T:
        return await self._submit(functools.partial(self._retrying, fn, True))

    async def read(self, fn: Callable[[Reader], T]) -> T:
        return await self._submit(functools.partial(self._retrying, fn, False))

    def subscribe(self, callback: Callable[[str], None]) -> None:
        """Pinned by tests/hub/test_store_notify.py::test_two_engines_on_one_database_hear_each_other."""
        self._subscribers.append(callback)

    def _deliver(self, topic: str) -> None:  # on the listener thread
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        for callback in list(self._subscribers):
            loop.call_soon_threadsafe(callback, topic)

    async def _submit(self, fn: Callable[[], T]) -> T:
        if self._closed:
            raise RemoteError(ErrorCode.UNAVAILABLE, "the hub is shutting down")
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    # --------------------------------------------------------- on worker threads only
    def _retrying(self, fn: Callable[[Any], T], write: bool) -> T:
        if self._pool is None:
            raise RuntimeError("the store is not open")
        last_duplicate: str | None = None
        for attempt in range(1, MAX_ATTEMPTS + 1):
            try:
                with self._pool.connection() as conn:
                    return self._once(conn, fn, write)
            except pg_errors.UniqueViolation as err:
                # SERIALIZABLE reports a key taken by a concurrent commit as a duplicate when
                # the transaction never read that key (append reads last_seq, then inserts
                # last_seq + 1). Run again: a fresh snapshot picks another key. The same
                # duplicate twice in a row is a real one: raised.
                detail = f"{err.diag.constraint_name}:{err.diag.message_detail}"
                if detail == last_duplicate or attempt == MAX_ATTEMPTS:
                    raise
                last_duplicate = detail
                time.sleep(random.uniform(0, 0.002 * 2 ** min(attempt, 7)))
            except _RETRY as err:
                if attempt == MAX_ATTEMPTS:
                    raise RemoteError(ErrorCode.BUSY, "the database is too busy (transaction "
                                      f"retried {MAX_ATTEMPTS} times): try again") from err
                time.sleep(random.uniform(0, min(0.25, 0.002 * 2 ** attempt)))
            except psycopg.OperationalError as err:
                # A connection lost (a server restart, a killed backend; the pool drops it):
                # run again on another, unless it went during COMMIT (it may have committed).
                if isinstance(err, _Committing) or attempt >= LOST_CONNECTION_ATTEMPTS:
                    raise RemoteError(ErrorCode.UNAVAILABLE,
                                      f"the database is unavailable: {_first_line(err)}") from err
                log.warning("database connection lost (%s); running the transaction again",
                            _first_line(err))
                time.sleep(0.05 * attempt)
        raise AssertionError("unreachable")

    def _once(self, conn: psycopg.Connection[Any], fn: Callable[[Any], T], write: bool) -> T:
        conn.execute("BEGIN ISOLATION LEVEL SERIALIZABLE" if write
                     else "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        handle = PgTx(conn, self._identity) if write else PgReader(conn)
        try:
            result = fn(handle)
            try:
                conn.execute("COMMIT")
            except psycopg.OperationalError as err:
                if isinstance(err, _RETRY):
                    raise
                raise _Committing(_first_line(err)) from err
            return result
        except BaseException:
            if conn.info.transaction_status not in (psycopg.pq.TransactionStatus.IDLE,
                                                    psycopg.pq.TransactionStatus.UNKNOWN):
                conn.execute("ROLLBACK")
            raise
        finally:
            handle.end()

    def _open(self) -> None:
        try:
            conn = psycopg.connect(self.url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S)
        except psycopg.Error as err:
            raise DatabaseUnreachable(f"cannot reach the database {redact(self.url)}: "
                                      f"{_first_line(err)}") from None
        with conn:
            migrate(conn, self.migrations)
            found = conn.execute(
                "SELECT table_name FROM information_schema.columns WHERE table_schema = "
                "current_schema() AND column_name = 'id' AND is_identity = 'YES'").fetchall()
            self._identity = frozenset(str(r[0]) for r in found)
        pool: ConnectionPool[Any] = ConnectionPool(
            self.url, min_size=1, max_size=self.workers, open=False, configure=_configure,
            kwargs={"autocommit": True, "connect_timeout": CONNECT_TIMEOUT_S},
            name="spokehub")
        pool.open(wait=True, timeout=CONNECT_TIMEOUT_S * 2)
        self._pool = pool


def _first_line(err: BaseException) -> str:
    text = str(err).strip() or type(err).__name__
    return text.splitlines()[0]


def migrate(conn: psycopg.Connection[Any], migrations: Sequence[str]) -> int:
    """Run the scripts past the version in ``spokehub_schema``, one transaction each under an
    advisory lock (several hubs starting at once: one migrates, the others then find it
    done); returns the version reached; :class:`SchemaTooNew` past the last script. Pinned
    by tests/hub/test_pg_engine.py::test_migrations_and_a_newer_schema."""
    while True:
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
            conn.execute("CREATE TABLE IF NOT EXISTS spokehub_schema (version BIGINT NOT NULL)")
            row = conn.execute("SELECT version FROM spokehub_schema").fetchone()
            if row is None:
                conn.execute("INSERT INTO spokehub_schema (version) VALUES (0)")
            version = int(row[0]) if row else 0
            if version > len(migrations):
                raise SchemaTooNew(version, len(migrations))
            if version == len(migrations):
                return version
            conn.execute(migrations[version])  # type: ignore[arg-type]  # our own scripts
            conn.execute("UPDATE spokehub_schema SET version = %s", (version + 1,))


class _Listener:
    """The ``LISTEN spokehub`` connection, on its own thread; reconnects with backoff when it
    drops (each drop and recovery logged, the password never). Pinned by
    tests/hub/test_store_notify.py::test_the_listener_comes_back_after_its_connection_is_killed."""

    def __init__(self, url: str, deliver: Callable[[str], None]) -> None:
        self.url = url
        self.deliver = deliver
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="hub-pg-listen", daemon=True)
        self.connections = 0  # how many LISTEN connections were made (reconnects show)

    def start_and_wait(self) -> None:
        self._thread.start()
        if not self._ready.wait(CONNECT_TIMEOUT_S * 2):
            log.warning("the database listener is not up yet; wake-ups from other hubs may "
                        "be late until it is")

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        delay = 0.1
        while not self._stop.is_set():
            try:
                with psycopg.connect(self.url, autocommit=True,
                                     connect_timeout=CONNECT_TIMEOUT_S) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    self.connections += 1
                    if self.connections > 1:
                        log.warning("database listener reconnected to %s", redact(self.url))
                    self._ready.set()
                    delay = 0.1
                    while not self._stop.is_set():
                        for note in conn.notifies(timeout=0.5):
                            self.deliver(note.payload)
            except psycopg.Error as err:
                if self._stop.is_set():
                    return
                log.warning("database listener lost its connection (%s); reconnecting in "
                            "%.1fs", _first_line(err), delay)
                self._stop.wait(delay)
                delay = min(delay * 2, 5.0)
