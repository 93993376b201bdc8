"""Enrolled spokes: public keys, labels, and whether each is connected (and why not).

Pinned end to end by tests/test_enrollment.py (enroll, revoke, restart, lost and recovered),
and without processes by tests/hub/test_store.py (the upsert on re-enrollment).
"""

from __future__ import annotations

import json
from typing import Any

from hub.store.base import StoreBase
from hub.store.boxes import LIVE_BOX_STATES
from hub.store.engine import Tx

_LIVE = ", ".join(f"'{s}'" for s in LIVE_BOX_STATES)


class SpokeTables(StoreBase):
    """The ``spokes`` table."""

    async def enroll_spoke(
        self, name: str, public_key: str, labels: list[str], version: str
    ) -> None:
        """Register (or re-register, replacing every column) a spoke's key."""
        now = self.clock()
        row = {
            "name": name,
            "public_key": public_key,
            "enrolled_at": now,
            "last_seen": now,
            "revoked_at": None,
            "labels": json.dumps(labels),
            "version": version,
            "connected": 0,
            "disconnect_reason": "",
            "state": "lost",  # until the connect that follows marks it connected
        }

        def run(tx: Tx) -> None:
            tx.upsert("spokes", row, ("name",))

        await self.transaction(run)

    async def get_spoke(self, name: str) -> dict[str, Any] | None:
        return await self.read(lambda r: r.one("SELECT * FROM spokes WHERE name=?", (name,)))

    async def list_spokes(self) -> list[dict[str, Any]]:
        """Every spoke with ``boxes``, its count of live boxes."""
        sql = (
            f"SELECT s.*, (SELECT count(*) FROM boxes b WHERE b.spoke=s.name AND b.state IN "
            f"({_LIVE})) AS boxes FROM spokes s ORDER BY s.name"
        )
        return await self.read(lambda r: r.rows(sql))

    async def touch_spokes(self, seen: dict[str, float]) -> None:
        """Record when each spoke was last heard from, all in one transaction: the registry
        keeps ``last_seen`` of live links in memory and writes it in batches (1000 spokes
        beating every 3 s must not mean 1000 transactions). Pinned by tests/hub/test_store.py::
        test_touch_spokes_writes_a_batch."""
        if not seen:
            return

        def run(tx: Tx) -> None:
            for name, when in seen.items():
                tx.execute("UPDATE spokes SET last_seen=? WHERE name=?", (when, name))

        await self.transaction(run)

    async def revoke_spoke(self, name: str) -> bool:
        """Pinned by tests/test_enrollment.py::test_revoke_disconnects_at_once_and_forever."""
        sql = (
            "UPDATE spokes SET revoked_at=?, connected=0, disconnect_reason='revoked', state='revoked' "
            "WHERE name=? AND revoked_at IS NULL"
        )
        now = self.clock()

        def run(tx: Tx) -> bool:
            changed = tx.execute(sql, (now, name)) == 1
            tx.notify(f"spoke:{name}")  # the hub holding its link closes it (hub/registry.py)
            return changed

        return await self.transaction(run)

    async def mark_all_disconnected(self) -> None:
        """At hub start: no spoke is connected to a hub that was not running. Rows still
        marked connected were left by a hub that stopped without closing its links (killed):
        their spokes are ``lost`` with the reason ``hub restarted``.
        Pinned by tests/test_enrollment.py::test_reconnect_after_hub_restart_keeps_everything."""
        sql = ("UPDATE spokes SET connected=0, disconnect_reason='hub restarted', state='lost' "
               "WHERE connected=1")
        await self.transaction(lambda tx: tx.execute(sql))
