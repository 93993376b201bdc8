"""The store seam without processes: real SQLite in a tmp dir, and a real PostgreSQL database
(tests/pg.py), an injected clock. Every test that takes ``store``/``two_stores``/``make_store``
runs on both engines (tests/hub/conftest.py); those about SQLite's file and ``user_version``
stay SQLite-only (PostgreSQL's are in tests/hub/test_pg_engine.py).

Pins hub.store (engine, migrations, table groups), hub.workstreams.store and the MCP job store:
transactions are all or nothing, a closed store refuses with ``unavailable`` after its queued
calls finish, migrations run once, and the writes that must be atomic stay so under concurrent
callers — including two stores (two connections, two threads) on one database.
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any, cast

import psycopg
import pytest

from hub.boxes import BoxService
from hub.mcp.jobs import JobRunner, JobStore
from hub.store import SqliteEngine, Store, Tx
from hub.store.engine import SchemaTooNew
from hub.store.migrations import MIGRATIONS
from hub.workstreams.store import WorkstreamStore
from protocol.errors import ErrorCode, RemoteError
from tests.hub.conftest import Clock, MakeStore


def audit_row(subject: str) -> dict[str, Any]:
    return {"ts": 1.0, "kind": "test", "subject": subject, "detail": ""}


def user_version(path: Path) -> int:
    with sqlite3.connect(path) as db:
        return int(db.execute("PRAGMA user_version").fetchone()[0])


# ------------------------------------------------------------------------------ transactions
async def test_a_transaction_commits_all_or_nothing(store: Store, make_store: MakeStore) -> None:
    def two_then_fail(tx: Tx) -> None:
        tx.insert("audit", audit_row("one"))
        tx.insert("audit", audit_row("two"))
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        await store.transaction(two_then_fail)
    assert await store.recent_audit() == []

    await store.add_token("tok_1", "a", "hash", 60)

    def key_then_duplicate(tx: Tx) -> None:  # the second statement fails in the database
        tx.insert("api_keys", {"id": "key_1", "name": "k", "key_hash": "h", "created_at": 1.0})
        tx.insert("tokens", {"id": "tok_1", "name": "a", "secret_hash": "x",
                             "created_at": 1.0, "expires_at": 2.0})

    with pytest.raises((sqlite3.IntegrityError, psycopg.errors.UniqueViolation)):
        await store.transaction(key_then_duplicate)
    assert await store.list_api_keys() == []

    ids = await store.transaction(
        lambda tx: [tx.insert("audit", audit_row("one")), tx.insert("audit", audit_row("two"))])
    if store.engine.kind == "sqlite":
        assert ids == [1, 2]  # the rolled-back inserts used no ids either
    else:  # PostgreSQL's sequences are not rolled back: ids grow, with gaps
        assert ids[0] < ids[1]
    other = make_store()  # committed: visible to another connection
    await other.open()
    assert [r["subject"] for r in await other.recent_audit()] == ["two", "one"]
    await other.close()


async def test_tx_is_valid_only_inside_its_function(store: Store) -> None:
    kept: list[Any] = []
    await store.transaction(kept.append)
    await store.read(kept.append)
    for tx in kept:
        with pytest.raises(RuntimeError, match="transaction has ended"):
            tx.one("SELECT 1")
    assert await store.read(lambda r: r.one("SELECT 1 AS x")) == {"x": 1}
    assert await store.read(lambda r: r.one("SELECT 1 AS x WHERE 1 = 0")) is None


async def test_tx_helpers_check_identifiers_and_count_rows(store: Store) -> None:
    with pytest.raises(ValueError, match="identifier"):
        await store.transaction(lambda tx: tx.insert("audit; DROP TABLE audit", audit_row("x")))
    with pytest.raises(ValueError, match="identifier"):
        await store.transaction(lambda tx: tx.update("spokes", "name", "a", {'x"=1 --': 1}))
    await store.enroll_spoke("a", "key-1", [], "1")
    assert await store.transaction(lambda tx: tx.update("spokes", "name", "a", {"version": "2"})) == 1
    assert await store.transaction(lambda tx: tx.update("spokes", "name", "zz", {"version": "2"})) == 0
    assert await store.transaction(lambda tx: tx.update("spokes", "name", "a", {})) == 0


async def test_re_enrolling_a_spoke_replaces_every_column(store: Store, clock: Clock) -> None:
    await store.enroll_spoke("a", "key-1", ["gpu"], "1")
    await store.transaction(store.spoke_connected_writes(
        "a", "local", labels=["gpu"], models=[], version="1", max_workstreams=1, relay_token_hash=""))
    assert await store.revoke_spoke("a")
    assert not await store.revoke_spoke("a")  # only once
    clock.t = 2000.0
    await store.enroll_spoke("a", "key-2", [], "2")
    spokes = await store.list_spokes()
    assert len(spokes) == 1
    row = spokes[0]
    assert (row["public_key"], row["revoked_at"], row["labels"], row["version"]) == ("key-2", None, "[]", "2")
    assert (row["enrolled_at"], row["connected"], row["boxes"]) == (2000.0, 0, 0)


# ----------------------------------------------------------------------- lifecycle, schema
async def test_a_closed_store_refuses_after_queued_calls_finish(make_store: MakeStore) -> None:
    store = make_store()
    await store.open()
    queued = [asyncio.ensure_future(store.audit("queued", f"s{i}")) for i in range(20)]
    await asyncio.sleep(0)  # every call is now on the worker thread's queue
    await store.close()
    await asyncio.gather(*queued)  # they ran before the connection closed
    for call in (store.get_spoke("a"), store.transaction(lambda tx: tx.execute("SELECT 1")),
                 store.read(lambda r: r.rows("SELECT 1"))):
        with pytest.raises(RemoteError) as err:
            await call
        assert err.value.code is ErrorCode.UNAVAILABLE
        assert err.value.message == "the hub is shutting down"
    await store.close()  # closing twice is harmless

    again = make_store()
    await again.open()
    assert len(await again.recent_audit()) == 20
    await again.close()


async def test_migrations_run_once_in_order(tmp_path: Path, clock: Clock) -> None:
    for _ in range(2):  # reopening runs nothing twice (a second CREATE TABLE would fail)
        store = Store(tmp_path / "hub.db", clock=clock)
        await store.open()
        await store.close()
        assert user_version(tmp_path / "hub.db") == len(MIGRATIONS)

    path = tmp_path / "other.db"
    first = "CREATE TABLE t (x INTEGER); INSERT INTO t VALUES (1)"
    for scripts in ([first], [first, "INSERT INTO t VALUES (2)"], [first, "INSERT INTO t VALUES (2)"]):
        engine = SqliteEngine(path, scripts)
        await engine.open()
        await engine.close()
    broken = SqliteEngine(path, [first, "INSERT INTO t VALUES (2)",
                                 "INSERT INTO t VALUES (3); CREATE TABLE t (y)"])
    with pytest.raises(sqlite3.OperationalError):
        await broken.open()
    await broken.close()
    assert user_version(path) == 2  # the failing script left nothing, not even its first row
    with sqlite3.connect(path) as db:
        assert [r[0] for r in db.execute("SELECT x FROM t ORDER BY x")] == [1, 2]


async def test_a_newer_database_is_refused_with_both_versions(tmp_path: Path, clock: Clock) -> None:
    store = Store(tmp_path / "hub.db", clock=clock)
    await store.open()
    await store.close()
    newer = len(MIGRATIONS) + 3
    with sqlite3.connect(tmp_path / "hub.db") as db:
        db.execute(f"PRAGMA user_version={newer}")
    older = Store(tmp_path / "hub.db", clock=clock)
    with pytest.raises(SchemaTooNew) as refused:
        await older.open()
    await older.close()
    assert f"schema version is {newer}" in str(refused.value)
    assert f"up to {len(MIGRATIONS)}" in str(refused.value)
    assert user_version(tmp_path / "hub.db") == newer, "nothing was changed"


# ------------------------------------------------------------------------- atomic writes
async def test_a_token_is_taken_once_under_concurrent_takers(
    two_stores: tuple[Store, Store], clock: Clock
) -> None:
    a, b = two_stores
    await a.add_token("tok_1", "spoke-a", "hash", ttl_s=60)
    results = await asyncio.gather(*(s.take_token("tok_1") for s in [a, b] * 25))
    assert sorted(results) == [False] * 49 + [True]
    token = await b.get_token("tok_1")
    assert token is not None and token["used_at"] == 1000.0

    await a.add_token("tok_2", "spoke-b", "hash", ttl_s=60)
    await a.add_token("tok_3", "spoke-c", "hash", ttl_s=600)
    assert await a.revoke_token("tok_3") and not await a.revoke_token("tok_3")
    clock.t += 61  # tok_2 has expired
    assert not await b.take_token("tok_2")
    assert not await b.take_token("tok_3")
    assert not await b.take_token("tok_unknown")
    assert [t["id"] for t in await a.list_tokens()] == ["tok_1", "tok_2", "tok_3"]


async def test_append_keeps_seq_gap_free_under_concurrent_appends(
    two_stores: tuple[Store, Store], clock: Clock
) -> None:
    wa, wb = (WorkstreamStore(s) for s in two_stores)
    await wa.create({"id": "ws_1", "state": "idle"})
    appended = await asyncio.gather(
        *((wa if i % 2 else wb).append("ws_1", "text", {"i": i}) for i in range(100)))
    assert sorted(e["seq"] for e in appended if e) == list(range(1, 101))
    events = await wb.events("ws_1", after=0, limit=1000)
    assert [e["seq"] for e in events] == list(range(1, 101))
    assert sorted(e["data"]["i"] for e in events) == list(range(100))
    ws = await wa.get("ws_1")
    assert ws is not None and ws["last_seq"] == 100

    # spoke events carry their own sseq: a re-sent one (not above the last) is dropped
    assert await wa.append("ws_1", "delta", {}, sseq=5) is not None
    assert await wb.append("ws_1", "delta", {}, sseq=5) is None
    assert await wb.append("ws_1", "delta", {}, sseq=4) is None
    clock.t = 1234.5
    event = await wa.append("ws_1", "delta", {"x": 1}, sseq=6)
    assert event == {"seq": 102, "ts": 1234.5, "kind": "delta", "data": {"x": 1}}
    assert await wa.append("ws_unknown", "text", {}) is None
    assert [e["seq"] for e in await wa.events("ws_1", after=100)] == [101, 102]


async def test_workstream_rows_inbox_approvals_and_usage(store: Store, clock: Clock) -> None:
    ws = WorkstreamStore(store)
    await ws.create({"id": "ws_1", "spoke": "a", "state": "running"})
    await ws.create({"id": "ws_2", "spoke": "a", "state": "idle"})
    assert await ws.busy_counts() == {"a": 1}
    clock.t = 1100.0
    await ws.update("ws_2", state="thinking", waiting="")
    row = await ws.get("ws_2")
    assert row is not None and (row["state"], row["updated_at"]) == ("thinking", 1100.0)
    assert [w["id"] for w in await ws.in_state("running", "thinking")] == ["ws_1", "ws_2"]

    first = await ws.inbox_add("ws_1", "hello")
    assert await ws.with_undelivered_messages() == ["ws_1"]
    await ws.inbox_delivered(first)
    assert await ws.inbox_pending("ws_1") == []

    await ws.approval_add("ws_1", "c1", "shell", {"cmd": "ls"})
    assert await ws.approval_decide("ws_1", "c1", "approved", "")
    assert not await ws.approval_decide("ws_1", "c1", "denied", "too late")
    await ws.approval_add("ws_1", "c1", "shell", {"cmd": "pwd"})  # re-asked: pending again
    (again,) = await ws.approvals("ws_1", "pending")
    assert again["args"] == {"cmd": "pwd"}

    await ws.usage_add("ws_1", "a", "main", 10, 5)
    await ws.usage_add("ws_1", "a", "main", 1, 2)
    assert await ws.usage_by_spoke() == [
        {"spoke": "a", "model": "main", "input_tokens": 11, "output_tokens": 7, "calls": 2}]
    row = await ws.get("ws_1")
    assert row is not None and (row["input_tokens"], row["output_tokens"]) == (11, 7)


# ----------------------------------------------------------------- boxes, audit, MCP jobs
async def test_box_rows_follow_the_injected_clock(store: Store, clock: Clock) -> None:
    await store.enroll_spoke("a", "key", [], "1")
    await store.add_box("bx_1", "a", "img", {"memory": "1g"})
    await store.set_box_state("bx_1", "running")
    await store.db_update_box_image("bx_1", "img:2")
    box = await store.get_box("bx_1")
    assert box is not None
    assert (box["state"], box["image"], box["created_at"], box["destroyed_at"]) == ("running", "img:2", 1000.0, None)
    assert (await store.list_spokes())[0]["boxes"] == 1
    clock.t = 1050.0
    await store.set_box_state("bx_1", "destroyed")
    assert await store.list_boxes(spoke="a") == []
    (gone,) = await store.list_boxes(spoke="a", live_only=False)
    assert gone["destroyed_at"] == 1050.0
    assert (await store.list_spokes())[0]["boxes"] == 0


async def test_audit_is_newest_first_and_capped(store: Store) -> None:
    for i in range(5):
        await store.audit("kind", f"s{i}", "x" * 3000)
    rows = await store.recent_audit(limit=3)
    assert [r["subject"] for r in rows] == ["s4", "s3", "s2"]
    assert len(rows[0]["detail"]) == 2000


async def test_audit_filters(store: Store) -> None:
    await store.audit("box.exec", "bx_1", "true", actor="key:k1", spoke="a", result="exit 0")
    await store.audit("box.create", "bx_2", "img", actor="user:ann", spoke="b", result="ok")
    await store.audit("box_exec", "x", "an underscore is not a wildcard")
    await store.audit("token.created", "t", actor="user:ann")
    kinds = [r["kind"] for r in await store.recent_audit(kind="box.*")]
    assert kinds == ["box.create", "box.exec"]
    assert [r["subject"] for r in await store.recent_audit(spoke="a")] == ["bx_1"]
    assert [r["kind"] for r in await store.recent_audit(actor="user:ann")] == ["token.created", "box.create"]
    newest = await store.recent_audit(limit=2)
    assert [r["kind"] for r in await store.recent_audit(before=newest[-1]["id"])] == ["box.create", "box.exec"]
    assert (await store.recent_audit(kind="box.exec"))[0]["result"] == "exit 0"


async def test_job_output_is_read_by_cursor_within_max_chars(store: Store, clock: Clock) -> None:
    jobs = JobStore(store)
    await jobs.create("job_1", "key_1", "bx_1", ["make"])
    assert await jobs.append("job_1", [("stdout", "a" * 10), ("stderr", "b" * 10)], False) == 2
    assert await jobs.append("job_1", [("stdout", "c")] * 200, True) == 202  # more than a page
    assert await jobs.append("job_1", [("stdout", "d")], False) == 203
    assert len(await jobs.output("job_1", after=0, max_chars=10**6)) == 203
    assert [c["seq"] for c in await jobs.output("job_1", after=0, max_chars=15)] == [1]
    assert [c["seq"] for c in await jobs.output("job_1", after=1, max_chars=1)] == [2]  # progress
    assert [c["data"] for c in await jobs.output("job_1", after=200, max_chars=100)] == ["c", "c", "d"]
    row = await jobs.get("job_1", "key_1")
    assert row is not None
    assert (row["last_seq"], row["out_chars"], row["truncated"], row["created_at"]) == (203, 221, 1, 1000.0)
    assert await jobs.get("job_1", "key_2") is None  # scoped to the key that made it
    with pytest.raises(RemoteError) as err:
        await jobs.append("job_unknown", [("stdout", "x")], False)
    assert err.value.code is ErrorCode.NOT_FOUND


async def test_a_job_left_running_by_an_earlier_hub_reads_as_interrupted(store: Store, clock: Clock) -> None:
    runner = JobRunner(store, cast(BoxService, None), clock=clock, monotonic=lambda: 0.0)
    await runner.jobs.create("job_1", "key_1", "bx_1", ["sleep", "9"])
    await runner.jobs.append("job_1", [("stdout", "partial")], False)
    clock.t = 2000.0
    read = await runner.read("job_1", "key_1", cursor=0, max_chars=100, wait_s=5)
    assert (read["state"], read["stdout"], read["cursor"], read["done"]) == ("interrupted", "partial", 1, True)
    status = await runner.status("job_1", "key_1")
    assert (status["finished_at"], status["created_at"]) == (2000.0, 1000.0)
    with pytest.raises(RemoteError) as err:
        await runner.status("job_1", "key_2")
    assert err.value.code is ErrorCode.NOT_FOUND


async def test_touch_spokes_writes_a_batch(store: Store) -> None:
    for name in ("a", "b", "c"):
        await store.enroll_spoke(name, f"key-{name}", [], "1")
    await store.touch_spokes({"a": 5000.0, "c": 7000.0, "ghost": 1.0})
    seen = {row["name"]: row["last_seen"] for row in await store.list_spokes()}
    assert seen["a"] == 5000.0 and seen["c"] == 7000.0 and seen["b"] != 5000.0
    await store.touch_spokes({})  # nothing to write: no transaction
