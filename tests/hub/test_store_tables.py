"""The rest of the table code on both engines (tests/hub/conftest.py: real SQLite, real
PostgreSQL), without processes: users and sessions (``user`` is a reserved word in PostgreSQL),
the metrics history (bucketed ranges, bounded prunes, the sampler's snapshot), the bounded
prunes of the janitor's retentions, runs and the worker view, idle boxes. The same assertions
on both: rows read back equal, of the same types. The janitor around these prunes is pinned
by tests/hub/test_janitor.py; the history API by tests/hub/test_fleet_memory.py.
"""

from __future__ import annotations

from hub.mcp.jobs import JobStore
from hub.store import Store
from hub.workstreams.store import BUSY_STATES, OPEN_STATES, WorkstreamStore
from tests.hub.conftest import Clock


async def test_users_and_sessions(store: Store, clock: Clock) -> None:
    assert await store.create_first_admin("h0") and not await store.create_first_admin("h1")
    assert await store.add_user("ann", "h", "operator") is not None
    assert await store.add_user("ann", "h", "viewer") is None  # taken
    await store.add_session("t1", "ann", "csrf1", 3600, "10.0.0.1")
    await store.add_session("t2", "ann", "csrf2", 3600, "10.0.0.1")
    session = await store.session_by_hash("t1")
    assert session == {"token_hash": "t1", "user": "ann", "csrf": "csrf1", "created_at": 1000.0,
                       "expires_at": 4600.0, "role": "operator"}
    assert await store.set_password("ann", "h2", keep_session="t2")
    assert await store.session_by_hash("t1") is None and await store.session_by_hash("t2")
    assert await store.end_session("t2") and not await store.end_session("t2")
    assert await store.remove_user("admin") == "last-admin"
    await store.add_session("t3", "ann", "c", 3600, "")
    assert await store.remove_user("ann") == "removed"
    assert await store.session_by_hash("t3") is None
    assert [u["name"] for u in await store.list_users()] == ["admin"]
    clock.t = 4601.0
    assert await store.session_by_hash("t1") is None


async def test_history_ranges_prunes_and_snapshot(store: Store, clock: Clock) -> None:
    for i in range(30):
        await store.history_add(1000 + i * 10, {"spokes": i % 2, "latency.p95": i, "tokens.in": 2})
    await store.history_add(1290, {"spokes": 5})  # the same second again: overwritten
    got = await store.history_range(1000, 1300, 60, prefixes=["latency."], names=["spokes"])
    assert got["latency.p95"] == [[1000, 5.0], [1060, 11.0], [1120, 17.0], [1180, 23.0],
                                  [1240, 29.0]]
    assert got["spokes"][0] == [1000, 0.5] and got["spokes"][-1] == [1240, 1.166667]
    tokens = await store.history_range(1000, 1300, 100, names=["tokens.in"])
    assert tokens == {"tokens.in": [[1000, 20.0], [1100, 20.0], [1200, 20.0]]}
    assert await store.history_prune(1100, batch=7) >= 7
    left = await store.history_prune(1100, batch=1000)
    remaining = await store.history_range(0, 2000, 1, names=["tokens.in"])
    assert left > 0 and remaining["tokens.in"][0][0] == 1100

    ws = WorkstreamStore(store)
    await ws.create({"id": "ws_1", "spoke": "a", "state": "thinking"})
    await ws.create({"id": "ws_2", "spoke": "a", "state": "idle"})
    await store.add_box("bx_1", "a", "img", {})
    clock.t = 1500.0
    await ws.usage_add("ws_1", "a", "m", 7, 3)
    await ws.usage_add("ws_1", "a", "m", 1, 1)
    snap = await store.history_snapshot(1000.0, 1500.0, OPEN_STATES)
    assert snap == {"workstreams": {"thinking": 1, "idle": 1}, "boxes": 1,
                    "input_tokens": 8, "output_tokens": 4}
    assert await ws.busy_counts() == {"a": 1}
    assert await store.history_snapshot(1500.0, 1600.0, OPEN_STATES) == {
        "workstreams": {"thinking": 1, "idle": 1}, "boxes": 1, "input_tokens": 0, "output_tokens": 0}


