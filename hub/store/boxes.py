"""The hub's record of boxes: which spoke holds each, its spec, and its state.

Pinned end to end by tests/test_boxes_e2e.py (reaping, lost boxes) and without processes by
tests/hub/test_store.py::test_box_rows_follow_the_injected_clock.
"""

from __future__ import annotations

import json
from typing import Any

from hub.store.base import StoreBase
from hub.store.engine import Tx

LIVE_BOX_STATES = ("creating", "running")


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
        await self.transaction(lambda tx: tx.insert("boxes", row))

    async def set_box_state(self, box_id: str, state: str) -> None:
        """A state outside :data:`LIVE_BOX_STATES` also stamps ``destroyed_at``."""
        fields = {"state": state, "destroyed_at": self.clock() if state not in LIVE_BOX_STATES else None}

        def run(tx: Tx) -> None:
            tx.update("boxes", "id", box_id, fields)

        await self.transaction(run)

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
