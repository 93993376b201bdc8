"""Store fixtures shared by the pure-store tests: the same test on both engines.

``make_store`` (parametrized by ``engine_kind``: ``sqlite`` and ``postgresql``) makes unopened
:class:`~hub.store.Store` objects on ONE database per test — a file in ``tmp_path`` or a fresh
PostgreSQL database (tests/pg.py) — so two of them are two hubs' connections to one
database. It takes the test module's ``clock`` fixture.
"""

from __future__ import annotations

from collections.abc import Callable
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
