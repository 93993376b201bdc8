"""Users and their server-side sessions.

Passwords arrive here already bcrypt-hashed (:mod:`hub.web.auth` hashes them off the event
loop); session cookies arrive as their SHA-256: nothing here could sign anyone in. A session
is valid while it has not ended, has not expired and its user still exists, so signing out,
removing a user or changing a password ends sessions at once, server-side.

Pinned end to end by tests/test_web_auth.py (sessions, sign-out, first admin) and
tests/test_roles.py (users add/list/remove through the CLI).
"""

from __future__ import annotations

from typing import Any

from hub.store.base import StoreBase
from hub.store.engine import Tx

USER_COLUMNS = "name, role, created_at, password_set_at, disabled_at"
# Expired or ended sessions are kept this long (for the audit trail), then dropped.
SESSION_KEEP_S = 7 * 86400


class UserTables(StoreBase):
    """The ``users`` and ``sessions`` tables."""

    async def add_user(self, name: str, password_hash: str, role: str) -> dict[str, Any] | None:
        """Add a user; None if the name is taken. Pinned by
        tests/test_roles.py::test_admin_user_add_list_remove."""
        now = self.clock()
        row = {"name": name, "password_hash": password_hash, "role": role,
               "created_at": now, "password_set_at": now, "disabled_at": None}

        def run(tx: Tx) -> bool:
            if tx.one("SELECT name FROM users WHERE name=?", (name,)) is not None:
                return False
            tx.insert("users", row)
            return True

        if not await self.transaction(run):
            return None
        return {k: v for k, v in row.items() if k != "password_hash"}

    async def create_first_admin(self, password_hash: str) -> bool:
        """Add the user ``admin`` if there are no users at all (first start), in one
        transaction so two starts cannot both make one. Pinned by
        tests/test_web_auth.py::test_first_start_prints_a_working_admin_password_once."""
        now = self.clock()

        def run(tx: Tx) -> bool:
            if tx.one("SELECT name FROM users LIMIT 1") is not None:
                return False
            tx.insert("users", {"name": "admin", "password_hash": password_hash, "role": "admin",
                                "created_at": now, "password_set_at": now, "disabled_at": None})
            return True

        return await self.transaction(run)

    async def get_user(self, name: str) -> dict[str, Any] | None:
        """The user's row with its password hash (for sign-in only); None if unknown."""
        return await self.read(lambda r: r.one("SELECT * FROM users WHERE name=?", (name,)))

    async def list_users(self) -> list[dict[str, Any]]:
        """Every user, without password hashes."""
        sql = f"SELECT {USER_COLUMNS} FROM users ORDER BY created_at, name"
        return await self.read(lambda r: r.rows(sql))

    async def set_password(self, name: str, password_hash: str,
                           keep_session: str | None = None) -> bool:
        """Replace a user's password hash and end their sessions (all but ``keep_session``,
        the token hash of the session that made the change); False for an unknown user.
        Pinned by tests/test_web_auth.py::test_set_password_from_a_pipe."""
        now = self.clock()

        def run(tx: Tx) -> bool:
            changed = tx.update("users", "name", name,
                                {"password_hash": password_hash, "password_set_at": now})
            if changed:
                tx.execute("UPDATE sessions SET ended_at=? WHERE \"user\"=? AND ended_at IS NULL "
                           "AND token_hash<>?", (now, name, keep_session or ""))
            return changed == 1

        return await self.transaction(run)

    async def remove_user(self, name: str) -> str:
        """Remove a user and end their sessions: ``"removed"``, ``"unknown"``, or
        ``"last-admin"`` (refused: the web pages would have no admin left). Pinned by
        tests/test_roles.py::test_admin_user_add_list_remove."""
        now = self.clock()

        def run(tx: Tx) -> str:
            row = tx.one("SELECT role FROM users WHERE name=?", (name,))
            if row is None:
                return "unknown"
            if row["role"] == "admin":
                admins = tx.one("SELECT count(*) AS n FROM users WHERE role='admin'")
                if admins is not None and admins["n"] <= 1:
                    return "last-admin"
            tx.execute("DELETE FROM users WHERE name=?", (name,))
            tx.execute("UPDATE sessions SET ended_at=? WHERE \"user\"=? AND ended_at IS NULL",
                       (now, name))
            return "removed"

        return await self.transaction(run)

    async def add_session(self, token_hash: str, user: str, csrf: str, lifetime_s: float,
                          remote: str) -> dict[str, Any]:
        """Record a new session (only the SHA-256 of its cookie); drops sessions that ended
        or expired more than a week ago. Pinned by tests/test_web_auth.py."""
        now = self.clock()
        row = {"token_hash": token_hash, "user": user, "csrf": csrf, "created_at": now,
               "expires_at": now + lifetime_s, "last_seen": now, "ended_at": None,
               "remote": remote[:200]}

        def run(tx: Tx) -> None:
            tx.execute("DELETE FROM sessions WHERE expires_at<? OR ended_at<?",
                       (now - SESSION_KEEP_S, now - SESSION_KEEP_S))
            tx.insert("sessions", row)

        await self.transaction(run)
        return row

    async def session_by_hash(self, token_hash: str) -> dict[str, Any] | None:
        """The live session with this cookie hash, with its user's current role; None if it
        ended, expired, or its user is gone or disabled. Looked up by hash (the primary key),
        so nothing secret-dependent is compared byte by byte. Pinned by
        tests/test_web_auth.py::test_sign_out_ends_the_session_server_side."""
        now = self.clock()
        sql = (
            'SELECT s.token_hash, s."user", s.csrf, s.created_at, s.expires_at, u.role '
            "FROM sessions s JOIN users u ON u.name = s.\"user\" "
            "WHERE s.token_hash=? AND s.ended_at IS NULL AND s.expires_at>? "
            "AND u.disabled_at IS NULL"
        )
        return await self.read(lambda r: r.one(sql, (token_hash, now)))

    async def end_session(self, token_hash: str) -> bool:
        """End a session server-side (sign-out); False if it had already ended."""
        now = self.clock()
        sql = "UPDATE sessions SET ended_at=? WHERE token_hash=? AND ended_at IS NULL"
        return await self.transaction(lambda tx: tx.execute(sql, (now, token_hash))) == 1