async def test_retention_prunes(store: Store, clock: Clock) -> None:
    for i in range(5):
        await store.audit("old", f"o{i}")
    clock.t = 5000.0
    await store.audit("new", "n")
    assert await store.prune_audit(2000.0, batch=3) == 3
    assert await store.prune_audit(2000.0, batch=3) == 2
    assert await store.prune_audit(2000.0, batch=3) == 0
    assert [r["subject"] for r in await store.recent_audit()] == ["n"]

    jobs = JobStore(store)
    await jobs.create("job_1", "k", "bx", ["echo"])
    await jobs.append("job_1", [("stdout", str(i)) for i in range(5)], False)
    await jobs.finish("job_1", "exited", 0, "")
    clock.t = 6000.0
    assert await store.ended_jobs(5500.0) == ["job_1"] and await store.abandoned_jobs(5500.0) == []
    assert await store.prune_job("job_1", batch=3) == (3, False)
    assert await store.prune_job("job_1", batch=3) == (2, False)
    assert await store.prune_job("job_1", batch=3) == (1, True)

    ws = WorkstreamStore(store)
    await ws.create({"id": "ws_c", "state": "idle"})
    for i in range(4):
        await ws.append("ws_c", "text", {"i": i})
    await ws.inbox_add("ws_c", "m")
    await ws.update("ws_c", state="closed")
    clock.t = 9000.0
    assert await store.closed_workstreams(8000.0) == ["ws_c"]
    assert await store.prune_workstream_events("ws_c", 8000.0, batch=3) == (3, False)
    assert await store.prune_workstream_events("ws_c", 8000.0, batch=3) == (1, False)
    assert await store.prune_workstream_events("ws_c", 8000.0, batch=3) == (1, True)
    assert await store.closed_workstreams(8000.0) == []
    row = await ws.get("ws_c")
    assert row is not None and row["events_pruned_at"] == 9000.0


async def test_runs_workers_and_idle_boxes(store: Store, clock: Clock) -> None:
    ws = WorkstreamStore(store)
    await store.enroll_spoke("a", "k", [], "1")
    await ws.create({"id": "ws_1", "spoke": "a", "state": "running", "box_id": "bx_1"})
    first = await store.run_started("ws_1", "a", "bx_1")
    second = await store.run_started("ws_1", "a", "bx_1")
    assert [(r["attempt"], r["outcome"]) for r in await store.runs_of("ws_1")] == [
        (1, "superseded"), (2, "")]
    got = await store.get_run(second["id"])
    assert got is not None and (got["ws_state"], got["attempt"]) == ("running", 2)
    assert first["id"] != second["id"]
    workers = await store.active_workers(BUSY_STATES)
    assert [w["id"] for w in workers["workstreams"]] == ["ws_1"] and "a" in workers["spokes"]
    assert await store.run_ended("ws_1", "closed") == 1
    assert await store.runs_ended_on_spoke("a", "revoked") == 0

    for box in ("bx_1", "bx_2"):
        await store.add_box(box, "a", "img", {})
        await store.set_box_state(box, "running")
    clock.t = 2000.0
    await store.touch_boxes({"bx_2": 1500.0, "bx_1": 900.0})  # never backwards
    assert [b["id"] for b in await store.idle_boxes(1800.0)] == ["bx_2"]  # bx_1: ws_1 is open
    await ws.update("ws_1", state="closed")
    assert [b["id"] for b in await store.idle_boxes(1800.0)] == ["bx_1", "bx_2"]
    await store.mark_all_disconnected()
    assert (await store.list_spokes())[0]["state"] == "lost"
