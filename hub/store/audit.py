"""The audit log: who did what, appended, newest first when read; and, read by its id as a
cursor, the hub's events timeline (joins, losses, revocations, errors, approvals, tokens)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Callable, Coroutine
from typing import Any, Concatenate, ParamSpec

from hub.store.base import StoreBase
from hub.store.engine import Tx


class AuditTables(StoreBase):
    """The ``audit`` table. Pinned by tests/hub/test_store.py::test_audit_is_newest_first_and_capped
    and tests/test_roles.py::test_audit_rows_name_the_actor."""

    async def audit(self, kind: str, subject: str, detail: str = "", actor: str = "",
                    spoke: str = "", result: str = "",
                    also: Callable[[Tx], None] | None = None) -> None:
        """Append one row. ``actor`` is who acted: ``user:NAME`` or ``key:KEY_ID`` for what a
        person or client asked for (:func:`hub.http_util.actor`, :func:`hub.audit.acting`),
        ``""`` for what the hub itself observed (a spoke connecting, a box reaped); ``spoke``
        the spoke it concerns, ``result`` what came of it (hub/audit.py). ``also``: the
        action's own last writes, committed in the same transaction as its row (a box
        create's ``running``: one store round trip, not two; docs/performance.md). Pinned by
        tests/hub/test_audit_with_writes.py."""
        row = {"ts": self.clock(), "kind": kind, "subject": subject, "detail": detail[:2000],
               "actor": actor[:200], "spoke": spoke[:200], "result": result[:300]}

        def run(tx: Tx) -> None:
            if also is not None:
                also(tx)
            tx.insert("audit", row)
            tx.notify("audit")  # the event streams of every hub of the cluster

        await self.transaction(run)

    async def recent_audit(self, limit: int = 100, *, spoke: str | None = None,
                           actor: str | None = None, kind: str | None = None,
                           before: int | None = None) -> list[dict[str, Any]]:
        """The newest rows first, filtered (``kind`` may end in ``.*``: ``box.*``); ``before``
        an id, to page back. Pinned by tests/hub/test_store.py::
        test_audit_is_newest_first_and_capped and ::test_audit_filters."""
        where: list[str] = []
        args: list[Any] = []
        if spoke is not None:
            where.append("spoke = ?")
            args.append(spoke)
        if actor is not None:
            where.append("actor = ?")
            args.append(actor)
        if kind is not None:
            if kind.endswith(".*"):
                where.append("kind LIKE ? ESCAPE '\\'")
                args.append(kind[:-1].replace("_", "\\_").replace("%", "\\%") + "%")
            else:
                where.append("kind = ?")
                args.append(kind)
        if before is not None:
            where.append("id < ?")
            args.append(before)
        sql = (f"SELECT {AUDIT_COLUMNS} FROM audit"
               + (f" WHERE {' AND '.join(where)}" if where else "") + " ORDER BY id DESC LIMIT ?")
        return await self.read(lambda r: r.rows(sql, (*args, limit)))

    # ------------------------------------------------------------- the events timeline
    # The audit table's autoincrement id is the timeline's cursor (GET /api/events?after=ID,
    # hub/events_api.py); readers of the live stream wait on :meth:`wait_audit`, woken by
    # every append (AuditFeed below), so no reader polls the database.
    _audit_waiter: asyncio.Event | None = None

    async def audit_after(self, after: int, limit: int = 100) -> list[dict[str, Any]]:
        """Rows with ``id > after``, oldest first, at most ``limit``. Pinned by
        tests/hub/test_fleet_memory.py::test_events_are_read_by_cursor."""
        sql = f"SELECT {EVENT_COLUMNS} FROM audit WHERE id > ? ORDER BY id LIMIT ?"
        return await self.read(lambda r: r.rows(sql, (after, limit)))

    async def audit_tail(self, limit: int = 100) -> list[dict[str, Any]]:
        """The newest ``limit`` rows, oldest first (where a timeline starts). Pinned by
        tests/hub/test_fleet_memory.py::test_events_are_read_by_cursor."""
        sql = f"SELECT {EVENT_COLUMNS} FROM audit ORDER BY id DESC LIMIT ?"
        return list(reversed(await self.read(lambda r: r.rows(sql, (limit,)))))

    async def audit_last_id(self) -> int:
        """The id of the newest row (0 when there is none): "from now on" as a cursor.
        Pinned by tests/hub/test_fleet_memory.py::test_event_stream_sse."""
        row = await self.read(lambda r: r.one("SELECT max(id) AS id FROM audit"))
        return int(row["id"] or 0) if row else 0

    async def wait_audit(self, after: int, timeout: float, limit: int = 100) -> list[dict[str, Any]]:
        """Rows after ``after``, waiting up to ``timeout`` seconds for the first one (one
        shared wake-up for every reader; the wait is bounded, so a reader also sees rows
        another process appended, at the latest after ``timeout``). Pinned by
        tests/hub/test_fleet_memory.py::test_event_stream_sse."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            if self._audit_waiter is None:
                self._audit_waiter = asyncio.Event()
            waiter = self._audit_waiter  # taken before the read: an append in between wakes it
            rows = await self.audit_after(after, limit)
            remaining = deadline - loop.time()
            if rows or remaining <= 0:
                return rows
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(waiter.wait(), remaining)

    def wake_audit_readers(self) -> None:
        """Wake every :meth:`wait_audit` (after an append; and at shutdown, to end streams)."""
        waiter, self._audit_waiter = self._audit_waiter, None
        if waiter is not None:
            waiter.set()


EVENT_COLUMNS = "id, ts, kind, subject, detail, actor, spoke, result"
AUDIT_COLUMNS = EVENT_COLUMNS
P = ParamSpec("P")
Append = Callable[Concatenate[AuditTables, P], Coroutine[Any, Any, None]]


def _waking(append: Append[P]) -> Append[P]:
    """``append``, then wake the readers waiting in :meth:`AuditTables.wait_audit`."""

    @functools.wraps(append)
    async def appended(self: AuditTables, *args: P.args, **kwargs: P.kwargs) -> None:
        await append(self, *args, **kwargs)
        self.wake_audit_readers()

    return appended


class AuditFeed(AuditTables):
    """The audit table with live readers: :meth:`audit` (whatever its arguments) also wakes
    every :meth:`wait_audit`. Pinned by tests/hub/test_fleet_memory.py::test_event_stream_sse."""

    audit = _waking(AuditTables.audit)
