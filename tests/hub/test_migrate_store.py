"""``hub migrate-store``: a SQLite store with rows in every table, written through the real
table methods, copied into a real PostgreSQL database (tests/pg.py) and read back through the
same methods; ids kept and new ones continuing after them; a non-empty target refused (unless
--force), a running source refused; the CLI's output. Pins hub/store/migrate_store.py and
cli/migrate_store_command.py.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
from pathlib import Path
from typing import Any

import psycopg
import pytest

from hub.mcp.jobs import JobStore
from hub.store import Store
from hub.store.migrate_store import MigrateError, migrate_store, source_tables
from hub.store.pg_engine import PostgresEngine
from hub.store.pg_migrations import PG_MIGRATIONS
from hub.workstreams.store import WorkstreamStore
from tests.cluster import HUB


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


async def fill(store: Store) -> None:
    """At least one row in every table, through the table code."""
    await store.add_token("tok_1", "a", "hash", 60, uses=3)
    await store.add_api_key("key_1", "ci", "khash", role="viewer")
    await store.enroll_spoke("a", "pub", ["gpu"], "1.0")
    await store.add_box("bx_1", "a", "img", {"memory": "1g"})
    for i in range(3):
        await store.audit("box.exec", f"bx_{i}", "ls", actor="key:key_1", spoke="a")
    ws = WorkstreamStore(store)
    await ws.create({"id": "ws_1", "spoke": "a", "state": "running", "title": "t"})
    await ws.append("ws_1", "user_message", {"text": "héllo %s ?"})
    await ws.inbox_add("ws_1", "queued")
    await ws.approval_add("ws_1", "c1", "shell", {"cmd": "ls"})
    await ws.usage_add("ws_1", "a", "main", 10, 5)
    jobs = JobStore(store)
    await jobs.create("job_1", "key_1", "bx_1", ["make"])
    await jobs.append("job_1", [("stdout", "out")], False)
    await store.add_user("ann", "bcrypt-hash", "admin")
    await store.add_session("sess_hash", "ann", "csrf", 3600, "127.0.0.1")
    await store.history_add(1000, {"spokes": 1.0, "tokens.in": 10})
    await store.run_started("ws_1", "a", "bx_1")
    await store.node_beat("hub_1", "https://h1:8443", "1.0")
    await store.transaction(store.spoke_connected_writes(
        "a", "hub_1", labels=["gpu"], models=["main"], version="1.0", max_workstreams=2,
        relay_token_hash="rt"))
    await store.lease_take("leader", "hub_1", 30)
    await store.cluster_secret("peer")
    await store.mcp_session_add("mcp-session-1", "hub_1")


async def snapshot(store: Store) -> dict[str, Any]:
    ws = WorkstreamStore(store)
    return {
        "tokens": await store.list_tokens(), "keys": await store.list_api_keys(),
        "spokes": await store.list_spokes(), "boxes": await store.list_boxes(live_only=False),
        "audit": await store.recent_audit(), "ws": await ws.get("ws_1"),
        "events": await ws.events("ws_1"), "inbox": await ws.inbox_pending("ws_1"),
        "approvals": await ws.approvals("ws_1"), "usage": await ws.usage_by_spoke(),
        "job": await JobStore(store).output("job_1", after=0, max_chars=100),
        "users": await store.list_users(),
        "session": await store.session_by_hash("sess_hash"),
        "history": await store.history_range(900, 1100, 10),
        "runs": await store.runs_of("ws_1"), "nodes": await store.nodes(),
        "lease": await store.lease_holder("leader"),
        "secret": await store.cluster_secret("peer"),
        "mcp_session": await store.mcp_session_hub("mcp-session-1", 1e9),
    }


async def test_every_table_is_copied_and_reads_back_the_same(tmp_path: Path, pg_url: str) -> None:
    clock = Clock()
    source = Store(tmp_path / "hub.db", clock=clock)
    await source.open()
    await fill(source)
    before = await snapshot(source)
    await source.close()
    with sqlite3.connect(tmp_path / "hub.db") as db:
        empty = [t for t in source_tables(db) if not db.execute(f"SELECT count(*) FROM {t}").fetchone()[0]]
    assert empty == [], "fill() must write every table"

    seen: list[tuple[str, int]] = []
    copied = migrate_store(tmp_path / "hub.db", pg_url, batch=2,
                           report=lambda table, rows: seen.append((table, rows)))
    assert copied["audit"] == 3 and copied["ws_events"] == 1 and dict(seen) == copied

    target = Store(tmp_path / "unused", clock=clock, engine=PostgresEngine(pg_url, PG_MIGRATIONS))
    await target.open()
    assert await snapshot(target) == before
    await target.audit("after", "x")  # identities continue after the copied ids
    assert (await target.recent_audit(limit=1))[0]["id"] == 4
    assert await WorkstreamStore(target).inbox_add("ws_1", "next") == 2
    await target.close()

    with pytest.raises(MigrateError, match=r"not empty: .*audit \(4\)"):
        migrate_store(tmp_path / "hub.db", pg_url)
    again = migrate_store(tmp_path / "hub.db", pg_url, force=True)
    assert again == copied
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT count(*) FROM audit").fetchone() == (3,)


def _hub(*args: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": str(Path(HUB).parent), "HOME": os.environ.get("HOME", "/")}
    return subprocess.run([HUB, *args], capture_output=True, text=True, timeout=120, env=env)


async def test_the_command_copies_refuses_and_hides_the_password(tmp_path: Path, pg_url: str) -> None:
    data = tmp_path / "hub"
    data.mkdir()
    store = Store(data / "hub.db")
    await store.open()
    await store.audit("k", "s")
    await store.close()
    secret_url = pg_url.replace("postgres@", "postgres:pw-secret@")
    res = _hub("migrate-store", "--data-dir", str(data), "--to", secret_url)
    assert res.returncode == 0, res.stderr
    assert "  audit: 1 rows" in res.stdout and "counts verified" in res.stdout
    assert "pw-secret" not in res.stdout + res.stderr and "postgres:***@" in res.stdout

    res = _hub("migrate-store", "--data-dir", str(data), "--to", secret_url)
    assert res.returncode == 1 and "not empty" in res.stderr and "--force" in res.stderr
    res = _hub("migrate-store", "--data-dir", str(data), "--to", f"sqlite:{tmp_path}/x.db")
    assert res.returncode == 2 and "--to must be a PostgreSQL URL" in res.stderr
    res = _hub("migrate-store", "--from", f"sqlite:{tmp_path}/none.db", "--to", secret_url)
    assert res.returncode == 1 and "no such database" in res.stderr

    from cli.runlock import HUB_LOCK, RunLock

    lock = RunLock(data, HUB_LOCK)  # as a serving hub holds it
    lock.acquire(url="https://127.0.0.1:1", kind="hub")
    try:
        res = _hub("migrate-store", "--data-dir", str(data), "--to", secret_url, "--force")
        assert res.returncode == 1 and "a hub is running on" in res.stderr
    finally:
        lock.release()
