"""The hub's embedded store: SQLite (WAL) through sqlite-utils, with versioned migrations.

Every call runs on one dedicated worker thread, so the event loop never blocks on SQLite and
the single connection needs no locking. The methods are the seam the rest of the hub uses; a
PostgreSQL store would implement the same ones.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import sqlite_utils

from protocol.errors import ErrorCode, RemoteError

T = TypeVar("T")

MIGRATIONS: list[str] = [
    # 1: enrollment, keys, spokes, boxes, audit log
    """
    CREATE TABLE tokens (
        id TEXT PRIMARY KEY, name TEXT NOT NULL, secret_hash TEXT NOT NULL,
        created_at REAL NOT NULL, expires_at REAL NOT NULL, used_at REAL, revoked_at REAL);
    CREATE TABLE api_keys (
        id TEXT PRIMARY KEY, name TEXT NOT NULL, key_hash TEXT NOT NULL UNIQUE,
        created_at REAL NOT NULL, revoked_at REAL, last_used REAL);
    CREATE TABLE spokes (
        name TEXT PRIMARY KEY, public_key TEXT NOT NULL, enrolled_at REAL NOT NULL,
        last_seen REAL, revoked_at REAL, labels TEXT NOT NULL DEFAULT '[]',
        version TEXT NOT NULL DEFAULT '', connected INTEGER NOT NULL DEFAULT 0,
        disconnect_reason TEXT NOT NULL DEFAULT '');
    CREATE TABLE boxes (
        id TEXT PRIMARY KEY, spoke TEXT NOT NULL, image TEXT NOT NULL, spec TEXT NOT NULL,
        state TEXT NOT NULL, created_at REAL NOT NULL, destroyed_at REAL);
    CREATE INDEX boxes_spoke ON boxes(spoke, state);
    CREATE TABLE audit (
        id INTEGER PRIMARY KEY AUTOINCREMENT, ts REAL NOT NULL, kind TEXT NOT NULL,
        subject TEXT NOT NULL, detail TEXT NOT NULL DEFAULT '');
    """,
    # 2: agent workstreams, their append-only event log, approvals, queued input, usage
    """
    CREATE TABLE workstreams (
        id TEXT PRIMARY KEY, spoke TEXT, want_spoke TEXT, want_label TEXT, model TEXT,
        image TEXT, auto_approve INTEGER NOT NULL DEFAULT 0, state TEXT NOT NULL,
        created_at REAL NOT NULL, updated_at REAL NOT NULL, error TEXT NOT NULL DEFAULT '',
        title TEXT NOT NULL DEFAULT '', last_seq INTEGER NOT NULL DEFAULT 0,
        input_tokens INTEGER NOT NULL DEFAULT 0, output_tokens INTEGER NOT NULL DEFAULT 0,
        owner TEXT NOT NULL DEFAULT '', spoke_seq INTEGER NOT NULL DEFAULT 0,
        box_id TEXT NOT NULL DEFAULT '');
    CREATE INDEX workstreams_state ON workstreams(state, created_at);
    CREATE TABLE ws_events (
        ws_id TEXT NOT NULL, seq INTEGER NOT NULL, ts REAL NOT NULL, kind TEXT NOT NULL,
        data TEXT NOT NULL, PRIMARY KEY (ws_id, seq));
    CREATE TABLE ws_inbox (
        id INTEGER PRIMARY KEY AUTOINCREMENT, ws_id TEXT NOT NULL, message TEXT NOT NULL,
        created_at REAL NOT NULL, delivered_at REAL);
    CREATE INDEX ws_inbox_pending ON ws_inbox(ws_id, delivered_at);
    CREATE TABLE approvals (
        ws_id TEXT NOT NULL, call_id TEXT NOT NULL, tool TEXT NOT NULL, args TEXT NOT NULL,
        state TEXT NOT NULL, created_at REAL NOT NULL, decided_at REAL, reason TEXT NOT NULL DEFAULT '',
        delivered INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (ws_id, call_id));
    CREATE TABLE usage (
        id INTEGER PRIMARY KEY AUTOINCREMENT, ts REAL NOT NULL, ws_id TEXT NOT NULL,
        spoke TEXT NOT NULL, model TEXT NOT NULL, input_tokens INTEGER NOT NULL,
        output_tokens INTEGER NOT NULL);
    """,
    # 3: MCP jobs (long execs started by chatbots), scoped to the API key that made them, and
    # their output in order; readable by cursor (seq) after the job ends or the hub restarts.
    """
    CREATE TABLE mcp_jobs (
        id TEXT PRIMARY KEY, owner TEXT NOT NULL, box_id TEXT NOT NULL, cmd TEXT NOT NULL,
        state TEXT NOT NULL, exit_code INTEGER, error TEXT NOT NULL DEFAULT '',
        created_at REAL NOT NULL, finished_at REAL, last_seq INTEGER NOT NULL DEFAULT 0,
        out_chars INTEGER NOT NULL DEFAULT 0, truncated INTEGER NOT NULL DEFAULT 0);
    CREATE INDEX mcp_jobs_owner ON mcp_jobs(owner, created_at);
    CREATE TABLE mcp_job_output (
        job_id TEXT NOT NULL, seq INTEGER NOT NULL, ts REAL NOT NULL, stream TEXT NOT NULL,
        data TEXT NOT NULL, PRIMARY KEY (job_id, seq));
    """,
    # 4: why a workstream waits (shown to users), and whether its spoke lost its agent (it is
    # then resumed from the transcript with the next message).
    """
    ALTER TABLE workstreams ADD COLUMN waiting TEXT NOT NULL DEFAULT '';
    ALTER TABLE workstreams ADD COLUMN detached INTEGER NOT NULL DEFAULT 0;
    CREATE INDEX ws_inbox_undelivered ON ws_inbox(delivered_at, ws_id);
    """,
]

LIVE_BOX_STATES = ("creating", "running")


class Store:
    def __init__(self, path: Path, clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self.clock = clock
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hub-store")
        self._db: sqlite_utils.Database | None = None
        self._closed = False

    async def open(self) -> None:
        await self._run(self._open)

    async def close(self) -> None:
        """Refuse new work first, then close: calls already queued on the worker thread run
        before the close (one worker, first in first out), and any call made from now on gets
        the typed ``unavailable`` error instead of a closed database's traceback."""
        if self._closed:
            return
        self._closed = True
        if self._db is not None:
            await asyncio.get_running_loop().run_in_executor(self._pool, self._db.conn.close)
        self._pool.shutdown(wait=True)

    @property
    def db(self) -> sqlite_utils.Database:
        assert self._db is not None, "store is not open"
        return self._db

    async def _run(self, fn: Callable[[], T]) -> T:
        # Requests and spoke links still draining during shutdown get a clear, typed error
        # instead of a traceback from a closed database or executor.
        if self._closed:
            raise RemoteError(ErrorCode.UNAVAILABLE, "the hub is shutting down")
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn)

    def _open(self) -> None:
        conn = sqlite3.connect(self.path, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute("PRAGMA busy_timeout=5000")
        self._db = sqlite_utils.Database(conn)
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
            with conn:
                conn.executescript("BEGIN;" + script + f";PRAGMA user_version={number};COMMIT;")

    def _rows(self, sql: str, params: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
        return list(self.db.query(sql, params))

    def _one(self, sql: str, params: tuple[Any, ...] = ()) -> dict[str, Any] | None:
        rows = self._rows(sql, params)
        return rows[0] if rows else None

    def _exec(self, sql: str, params: tuple[Any, ...] = ()) -> int:
        return self.db.execute(sql, params).rowcount

    # ---------------------------------------------------------------- tokens
    async def add_token(
        self, token_id: str, name: str, secret_hash: str, ttl_s: float
    ) -> dict[str, Any]:
        now = self.clock()
        row = {
            "id": token_id,
            "name": name,
            "secret_hash": secret_hash,
            "created_at": now,
            "expires_at": now + ttl_s,
            "used_at": None,
            "revoked_at": None,
        }
        await self._run(lambda: self.db.table("tokens").insert(row))
        return row

    async def get_token(self, token_id: str) -> dict[str, Any] | None:
        return await self._run(lambda: self._one("SELECT * FROM tokens WHERE id=?", (token_id,)))

    async def take_token(self, token_id: str) -> bool:
        """Atomically mark a valid token used; False if it was used, revoked or expired."""
        now = self.clock()
        sql = (
            "UPDATE tokens SET used_at=? WHERE id=? AND used_at IS NULL "
            "AND revoked_at IS NULL AND expires_at>?"
        )
        return await self._run(lambda: self._exec(sql, (now, token_id, now))) == 1

    async def list_tokens(self) -> list[dict[str, Any]]:
        return await self._run(
            lambda: self._rows(
                "SELECT id, name, created_at, expires_at, used_at, revoked_at FROM tokens ORDER BY created_at"
            )
        )

    async def revoke_token(self, token_id: str) -> bool:
        sql = "UPDATE tokens SET revoked_at=? WHERE id=? AND revoked_at IS NULL"
        return await self._run(lambda: self._exec(sql, (self.clock(), token_id))) == 1

    # -------------------------------------------------------------- api keys
    async def add_api_key(self, key_id: str, name: str, key_hash: str) -> dict[str, Any]:
        row = {
            "id": key_id,
            "name": name,
            "key_hash": key_hash,
            "created_at": self.clock(),
            "revoked_at": None,
            "last_used": None,
        }
        await self._run(lambda: self.db.table("api_keys").insert(row))
        return row

    async def api_key_by_hash(self, key_hash: str) -> dict[str, Any] | None:
        return await self._run(
            lambda: self._one(
                "SELECT * FROM api_keys WHERE key_hash=? AND revoked_at IS NULL", (key_hash,)
            )
        )

    async def touch_api_key(self, key_id: str) -> None:
        await self._run(lambda: self._exec("UPDATE api_keys SET last_used=? WHERE id=?", (self.clock(), key_id)))

    async def list_api_keys(self) -> list[dict[str, Any]]:
        return await self._run(
            lambda: self._rows(
                "SELECT id, name, created_at, revoked_at, last_used FROM api_keys ORDER BY created_at"
            )
        )

    async def revoke_api_key(self, key_id: str) -> bool:
        sql = "UPDATE api_keys SET revoked_at=? WHERE id=? AND revoked_at IS NULL"
        return await self._run(lambda: self._exec(sql, (self.clock(), key_id))) == 1

    # ---------------------------------------------------------------- spokes
    async def enroll_spoke(
        self, name: str, public_key: str, labels: list[str], version: str
    ) -> None:
        row = {
            "name": name,
            "public_key": public_key,
            "enrolled_at": self.clock(),
            "last_seen": self.clock(),
            "revoked_at": None,
            "labels": json.dumps(labels),
            "version": version,
            "connected": 0,
            "disconnect_reason": "",
        }
        await self._run(lambda: self.db.table("spokes").upsert(row, pk="name"))

    async def get_spoke(self, name: str) -> dict[str, Any] | None:
        return await self._run(lambda: self._one("SELECT * FROM spokes WHERE name=?", (name,)))

    async def list_spokes(self) -> list[dict[str, Any]]:
        sql = (
            "SELECT s.*, (SELECT count(*) FROM boxes b WHERE b.spoke=s.name AND b.state IN "
            "('creating','running')) AS boxes FROM spokes s ORDER BY s.name"
        )
        return await self._run(lambda: self._rows(sql))

    async def mark_spoke(
        self,
        name: str,
        *,
        connected: bool,
        reason: str = "",
        labels: list[str] | None = None,
        version: str | None = None,
    ) -> None:
        def run() -> None:
            sets = {
                "connected": int(connected),
                "last_seen": self.clock(),
                "disconnect_reason": reason,
            }
            if labels is not None:
                sets["labels"] = json.dumps(labels)
            if version is not None:
                sets["version"] = version
            self.db.table("spokes").update(name, sets)

        await self._run(run)

    async def touch_spoke(self, name: str) -> None:
        await self._run(
            lambda: self._exec("UPDATE spokes SET last_seen=? WHERE name=?", (self.clock(), name))
        )

    async def revoke_spoke(self, name: str) -> bool:
        sql = "UPDATE spokes SET revoked_at=?, connected=0, disconnect_reason='revoked' WHERE name=? AND revoked_at IS NULL"
        return await self._run(lambda: self._exec(sql, (self.clock(), name))) == 1

    async def mark_all_disconnected(self) -> None:
        await self._run(
            lambda: self._exec(
                "UPDATE spokes SET connected=0, disconnect_reason='hub restarted' WHERE connected=1"
            )
        )

    # ----------------------------------------------------------------- boxes
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
        await self._run(lambda: self.db.table("boxes").insert(row))

    async def set_box_state(self, box_id: str, state: str) -> None:
        def run() -> None:
            destroyed = self.clock() if state not in LIVE_BOX_STATES else None
            self._exec(
                "UPDATE boxes SET state=?, destroyed_at=? WHERE id=?", (state, destroyed, box_id)
            )

        await self._run(run)

    async def db_update_box_image(self, box_id: str, image: str) -> None:
        if image:
            await self._run(lambda: self._exec("UPDATE boxes SET image=? WHERE id=?", (image, box_id)))

    async def get_box(self, box_id: str) -> dict[str, Any] | None:
        return await self._run(lambda: self._one("SELECT * FROM boxes WHERE id=?", (box_id,)))

    async def list_boxes(
        self, spoke: str | None = None, live_only: bool = True
    ) -> list[dict[str, Any]]:
        where, params = [], []
        if spoke is not None:
            where.append("spoke=?")
            params.append(spoke)
        if live_only:
            where.append("state IN ('creating','running')")
        sql = (
            "SELECT * FROM boxes"
            + (" WHERE " + " AND ".join(where) if where else "")
            + " ORDER BY created_at"
        )
        return await self._run(lambda: self._rows(sql, tuple(params)))

    # ----------------------------------------------------------------- audit
    async def audit(self, kind: str, subject: str, detail: str = "") -> None:
        row = {"ts": self.clock(), "kind": kind, "subject": subject, "detail": detail[:2000]}
        await self._run(lambda: self.db.table("audit").insert(row))

    async def recent_audit(self, limit: int = 100) -> list[dict[str, Any]]:
        return await self._run(
            lambda: self._rows("SELECT * FROM audit ORDER BY id DESC LIMIT ?", (limit,))
        )
