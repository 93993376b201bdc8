"""The fleet views, the events timeline and the history, in memory: a real registry, store and
workstream service against real spoke sessions over the in-memory pipe (tests/hub/memory_cluster.py),
injected clocks, and the routes served by aiohttp's test server (loopback, no TLS).

Spoke states (connected → stale → lost; left on a clean stop; what a hub restart leaves),
latency windows, runs across a resume, workers, the timeline by cursor and as SSE (framing,
Last-Event-ID, keepalive), a workstream's stream as SSE, the sampler and downsampling.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientResponse, web
from aiohttp.test_utils import TestClient, TestServer

from hub.events_api import EventsApi
from hub.fleet import Fleet
from hub.history import HistoryApi, HistorySampler
from hub.http_util import errors_middleware
from hub.latency import LatencyWindow, percentile
from hub.registry import Registry
from hub.workstreams.api import WorkstreamApi
from protocol.connection import Limits
from protocol.errors import ErrorCode, RemoteError
from tests.hub.memory_cluster import MemoryCluster
from tests.llm_server import Hang, LLMServer, Say
from tests.protocol.helpers import FakeClock


@pytest.fixture
async def llm() -> AsyncIterator[LLMServer]:
    server = await LLMServer().start()
    yield server
    await server.stop()


async def _spoke(hub: MemoryCluster, name: str) -> dict[str, Any]:
    return next(s for s in await hub.registry.spoke_summaries() if s["name"] == name)


async def _kinds(hub: MemoryCluster) -> list[tuple[str, str]]:
    return [(e["kind"], e["subject"]) for e in await hub.store.audit_after(0, 1000)]


async def _ws_state(hub: MemoryCluster, ws_id: str, *states: str) -> dict[str, Any]:
    for _ in range(2000):
        row = await hub.workstreams.get(ws_id)
        if row["state"] in states:
            return row
        await asyncio.sleep(0.005)
    raise AssertionError(f"{ws_id} never reached {states}")


# ------------------------------------------------------------------------- spoke states
async def test_spoke_goes_connected_stale_lost(tmp_path: Path) -> None:
    async with MemoryCluster(tmp_path) as hub:
        await hub.join("a")
        link = hub.registry.local("a")
        assert link is not None
        assert (await _spoke(hub, "a"))["state"] == "connected"
        hub.clock.advance(2 * Limits().heartbeat_s + 1)  # quiet for more than two heartbeats
        await link.tick()
        row = await _spoke(hub, "a")
        assert row["state"] == "stale" and row["connected"] and row["silent_s"] > 6
        hub.clock.advance(Limits().stale_after_s)  # past the link's own stale limit: closed
        await link.tick()
        await hub.until(lambda: hub.registry.live("a") is None, "the stale link to close")
        await hub.until(lambda: bool(hub.spokes["a"].task.done()), "the spoke session to end")
        await asyncio.sleep(0.05)
        row = await _spoke(hub, "a")
        assert (row["state"], row["disconnect_reason"]) == ("lost", "heartbeats missed")
        assert [k for k in await _kinds(hub) if k[0].startswith("spoke.")][-3:] == [
            ("spoke.connected", "a"), ("spoke.stale", "a"), ("spoke.lost", "a")]


async def test_a_clean_stop_is_left_and_states_survive_a_restart(tmp_path: Path) -> None:
    async with MemoryCluster(tmp_path) as hub:
        await hub.join("calm")
        await hub.join("crash")
        await hub.join("still")
        hub.spokes["calm"].stop.set()  # the spoke closes with 1000 "spoke stopping"
        await hub.spokes["calm"].stopped()
        await hub.drop("crash")  # gone without a goodbye
        await hub.until(lambda: hub.registry.live("calm") is None, "calm to go")
        await asyncio.sleep(0.05)
        calm, crash = await _spoke(hub, "calm"), await _spoke(hub, "crash")
        assert (calm["state"], calm["disconnect_reason"]) == ("left", "spoke stopping")
        assert crash["state"] == "lost"
        assert ("spoke.left", "calm") in await _kinds(hub)
        assert ("spoke.lost", "crash") in await _kinds(hub)
        # A hub killed with "still" connected: the next hub process starts with no links.
        await hub.store.mark_all_disconnected()
        fresh = Registry(hub.store, "pin", Limits(), "test", clock=hub.clock, wall_clock=hub.wall)
        states = {s["name"]: (s["state"], s["disconnect_reason"]) for s in await fresh.spoke_summaries()}
        assert states == {"calm": ("left", "spoke stopping"), "crash": ("lost", "spoke died"),
                          "still": ("lost", "hub restarted")}
        await hub.registry.revoke("crash")
        assert (await _spoke(hub, "crash"))["state"] == "revoked"


async def test_latency_window_is_bounded_and_recent(tmp_path: Path) -> None:
    clock = FakeClock(100.0)
    window = LatencyWindow(clock, max_samples=4, window_s=60)
    for ms in (1, 2, 3, 4, 100):
        window.observe("box.exec", "ok", ms / 1000)
    window.observe("box.stats", "timeout", 5.0)
    summary = window.summary()
    assert summary["box.exec"] == {"count": 4, "errors": 0, "p50_ms": 3.0, "p95_ms": 100.0}
    assert summary["box.stats"]["errors"] == 1
    clock.advance(61)
    assert window.summary() == {} and window.since(0) != {}
    assert percentile([], 0.5) == 0.0 and percentile([5.0], 0.99) == 5.0
    async with MemoryCluster(tmp_path) as hub:
        await hub.join("lat")  # the connect-time reconcile makes calls: they are measured
        latency = (await _spoke(hub, "lat"))["latency"]
        assert latency["box.list"]["count"] == 1 and latency["box.list"]["p95_ms"] >= 0


# --------------------------------------------------------------------------- runs, workers
async def test_a_resumed_workstream_has_two_runs(tmp_path: Path, llm: LLMServer) -> None:
    llm.add_script("twice", [Say("first"), Say("second")])
    async with MemoryCluster(tmp_path, llm_url=llm.openai_url) as hub:
        fleet = Fleet(hub.store, hub.registry, hub.boxes)
        await hub.join("s1")
        ws_id = (await hub.workstreams.start("[script:twice] hi", model="local"))["id"]
        first_id = (await _ws_state(hub, ws_id, "idle"))["run_id"]
        first = await fleet.run(first_id)
        assert (first["state"], first["attempt"], first["spoke"], first["ws_id"]) == ("running", 1, "s1", ws_id)
        live = await fleet.inspect(first_id)
        assert live["alive"] is True and live["pids"] >= 1 and live["box"] == first["box"]
        await hub.drop("s1")
        await hub.join("s1")  # back without the agent: the run is over, the work detached
        for _ in range(200):
            if (await fleet.run(first_id))["state"] == "ended":
                break
            await asyncio.sleep(0.01)
        ended = await fleet.run(first_id)
        assert (ended["state"], ended["outcome"]) == ("ended", "lost")
        assert (await fleet.inspect(first_id))["alive"] is False
        await hub.workstreams.send(ws_id, "again")
        for _ in range(400):
            row = await hub.workstreams.get(ws_id)
            if row["run_id"] != first_id and row["state"] == "idle":
                break
            await asyncio.sleep(0.01)
        second = await fleet.run(row["run_id"])
        assert (second["attempt"], second["state"]) == (2, "running")
        assert [r["attempt"] for r in await hub.store.runs_of(ws_id)] == [1, 2]
        await hub.workstreams.close(ws_id)
        closed = await fleet.inspect(row["run_id"])
        assert closed["alive"] is False and "closed" in closed["reason"]
        with pytest.raises(RemoteError) as missing:
            await fleet.run("run_0000000000000000")
        assert missing.value.code is ErrorCode.NOT_FOUND


async def test_workers_active_lists_busy_work(tmp_path: Path, llm: LLMServer) -> None:
    llm.add_script("busy", [Hang("working")])
    async with MemoryCluster(tmp_path, llm_url=llm.openai_url) as hub:
        fleet = Fleet(hub.store, hub.registry, hub.boxes)
        await hub.join("w")
        ws_id = (await hub.workstreams.start("[script:busy] go", model="local"))["id"]
        await _ws_state(hub, ws_id, "thinking")
        box = await hub.boxes.create("w", {"image": "sandbox:test"})

        async def consume() -> None:
            async for _item in hub.boxes.exec(hub.boxes.exec_params(box["id"], {"cmd": ["sleep", "30"]})):
                pass

        pending = asyncio.ensure_future(consume())
        await hub.until(lambda: bool(hub.boxes.execs), "the exec to start")
        answer = await fleet.active_workers()
        by_kind = {w["kind"]: w for w in answer["workers"]}
        assert answer["count"] == 2 and set(by_kind) == {"workstream", "exec"}
        work = by_kind["workstream"]
        assert (work["id"], work["spoke"], work["state"], work["spoke_state"]) == (ws_id, "w", "thinking", "connected")
        assert work["run_id"].startswith("run_") and work["box"].startswith("bx_") and work["started_at"]
        exe = by_kind["exec"]
        assert (exe["box"], exe["spoke"], exe["cmd"]) == (box["id"], "w", ["sleep", "30"])
        assert (await fleet.run(exe["id"]))["state"] == "running"
        pending.cancel()  # the caller goes: the exec is cancelled on the spoke
        with contextlib.suppress(asyncio.CancelledError):
            await pending
        assert (await fleet.run(exe["id"]))["outcome"] == "cancelled"
        assert (await fleet.inspect(exe["id"]))["alive"] is False
        llm.release()
        await _ws_state(hub, ws_id, "idle")
        assert (await fleet.active_workers())["count"] == 0


# ------------------------------------------------------------------------------ the timeline
def _app(*routes: list[web.RouteDef]) -> web.Application:
    app = web.Application(middlewares=[errors_middleware])
    for group in routes:
        app.router.add_routes(group)
    return app


async def _frame(resp: ClientResponse, timeout: float = 5.0) -> dict[str, Any]:
    """The next SSE block: ``{"id", "data", "comments", "retry"}``."""
    block: dict[str, Any] = {"id": None, "data": None, "comments": [], "retry": None}
    while True:
        line = (await asyncio.wait_for(resp.content.readline(), timeout)).decode()
        if line in ("\n", ""):
            if block["data"] is not None or block["comments"] or block["retry"]:
                return block
            continue
        field, _, value = line.rstrip("\n").partition(":")
        value = value[1:] if value.startswith(" ") else value
        if field == "":
            block["comments"].append(value)
        elif field == "data":
            block["data"] = json.loads(value)
        else:
            block[field] = value


async def test_events_are_read_by_cursor(tmp_path: Path) -> None:
    async with MemoryCluster(tmp_path) as hub, TestClient(TestServer(_app(EventsApi(hub.store).routes()))) as http:
        for n in range(5):
            await hub.store.audit("token.created", f"t{n}", f"tok_{n}")
        tail = await (await http.get("/api/events?limit=2")).json()
        assert [e["subject"] for e in tail["events"]] == ["t3", "t4"] and tail["last"] == 5
        assert set(tail["events"][0]) == {"id", "ts", "kind", "subject", "detail", "actor",
                                          "spoke", "result"}
        page = await (await http.get("/api/events?after=1&limit=3")).json()
        assert [e["id"] for e in page["events"]] == [2, 3, 4] and page["last"] == 4
        empty = await (await http.get("/api/events?after=5")).json()
        assert empty == {"events": [], "last": 5}
        for bad in ("after=-1", "after=x", "limit=0", "limit=1001"):
            resp = await http.get(f"/api/events?{bad}")
            assert resp.status == 400 and (await resp.json())["error"]["code"] == "invalid"


async def test_event_stream_sse(tmp_path: Path) -> None:
    async with MemoryCluster(tmp_path) as hub:
        api = EventsApi(hub.store, keepalive_s=0.2)
        async with TestClient(TestServer(_app(api.routes()))) as http:
            for n in range(3):
                await hub.store.audit("spoke.connected", f"s{n}")
            resp = await http.get("/api/events/stream?after=0", headers={"Last-Event-ID": "1"})
            assert resp.headers["Content-Type"].startswith("text/event-stream")
            opening = await _frame(resp)
            assert opening["retry"] == "3000"
            got = [await _frame(resp), await _frame(resp)]
            assert [(f["id"], f["data"]["subject"]) for f in got] == [("2", "s1"), ("3", "s2")]
            assert (await _frame(resp))["comments"] == ["keepalive"]
            await hub.store.audit("spoke.lost", "s0", "spoke died")  # woken by the append
            live = await _frame(resp)
            assert (live["id"], live["data"]["kind"]) == ("4", "spoke.lost")
            resp.close()
            from_now = await http.get("/api/events/stream")  # no cursor: only what comes next
            await _frame(from_now)
            await hub.store.audit("token.revoked", "t")
            assert (await _frame(from_now))["id"] == "5"
            bad = await http.get("/api/events/stream", headers={"Last-Event-ID": "nope"})
            assert bad.status == 400
            api.close()  # hub shutdown: the open stream ends
            rest = await asyncio.wait_for(from_now.content.read(), 5)
            assert b"data:" not in rest


async def test_ws_stream_as_sse(tmp_path: Path, llm: LLMServer) -> None:
    llm.add_script("hello", [Say("hello there")])
    async with MemoryCluster(tmp_path, llm_url=llm.openai_url) as hub:
        api = WorkstreamApi(hub.workstreams, lambda: None)
        async with TestClient(TestServer(_app(api.routes()))) as http:
            await hub.join("chat")
            ws_id = (await hub.workstreams.start("[script:hello] hi", model="local"))["id"]
            await _ws_state(hub, ws_id, "idle")
            resp = await http.get(f"/api/ws/{ws_id}/stream?format=sse", headers={"Last-Event-ID": "1"})
            await _frame(resp)  # retry + opening comment
            first = await _frame(resp)
            assert first["id"] == "2" and first["data"]["seq"] == 2  # resumed after seq 1
            resp.close()
            bad = await http.get(f"/api/ws/{ws_id}/stream?format=xml")
            assert bad.status == 400
            missing = await http.get("/api/ws/ws_0000000000000000/stream?format=sse")
            assert missing.status == 404


# ------------------------------------------------------------------------------- history
async def test_the_sampler_writes_and_prunes(tmp_path: Path) -> None:
    async with MemoryCluster(tmp_path) as hub:
        await hub.join("h1")
        sampler = HistorySampler(hub.store, hub.registry, hub.boxes, interval_s=10,
                                 retention_s=60, clock=hub.wall)
        first = await sampler.sample_once()
        assert first["spokes.connected"] == 1 and first["spokes.lost"] == 0
        assert first["latency.p95.box.list"] >= 0  # the connect-time calls
        for _ in range(9):
            hub.wall.advance(10)
            await sampler.sample_once()
        await hub.drop("h1")
        hub.wall.advance(10)
        last = await sampler.sample_once()
        assert (last["spokes.connected"], last["spokes.lost"]) == (0, 1)
        assert not any(k.startswith("latency.") for k in last)  # no calls since the last sample
        rows = await hub.store.history_range(0, int(hub.wall()) + 1, 1, ["spokes.connected"])
        assert len(rows["spokes.connected"]) == 7  # 60 s of retention at 10 s, both ends in
        ticks: list[float] = []

        async def sleep(seconds: float) -> None:
            ticks.append(seconds)
            if len(ticks) == 3:
                raise asyncio.CancelledError

        looped = HistorySampler(hub.store, hub.registry, hub.boxes, interval_s=5, clock=hub.wall,
                                sleep=sleep)
        with pytest.raises(asyncio.CancelledError):
            await looped.run()
        assert ticks == [5, 5, 5]


async def test_history_is_downsampled_per_bucket(tmp_path: Path) -> None:
    async with MemoryCluster(tmp_path) as hub:
        now = int(hub.wall())
        for i in range(360):  # one hour at 10 s
            ts = now - 3600 + i * 10
            await hub.store.history_add(ts, {"spokes.connected": i % 2, "latency.p95.box.exec": i,
                                             "tokens.input": 1})
        api = HistoryApi(hub.store, interval_s=10, clock=hub.wall)
        hour = await api.query("1h")
        assert hour["step_s"] == 12 and hour["to"] == now and hour["from"] % 12 == 0
        points = hour["series"]["spokes.connected"]
        assert len(points) <= 301 and all(0 <= v <= 1 for _t, v in points)
        assert all(b[0] - a[0] >= 12 for a, b in zip(points, points[1:], strict=False))
        latency = dict((t, v) for t, v in hour["series"]["latency.p95.box.exec"])
        tokens = hour["series"]["tokens.input"]
        assert max(latency.values()) == 359  # the maximum of a bucket, not its average
        assert sum(v for _t, v in tokens) == 360 and max(v for _t, v in tokens) == 2  # sums
        for i in range(1, 7):  # later samples: the kept complete buckets plus the new tail
            await hub.store.history_add(now + i * 10, {"spokes.connected": 1, "tokens.input": 5})
        hub.wall.advance(60)
        again = await api.query("1h")
        assert again == await HistoryApi(hub.store, interval_s=10, clock=hub.wall).query("1h")
        assert again["series"]["tokens.input"][-1][1] >= 5 and again["from"] >= hour["from"]
        picked = await api.query("24h", "latency.*,nothing.here")
        assert set(picked["series"]) == {"latency.p95.box.exec", "nothing.here"}
        assert picked["series"]["nothing.here"] == [] and picked["step_s"] == 288
        assert (await api.query("7d"))["step_s"] == 2016
        with pytest.raises(RemoteError) as bad:
            await api.query("2h")
        assert bad.value.code is ErrorCode.INVALID
