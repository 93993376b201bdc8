"""Join tokens and API keys: secrets stored only as hashes, taken and revoked atomically.

Pinned end to end by tests/test_enrollment.py and tests/test_admin_cli.py, and without
processes by tests/hub/test_store.py (the atomic take, expiry by the injected clock).
"""

from __future__ import annotations

from typing import Any

from hub.store.base import StoreBase
from hub.store.engine import Tx


class TokenTables(StoreBase):
    """The ``tokens`` table: expiring join tokens, single-use (bound to one spoke name) or
    multi-use (``prefix``: up to ``uses`` spokes named PREFIX-…, one use taken per spoke)."""

    async def add_token(
        self, token_id: str, name: str, secret_hash: str, ttl_s: float, uses: int | None = None
    ) -> dict[str, Any]:
        """A single-use token bound to spoke ``name``; with ``uses``, a multi-use token for up
        to ``uses`` spokes named ``name-…`` (``name`` is then a prefix). Pinned by
        tests/hub/test_token_uses.py::test_a_multi_use_token_is_taken_once_per_use."""
        now = self.clock()
        row = {
            "id": token_id,
            "name": name,
            "secret_hash": secret_hash,
            "created_at": now,
            "expires_at": now + ttl_s,
            "used_at": None,
            "revoked_at": None,
            "uses": uses or 1,
            "uses_left": uses or 1,
            "prefix": int(uses is not None),
        }
        await self.transaction(lambda tx: tx.insert("tokens", row))
        return row

    async def get_token(self, token_id: str) -> dict[str, Any] | None:
        return await self.read(lambda r: r.one("SELECT * FROM tokens WHERE id=?", (token_id,)))

    async def take_token(self, token_id: str) -> bool:
        """Atomically take one use of a valid token (``used_at`` says when the last was
        taken); False if none is left, or it was revoked or expired. One statement, so
        concurrent enrollments never take more uses than the token has. Pinned by
        tests/hub/test_store.py::test_a_token_is_taken_once_under_concurrent_takers,
        tests/hub/test_token_uses.py::test_a_multi_use_token_is_taken_once_per_use and
        tests/test_enrollment.py::test_token_is_one_time."""
        now = self.clock()
        sql = (
            "UPDATE tokens SET used_at=?, uses_left=uses_left-1 WHERE id=? AND uses_left>0 "
            "AND revoked_at IS NULL AND expires_at>?"
        )
        return await self.transaction(lambda tx: tx.execute(sql, (now, token_id, now))) == 1

    async def list_tokens(self) -> list[dict[str, Any]]:
        sql = ("SELECT id, name, created_at, expires_at, used_at, revoked_at, uses, uses_left, "
               "prefix FROM tokens ORDER BY created_at")
        return await self.read(lambda r: r.rows(sql))

    async def revoke_token(self, token_id: str) -> bool:
        """Pinned by tests/test_admin_cli.py::test_token_list_and_revoke."""
        now = self.clock()
        sql = "UPDATE tokens SET revoked_at=? WHERE id=? AND revoked_at IS NULL"
        return await self.transaction(lambda tx: tx.execute(sql, (now, token_id))) == 1


class ApiKeyTables(StoreBase):
    """The ``api_keys`` table. Pinned by tests/test_admin_cli.py::test_api_keys_create_list_use_and_revoke."""

    async def add_api_key(self, key_id: str, name: str, key_hash: str,
                          role: str = "admin") -> dict[str, Any]:
        """A key with ``role`` (admin, operator or viewer; see :mod:`hub.roles`). Pinned by
        tests/test_roles.py::test_a_viewer_key_reads_but_cannot_write."""
        row = {
            "id": key_id,
            "name": name,
            "key_hash": key_hash,
            "created_at": self.clock(),
            "revoked_at": None,
            "last_used": None,
            "role": role,
        }
        await self.transaction(lambda tx: tx.insert("api_keys", row))
        return row

    async def api_key_by_hash(self, key_hash: str) -> dict[str, Any] | None:
        sql = "SELECT * FROM api_keys WHERE key_hash=? AND revoked_at IS NULL"
        return await self.read(lambda r: r.one(sql, (key_hash,)))

    async def touch_api_key(self, key_id: str) -> None:
        now = self.clock()

        def run(tx: Tx) -> None:
            tx.update("api_keys", "id", key_id, {"last_used": now})

        await self.transaction(run)

    async def list_api_keys(self) -> list[dict[str, Any]]:
        sql = "SELECT id, name, role, created_at, revoked_at, last_used FROM api_keys ORDER BY created_at"
        return await self.read(lambda r: r.rows(sql))

    # Bumped by every revocation: the auth middleware's key cache drops what it cached under
    # an older revision, so a revoked key stops working at once (hub/http_util.py).
    api_keys_revision = 0

    async def revoke_api_key(self, key_id: str) -> bool:
        now = self.clock()
        sql = "UPDATE api_keys SET revoked_at=? WHERE id=? AND revoked_at IS NULL"
        changed = await self.transaction(lambda tx: tx.execute(sql, (now, key_id))) == 1
        self.api_keys_revision += 1
        return changed
