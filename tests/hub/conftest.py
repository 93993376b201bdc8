"""Store fixtures shared by the pure-store tests: the same test on both engines.

``make_store`` (parametrized by ``engine_kind``: ``sqlite`` and ``postgresql``) makes unopened
:class:`~hub.store.Store` objects on ONE database per test — a file in ``tmp_path`` or a fresh
PostgreSQL database (tests/pg.py) — so two of them are two hubs' connections to one
database. It takes the ``clock`` fixture (a :class:`Clock` here; a module may override it).
``store`` and ``two_stores`` are one and two of them, opened.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from hub.store import Store

MakeStore = Callable[[], Store]


@pytest.fixture(params=["sqlite", "postgresql"])
def engine_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def make_store(engine_kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> MakeStore:
    clock: Any = request.getfixturevalue("clock")
    if engine_kind == "sqlite":
        return lambda: Store(tmp_path / "hub.db", clock=clock)
    from hub.store.pg_engine import PostgresEngine
    from hub.store.pg_migrations import PG_MIGRATIONS

    url = request.getfixturevalue("pg_url")
    return lambda: Store(tmp_path / "hub.db", clock=clock,
                         engine=PostgresEngine(url, PG_MIGRATIONS))


class Clock:
    """A wall clock that moves only when told to."""

    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def store(make_store: MakeStore) -> AsyncIterator[Store]:
    s = make_store()
    await s.open()
    yield s
    await s.close()


@pytest.fixture
async def two_stores(make_store: MakeStore) -> AsyncIterator[tuple[Store, Store]]:
    """Two stores on one database: two connections (pools) on their own worker threads,
    really concurrent, as two hubs would be."""
    a, b = make_store(), make_store()
    await a.open()
    await b.open()
    yield a, b
    await a.close()
    await b.close()
