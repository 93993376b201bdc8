"""What every table group of the store shares: the engine, the clock, and the transaction API."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from hub.store.engine import Engine, Reader, SqliteEngine, Tx
from hub.store.migrations import MIGRATIONS

T = TypeVar("T")


class StoreBase:
    """The store's public seam, used by table code here and in other packages
    (:mod:`hub.workstreams.store`, :mod:`hub.mcp.jobs`): :meth:`transaction`, :meth:`read` and
    :attr:`clock` (wall-clock seconds, injected so tests control every timestamp).

    ``engine`` defaults to :class:`~hub.store.engine.SqliteEngine` on ``path`` with the hub's
    migrations; any :class:`~hub.store.engine.Engine` fits (:func:`hub.store.open_engine`).
    Pinned by tests/hub/test_store.py."""

    def __init__(
        self,
        path: Path,
        clock: Callable[[], float] = time.time,
        engine: Engine | None = None,
    ) -> None:
        self.path = path
        self.clock = clock
        self.engine: Engine = engine if engine is not None else SqliteEngine(path, MIGRATIONS)

    async def open(self) -> None:
        """Connect and migrate. Pinned by tests/hub/test_store.py::test_migrations_run_once_in_order."""
        await self.engine.open()

    async def close(self) -> None:
        """From now on every call raises ``RemoteError(UNAVAILABLE)``; queued calls finish first.
        Pinned by tests/hub/test_store.py::test_a_closed_store_refuses_after_queued_calls_finish."""
        await self.engine.close()

    async def transaction(self, fn: Callable[[Tx], T]) -> T:
        """Run ``fn(tx)`` off the event loop in one transaction: all of it or nothing. ``fn`` is
        plain synchronous code touching only ``tx`` (it may be re-run; see
        :mod:`hub.store.engine`). Pinned by
        tests/hub/test_store.py::test_a_transaction_commits_all_or_nothing."""
        return await self.engine.transaction(fn)

    async def read(self, fn: Callable[[Reader], T]) -> T:
        """Run read-only ``fn(reader)`` off the event loop against one consistent snapshot.
        Pinned by tests/hub/test_store.py::test_tx_is_valid_only_inside_its_function."""
        return await self.engine.read(fn)
