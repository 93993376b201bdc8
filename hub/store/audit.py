"""The audit log: who did what, appended, newest first when read."""

from __future__ import annotations

from typing import Any

from hub.store.base import StoreBase


class AuditTables(StoreBase):
    """The ``audit`` table. Pinned by tests/hub/test_store.py::test_audit_is_newest_first_and_capped."""

    async def audit(self, kind: str, subject: str, detail: str = "") -> None:
        row = {"ts": self.clock(), "kind": kind, "subject": subject, "detail": detail[:2000]}
        await self.transaction(lambda tx: tx.insert("audit", row))

    async def recent_audit(self, limit: int = 100) -> list[dict[str, Any]]:
        return await self.read(
            lambda r: r.rows("SELECT * FROM audit ORDER BY id DESC LIMIT ?", (limit,))
        )
