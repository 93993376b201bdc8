"""``hub migrate-store``: copy a stopped hub's SQLite database into PostgreSQL.

The copy a hub needs to move from its ``hub.db`` to a shared PostgreSQL database without
losing anything: every table, every row, with its ids (audit ids are the events timeline's
cursors; ws_inbox ids are referenced by what was delivered).

1. Both schemas are brought to this spokehub's version first (the source's like ``hub serve``
   would; a source from a newer spokehub is :class:`~hub.store.engine.SchemaTooNew`), so their
   tables and columns are the same.
2. The target must be empty (every table), unless ``force``: then its tables are emptied first.
3. All tables are copied in one PostgreSQL transaction (a failure leaves the target as it
   was), each in batches of ``batch`` rows read by rowid, written with ``COPY``; integral
   floats SQLite kept in integer columns become integers.
4. Identity sequences (``audit``, ``ws_inbox``, ``usage``) are moved past the copied ids, and
   every table's row count is compared on both sides before the commit.

Blocking (sqlite3, psycopg): for the CLI (cli/migrate_store_command.py), never the event loop.
Pinned by tests/hub/test_migrate_store.py.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg

from hub.store.engine import ident, migrate
from hub.store.migrations import MIGRATIONS
from hub.store.pg_engine import CONNECT_TIMEOUT_S
from hub.store.pg_engine import migrate as pg_migrate
from hub.store.pg_migrations import PG_MIGRATIONS
from hub.store.pg_url import DatabaseUnreachable, redact

BATCH = 5000
OWN_TABLES = ("spokehub_schema",)  # the engine's own bookkeeping, not the hub's data


class MigrateError(Exception):
    """Why nothing was copied, in one line for the operator."""


def source_tables(src: sqlite3.Connection) -> list[str]:
    rows = src.execute("SELECT name FROM sqlite_master WHERE type='table' "
                       "AND name NOT LIKE 'sqlite_%' ORDER BY name").fetchall()
    return [str(r[0]) for r in rows]


def _pg_columns(conn: psycopg.Connection[Any], table: str) -> dict[str, str]:
    rows = conn.execute("SELECT column_name, data_type FROM information_schema.columns WHERE "
                        "table_schema = current_schema() AND table_name = %s", (table,)).fetchall()
    return {str(r[0]): str(r[1]) for r in rows}


def _count(conn: Any, table: str) -> int:
    row = conn.execute(f"SELECT count(*) FROM {ident(table)}").fetchone()
    return int(row[0]) if row else 0


def migrate_store(source: Path, url: str, *, force: bool = False, batch: int = BATCH,
                  report: Callable[[str, int], None] = lambda table, rows: None) -> dict[str, int]:
    """Copy every table of the SQLite database at ``source`` into the PostgreSQL database at
    ``url`` (see the module docstring); returns ``{table: rows}``; :class:`MigrateError`
    (nothing changed in the target) for a missing source, a non-empty target without
    ``force``, or counts that do not match."""
    if not source.is_file():
        raise MigrateError(f"{source}: no such database")
    src = sqlite3.connect(source, isolation_level=None)
    try:
        migrate(src, MIGRATIONS)
        try:
            dst = psycopg.connect(url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S)
        except psycopg.Error as err:
            raise DatabaseUnreachable(f"cannot reach the database {redact(url)}: "
                                      f"{str(err).strip().splitlines()[0]}") from None
        with dst:
            pg_migrate(dst, PG_MIGRATIONS)
            return _copy(src, dst, force, batch, report)
    finally:
        src.close()


def _copy(src: sqlite3.Connection, dst: psycopg.Connection[Any], force: bool, batch: int,
          report: Callable[[str, int], None]) -> dict[str, int]:
    tables = source_tables(src)
    columns: dict[str, list[str]] = {}
    types: dict[str, dict[str, str]] = {}
    for table in tables:
        types[table] = _pg_columns(dst, table)
        columns[table] = [str(r[1]) for r in src.execute(f"PRAGMA table_info({ident(table)})")]
        missing = sorted(set(columns[table]) - set(types[table]))
        if missing:
            raise MigrateError(f"table {table}: column(s) {', '.join(missing)} missing in the "
                               "PostgreSQL schema")
    with dst.transaction():
        full = {t: n for t in tables if (n := _count(dst, t))}
        if full and not force:
            shown = ", ".join(f"{t} ({n})" for t, n in sorted(full.items()))
            raise MigrateError(f"the target database is not empty: {shown}; give --force to "
                               "replace what it holds")
        if full:
            dst.execute("TRUNCATE " + ", ".join(ident(t) for t in tables) + " RESTART IDENTITY")
        copied = {t: _copy_table(src, dst, t, columns[t], types[t], batch) for t in tables}
        for table, rows in copied.items():
            report(table, rows)
        for table in tables:
            if "id" in types[table] and types[table]["id"] == "bigint":
                dst.execute(f"SELECT setval(pg_get_serial_sequence(%s, 'id'), "
                            f"coalesce(max(id), 0) + 1, false) FROM {ident(table)}", (table,))
        wrong = {t: (n, _count(dst, t)) for t, n in copied.items() if _count(dst, t) != n}
        if wrong:
            raise MigrateError("row counts differ after the copy: " + ", ".join(
                f"{t} {a} in SQLite, {b} in PostgreSQL" for t, (a, b) in wrong.items()))
    return copied


def _copy_table(src: sqlite3.Connection, dst: psycopg.Connection[Any], table: str,
                cols: list[str], pg_types: dict[str, str], batch: int) -> int:
    whole = [i for i, c in enumerate(cols) if pg_types.get(c) == "bigint"]
    names = ", ".join(ident(c) for c in cols)
    read = f"SELECT rowid, {names} FROM {ident(table)} WHERE rowid > ? ORDER BY rowid LIMIT ?"
    total, last = 0, -(2 ** 63)
    with dst.cursor() as cur:
        while True:
            rows = src.execute(read, (last, batch)).fetchall()
            if not rows:
                return total
            last = rows[-1][0]
            with cur.copy(f"COPY {ident(table)} ({names}) FROM STDIN") as copy:
                for row in rows:
                    values = list(row[1:])
                    for i in whole:
                        if isinstance(values[i], float) and values[i].is_integer():
                            values[i] = int(values[i])
                    copy.write_row(values)
            total += len(rows)
