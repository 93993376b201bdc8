"""The hub's record of boxes: which spoke holds each, its spec, and its state.

Pinned end to end by tests/test_boxes_e2e.py (reaping, lost boxes) and without processes by
tests/hub/test_store.py::test_box_rows_follow_the_injected_clock.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from hub.store.base import StoreBase
from hub.store.engine import Tx

LIVE_BOX_STATES = ("creating", "running", "paused")


class BoxTables(StoreBase):
    """The ``boxes`` table."""

    async def add_box(self, box_id: str, spoke: str, image: str, spec: dict[str, Any]) -> None:
        row = {
            "id": box_id,
            "spoke": spoke,
            "image": image,
            "spec": json.dumps(spec),
            "state": "creating",
            "created_at": self.clock(),
            "destroyed_at": None,
        }
        row["last_active_at"] = row["created_at"]
        await self.transaction(lambda tx: tx.insert("boxes", row))

    async def touch_boxes(self, times: Mapping[str, float]) -> None:
        """Record the last activity of boxes (``{box_id: when}``; an exec or a file transfer,
        hub/box_activity.py), in one transaction: what the janitor's idle TTL counts from.
        A time never moves backwards. Pinned by
        tests/hub/test_janitor.py::test_activity_keeps_a_box_and_idleness_reaps_it."""
        sql = ("UPDATE boxes SET last_active_at=? WHERE id=? "
               "AND (last_active_at IS NULL OR last_active_at<?)")
        items = [(at, box_id, at) for box_id, at in times.items()]

        def run(tx: Tx) -> None:
            for params in items:
                tx.execute(sql, params)

        if items:
            await self.transaction(run)

    async def idle_boxes(self, before: float, limit: int = 100) -> list[dict[str, Any]]:
        """Running boxes whose last activity is older than ``before``, oldest first, except
        the box of any workstream that is not closed (in use while its workstream is open,
        even when nobody talks to it); a box still being created is never idle. Pinned by
        tests/hub/test_janitor.py::test_an_open_workstreams_box_is_never_reaped."""
        sql = ("SELECT * FROM boxes WHERE state='running' "
               "AND coalesce(last_active_at, created_at) < ? AND id NOT IN "
               "(SELECT box_id FROM workstreams WHERE state<>'closed' AND box_id<>'') "
               "ORDER BY coalesce(last_active_at, created_at) LIMIT ?")
        return await self.read(lambda r: r.rows(sql, (before, limit)))

    async def set_box_state(self, box_id: str, state: str) -> None:
        """A state outside :data:`LIVE_BOX_STATES` also stamps ``destroyed_at``."""
        await self.transaction(self.box_state_write(box_id, state))

    def box_state_write(self, box_id: str, state: str) -> Callable[[Tx], None]:
        """:meth:`set_box_state`'s write, to commit with other writes (a box create's
        audit row: hub/audit.py ``Outcome.also``)."""
        fields = {"state": state, "destroyed_at": self.clock() if state not in LIVE_BOX_STATES else None}

        def run(tx: Tx) -> None:
            tx.update("boxes", "id", box_id, fields)

        return run

    async def db_update_box_image(self, box_id: str, image: str) -> None:
        if not image:
            return

        def run(tx: Tx) -> None:
            tx.update("boxes", "id", box_id, {"image": image})

        await self.transaction(run)

    async def get_box(self, box_id: str) -> dict[str, Any] | None:
        return await self.read(lambda r: r.one("SELECT * FROM boxes WHERE id=?", (box_id,)))

    async def list_boxes(
        self, spoke: str | None = None, live_only: bool = True
    ) -> list[dict[str, Any]]:
        where: list[str] = []
        params: list[Any] = []
        if spoke is not None:
            where.append("spoke=?")
            params.append(spoke)
        if live_only:
            where.append(f"state IN ({', '.join('?' for _ in LIVE_BOX_STATES)})")
            params.extend(LIVE_BOX_STATES)
        sql = (
            "SELECT * FROM boxes"
            + (" WHERE " + " AND ".join(where) if where else "")
            + " ORDER BY created_at"
        )
        return await self.read(lambda r: r.rows(sql, params))
