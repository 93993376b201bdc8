"""The janitor in memory: the real registry, box service and store against real spoke sessions
over the in-memory pipe (tests/hub/memory_cluster.py), with the hub's wall clock injected, so
"idle for twelve hours" takes no time. Idle boxes reaped through the destroy path (the spoke
removes the box, the row says destroyed, the audit log says why), busy, offline and workstream
boxes kept; retention of the audit log, the metrics history, MCP jobs and closed workstreams'
event logs, in bounded batches; the loop. tests/test_janitor_e2e.py does it with Docker.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from cli.hub_commands import _duration_or_off
from hub import janitor as janitor_module
from hub.janitor import Janitor, JanitorConfig, human
from hub.mcp.jobs import JobStore
from hub.workstreams.store import WorkstreamStore
from protocol.tokens import new_id
from tests.hub.memory_cluster import IMAGE, MemoryCluster
from tests.llm_server import LLMServer, Say

TTL = 600.0
OFF = JanitorConfig(audit_retention_s=None, history_retention_s=None, job_retention_s=None,
                    closed_ws_retention_s=None)


def reaper(hub: MemoryCluster) -> Janitor:
    return Janitor(hub.store, hub.registry, hub.boxes, replace(OFF, box_idle_ttl_s=TTL))


def pruner(hub: MemoryCluster, job_running: Callable[[str], bool] = lambda _job_id: False,
           **config: Any) -> Janitor:
    return Janitor(hub.store, hub.registry, hub.boxes, replace(OFF, **config),
                   job_running=job_running)


async def run_exec(hub: MemoryCluster, box_id: str, *cmd: str) -> list[tuple[str, Any]]:
    return [item async for item in hub.boxes.exec(hub.boxes.exec_params(box_id, {"cmd": list(cmd)}))]


async def state(hub: MemoryCluster, box_id: str) -> str:
    row = await hub.store.get_box(box_id)
    assert row is not None
    return str(row["state"])


# ------------------------------------------------------------------------------ idle boxes
async def test_activity_keeps_a_box_and_idleness_reaps_it(tmp_path: Path) -> None:
    async with MemoryCluster(tmp_path) as hub:
        spoke = await hub.join("a")
        janitor = reaper(hub)
        idle = (await hub.boxes.create("a", {"image": IMAGE}))["id"]
        used = (await hub.boxes.create("a", {"image": IMAGE}))["id"]
        hub.wall.advance(400)
        assert (await run_exec(hub, used, "true"))[-1][1]["exit_code"] == 0
        hub.wall.advance(300)  # idle: 700 s without use; used: 300 s since its exec
        sweep = await janitor.sweep_once()
        assert sweep.reaped == [idle]
        assert (await state(hub, idle), await state(hub, used)) == ("destroyed", "running")
        assert [b.id for b in await spoke.boxes.list()] == [used]  # removed on the spoke
        (row,) = await hub.store.recent_audit(kind="box.destroy")
        assert (row["subject"], row["actor"], row["spoke"], row["result"]) == (idle, "", "a", "ok")
        assert row["detail"] == "idle for 11m40s (janitor: --box-idle-ttl 10m)"
        stored = await hub.store.get_box(used)
        assert stored is not None and stored["last_active_at"] == hub.wall() - 300  # flushed
        assert (await janitor.sweep_once()).reaped == []
        hub.wall.advance(301)
        assert (await janitor.sweep_once()).reaped == [used]
        assert await spoke.boxes.list() == []


async def test_a_box_busy_past_the_ttl_is_kept(tmp_path: Path) -> None:
    async with MemoryCluster(tmp_path) as hub:
        await hub.join("a")
        janitor = reaper(hub)
        box = (await hub.boxes.create("a", {"image": IMAGE}))["id"]
        running = asyncio.ensure_future(run_exec(hub, box, "sleep", "60"))
        await hub.until(lambda: hub.boxes.activity.busy(box), "the exec to start")
        hub.wall.advance(10 * TTL)  # the exec runs for ten TTLs
        assert (await janitor.sweep_once()).reaped == []
        running.cancel()  # its caller goes: the exec ends, which is activity too
        with contextlib.suppress(asyncio.CancelledError):
            await running
        assert not hub.boxes.activity.busy(box)
        hub.wall.advance(TTL - 1)
        assert (await janitor.sweep_once()).reaped == []
        hub.wall.advance(2)
        assert (await janitor.sweep_once()).reaped == [box]


async def test_file_transfers_are_activity_and_logs_are_not(tmp_path: Path) -> None:
    async with MemoryCluster(tmp_path) as hub:
        await hub.join("a")
        janitor = reaper(hub)
        box = (await hub.boxes.create("a", {"image": IMAGE}))["id"]

        async def source() -> AsyncIterator[bytes]:
            yield b"hello"

        hub.wall.advance(TTL - 10)
        await hub.boxes.put_file(box, "/workspace/f", 5, 0o644, source())
        hub.wall.advance(TTL - 10)
        assert b"".join([c async for c in hub.boxes.get_file(box, "/workspace/f", 100)]) == b"hello"
        hub.wall.advance(TTL - 10)
        await hub.boxes.logs(box, 10)  # reading logs or stats keeps nothing alive
        await hub.boxes.stats(box)
        assert (await janitor.sweep_once()).reaped == []
        hub.wall.advance(11)
        assert (await janitor.sweep_once()).reaped == [box]


async def test_after_a_start_a_box_must_idle_the_ttl_while_the_hub_runs(tmp_path: Path) -> None:
    async with MemoryCluster(tmp_path) as hub:
        await hub.join("a")
        box = (await hub.boxes.create("a", {"image": IMAGE}))["id"]
        hub.wall.advance(5 * TTL)  # idle for five TTLs, but the hub was "down" for them
        janitor = reaper(hub)  # a hub starting now
        assert (await janitor.sweep_once()).reaped == []
        hub.wall.advance(TTL)
        assert (await janitor.sweep_once()).reaped == [box]


async def test_a_box_on_an_offline_spoke_waits_for_it(tmp_path: Path) -> None:
    async with MemoryCluster(tmp_path) as hub:
        await hub.join("a")
        janitor = reaper(hub)
        box = (await hub.boxes.create("a", {"image": IMAGE}))["id"]
        await hub.drop("a")
        hub.wall.advance(2 * TTL)
        for _ in range(3):  # no destroy is tried: no failed rows flood the audit log
            assert (await janitor.sweep_once()).reaped == []
        assert await hub.store.recent_audit(kind="box.destroy") == []
        assert await state(hub, box) == "running"
        spoke = await hub.join("a")  # back: the reconcile keeps the box the hub records running
        assert [b.id for b in await spoke.boxes.list()] == [box]
        assert (await janitor.sweep_once()).reaped == [box]
        assert await spoke.boxes.list() == []


@pytest.fixture
async def llm() -> AsyncIterator[LLMServer]:
    server = await LLMServer().start()
    yield server
    await server.stop()


async def test_an_open_workstreams_box_is_never_reaped(tmp_path: Path, llm: LLMServer) -> None:
    llm.add_script("hi", [Say("hello")])
    async with MemoryCluster(tmp_path, llm_url=llm.openai_url) as hub:
        await hub.join("a")
        janitor = reaper(hub)
        ws_id = (await hub.workstreams.start("[script:hi] hi", model="local"))["id"]
        for _ in range(2000):
            ws = await hub.workstreams.get(ws_id)
            if ws["state"] == "idle":
                break
            await asyncio.sleep(0.005)
        ws_box = ws["box_id"]
        assert ws["state"] == "idle" and await state(hub, ws_box) == "running"
        other = (await hub.boxes.create("a", {"image": IMAGE}))["id"]
        hub.wall.advance(100 * TTL)  # nobody talks to the workstream for 100 TTLs: still open
        assert (await janitor.sweep_once()).reaped == [other]
        assert await state(hub, ws_box) == "running"
        await hub.workstreams.close(ws_id)  # closing removes its box, as always
        assert await state(hub, ws_box) == "destroyed"


# ------------------------------------------------------------------------------- retention
def counting(target: Any, name: str) -> list[Any]:
    """Record the results of ``target.name`` calls (one bounded batch each)."""
    calls: list[Any] = []
    inner: Callable[..., Awaitable[Any]] = getattr(target, name)

    async def wrapped(*args: Any, **kwargs: Any) -> Any:
        calls.append(await inner(*args, **kwargs))
        return calls[-1]

    setattr(target, name, wrapped)
    return calls


async def test_the_audit_log_is_pruned_in_batches(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    async with MemoryCluster(tmp_path) as hub:
        for i in range(25):
            await hub.store.audit("test.old", f"old-{i}")
        hub.wall.advance(91 * 86400)
        for i in range(5):
            await hub.store.audit("test.new", f"new-{i}")
        janitor = pruner(hub, audit_retention_s=90 * 86400.0, batch=10)
        batches = counting(hub.store, "prune_audit")
        monkeypatch.setattr(janitor_module, "MAX_BATCHES_PER_SWEEP", 2)
        assert (await janitor.sweep_once()).pruned == {"audit rows": 20}  # two batches a sweep
        assert (await janitor.sweep_once()).pruned == {"audit rows": 5}  # the rest next time
        assert batches == [10, 10, 5]
        assert [r["subject"] for r in await hub.store.recent_audit()] == [
            f"new-{i}" for i in reversed(range(5))]
        assert (await janitor.sweep_once()).pruned == {"audit rows": 0}


async def test_the_metrics_history_is_pruned_in_batches(tmp_path: Path) -> None:
    async with MemoryCluster(tmp_path) as hub:
        now = int(hub.wall())
        for i in range(30):  # three series, one sample every 10 s for the last 300 s
            await hub.store.history_add(now - 300 + i * 10, {"a": 1.0, "b": 2.0, "c": 3.0})
        janitor = pruner(hub, history_retention_s=100.0, batch=7)
        batches = counting(hub.store, "history_prune")
        assert (await janitor.sweep_once()).pruned == {"history samples": 60}  # 20 old stamps x 3
        assert all(n <= 7 + 2 for n in batches) and len(batches) > 5  # rows of a stamp go together
        left = await hub.store.history_range(0, now + 1, 1, ["a"])
        assert [ts for ts, _ in left["a"]] == [now - 100 + i * 10 for i in range(10)]


async def test_output_of_ended_jobs_is_pruned_running_ones_kept(tmp_path: Path) -> None:
    async with MemoryCluster(tmp_path) as hub:
        jobs = JobStore(hub.store)
        ids = {name: new_id("job") for name in ("ended", "running", "abandoned", "recent")}
        for name in ("ended", "running", "abandoned"):
            await jobs.create(ids[name], "key:k", "bx_0123456789abcdef", ["echo"])
            await jobs.append(ids[name], [("stdout", f"line {i}\n") for i in range(25)], False)
        await jobs.finish(ids["ended"], "exited", 0, "")
        hub.wall.advance(8 * 86400)
        await jobs.create(ids["recent"], "key:k", "bx_0123456789abcdef", ["echo"])
        await jobs.append(ids["recent"], [("stdout", "x")], False)
        await jobs.finish(ids["recent"], "exited", 0, "")
        janitor = pruner(hub, job_retention_s=7 * 86400.0, batch=10,
                         job_running=lambda job_id: job_id == ids["running"])
        assert (await janitor.sweep_once()).pruned == {"job rows": 2 * 25 + 2}
        assert await jobs.get(ids["ended"], "key:k") is None
        assert await jobs.get(ids["abandoned"], "key:k") is None  # no task ran it: left by a stop
        assert len(await jobs.output(ids["running"], 0, 10_000)) == 25  # runs in this process
        assert len(await jobs.output(ids["recent"], 0, 10_000)) == 1


async def test_closed_workstreams_lose_their_event_logs_open_ones_never(tmp_path: Path) -> None:
    async with MemoryCluster(tmp_path) as hub:
        db = WorkstreamStore(hub.store)
        ids = {name: f"ws_{i:016x}" for i, name in enumerate(("closed", "open", "recent"))}
        for name, ws_id in ids.items():
            if name == "recent":
                hub.wall.advance(31 * 86400)
            await db.create({"id": ws_id, "state": "idle", "model": "m", "title": name})
            for i in range(12):
                await db.append(ws_id, "text", {"t": f"{name} {i}"})
            await db.inbox_add(ws_id, "queued message")
            await db.approval_add(ws_id, "call-1", "shell", {"cmd": "ls"})
            if name != "open":
                await db.update(ws_id, state="closed")
        janitor = pruner(hub, closed_ws_retention_s=30 * 86400.0, batch=5)
        assert (await janitor.sweep_once()).pruned == {"workstream event rows": 12 + 2}
        assert await db.events(ids["closed"]) == []
        assert await db.approvals(ids["closed"]) == [] and await db.inbox_pending(ids["closed"]) == []
        closed = await db.get(ids["closed"])
        assert closed is not None and closed["title"] == "closed" and closed["last_seq"] == 12
        assert closed["events_pruned_at"] == hub.wall()
        for name in ("open", "recent"):  # open for 31 days, or closed too recently: untouched
            assert len(await db.events(ids[name])) == 12 and len(await db.approvals(ids[name])) == 1
        assert (await janitor.sweep_once()).pruned == {"workstream event rows": 0}


# ------------------------------------------------------------------------------- the loop
async def test_the_loop_sweeps_every_tick_and_survives_errors(tmp_path: Path) -> None:
    assert JanitorConfig().tick_s() == 60 and JanitorConfig(box_idle_ttl_s=3600).tick_s() == 60
    assert JanitorConfig(box_idle_ttl_s=8).tick_s() == 2 and JanitorConfig(box_idle_ttl_s=2).tick_s() == 1
    assert (human(90), human(90_000), human(0), human(3725)) == ("1m30s", "1d1h", "0s", "1h2m")
    assert (_duration_or_off("--x", "off"), _duration_or_off("--x", "12h")) == (None, 43200.0)
    async with MemoryCluster(tmp_path) as hub:
        ticks: list[float] = []

        async def sleep(seconds: float) -> None:
            ticks.append(seconds)
            if len(ticks) == 3:
                raise asyncio.CancelledError

        janitor = Janitor(hub.store, hub.registry, hub.boxes, JanitorConfig(box_idle_ttl_s=8),
                          sleep=sleep)
        failures = iter([RuntimeError("disk on fire")])
        inner = hub.store.prune_audit

        async def flaky(before: float, batch: int = 1000) -> int:
            for err in failures:
                raise err
            return await inner(before, batch)

        hub.store.prune_audit = flaky  # type: ignore[method-assign]
        with pytest.raises(asyncio.CancelledError):
            await janitor.run()
        assert ticks == [2, 2, 2]  # the failed sweep was logged; the loop went on
        await hub.store.close()
        await janitor.run()  # a closed store (the hub stopping) ends the loop quietly
