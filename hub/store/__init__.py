"""The hub's store: every table's code over one transaction API, on a swappable engine.

Layout:

- :mod:`hub.store.engine` — the seam: :class:`~hub.store.engine.Engine` (``transaction(fn)``,
  ``read(fn)``, ``open``, ``close``), the typed :class:`~hub.store.engine.Tx` and
  :class:`~hub.store.engine.Reader` that table code writes against, what a PostgreSQL engine
  must provide, and :class:`~hub.store.engine.SqliteEngine`, the embedded default (WAL, one
  dedicated worker thread so the event loop never blocks, the closed-store ``unavailable`` rule).
- :mod:`hub.store.pg_engine` — :class:`~hub.store.pg_engine.PostgresEngine`, the same seam on
  PostgreSQL (several hubs on one database); its schema is :mod:`hub.store.pg_migrations`.
- :func:`open_engine` — the engine for ``hub serve --database`` (:mod:`hub.store.pg_url`).
- :mod:`hub.store.migrations` — the versioned schema.
- :mod:`hub.store.base` — :class:`~hub.store.base.StoreBase`: engine, clock, ``transaction``,
  ``read``; the only API table code outside this package uses
  (:mod:`hub.workstreams.store`, :mod:`hub.mcp.jobs`).
- Table groups: :mod:`~hub.store.tokens` (join tokens, API keys), :mod:`~hub.store.spokes`,
  :mod:`~hub.store.boxes`, :mod:`~hub.store.audit` (also the events timeline),
  :mod:`~hub.store.users` (users, sessions), :mod:`~hub.store.runs` (runs, the worker view),
  :mod:`~hub.store.history` (the metrics history), :mod:`~hub.store.retention` (bounded
  prunes for the janitor).

:class:`Store` is all of them in one object, so callers write ``store.get_spoke(name)``.
Pinned without processes by tests/hub/test_store.py.
"""

from __future__ import annotations

import logging
from pathlib import Path

from hub.store.audit import AuditFeed
from hub.store.base import StoreBase
from hub.store.boxes import LIVE_BOX_STATES, BoxTables
from hub.store.cluster import ClusterTables, Holder
from hub.store.engine import Engine, Reader, SqliteEngine, Tx
from hub.store.history import HistoryTables
from hub.store.migrations import MIGRATIONS
from hub.store.pg_url import parse_database
from hub.store.retention import RetentionTables
from hub.store.runs import RunTables
from hub.store.spokes import SpokeTables
from hub.store.tokens import ApiKeyTables, TokenTables
from hub.store.users import UserTables


class Store(TokenTables, ApiKeyTables, SpokeTables, BoxTables, AuditFeed, UserTables, RunTables,
            HistoryTables, RetentionTables, ClusterTables):
    """The hub's store: ``Store(path, clock=time.time, engine=None)``; ``await open()`` first.

    Every method runs through :meth:`~hub.store.base.StoreBase.transaction` or
    :meth:`~hub.store.base.StoreBase.read`; once :meth:`close` has begun, each raises
    ``RemoteError(UNAVAILABLE, "the hub is shutting down")``."""


log = logging.getLogger("spokehub.hub.store")


def open_engine(database: str | None, data_dir: Path) -> Engine:
    """The engine ``database`` names (see :mod:`hub.store.pg_url`): SQLite at
    ``data_dir/hub.db`` for nothing, SQLite at PATH for ``sqlite:PATH``, PostgreSQL for a
    ``postgresql://`` URL; ValueError for anything else. Not connected yet (``open()``).
    Pinned by tests/hub/test_pg_engine.py::test_database_choices_and_bad_ones."""
    chosen = parse_database(database, data_dir)
    log.debug("store: %s on %s", chosen.kind, chosen.shown())
    if chosen.kind == "postgresql":
        from hub.store.pg_engine import PostgresEngine  # psycopg only when it is used
        from hub.store.pg_migrations import PG_MIGRATIONS

        return PostgresEngine(chosen.url, PG_MIGRATIONS)
    assert chosen.path is not None
    return SqliteEngine(chosen.path, MIGRATIONS)


__all__ = [
    "LIVE_BOX_STATES",
    "Engine",
    "Holder",
    "Reader",
    "SqliteEngine",
    "Store",
    "StoreBase",
    "Tx",
    "open_engine",
]
