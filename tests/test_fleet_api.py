"""The fleet views, the events timeline and the history on real processes: a real hub (TLS),
real spokes over wss, real Docker, the scripted LLM.

Spoke states through a clean stop (left) and a SIGKILL (lost), kept across a hub restart;
``/api/workers/active`` with a hung workstream and an MCP exec job; runs and live box stats;
the events SSE stream delivering a join live and resuming from Last-Event-ID; history points
with ``--history-interval 1s``; 404s and 400s.
"""

from __future__ import annotations

import asyncio
import json
import signal
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from client.errors import ApiError
from tests.cluster import Hub, Spoke, wait_until
from tests.llm_server import Hang
from tests.test_mcp import call, mcp_session
from tests.ws_helpers import ThreadedLLM, start_ws, wait_state, ws_row

IMAGE = "spokehub-sandbox:bookworm"


def state_of(hub: Hub, name: str) -> str | None:
    row = hub.spoke_row(name)
    return None if row is None else str(row["state"])


def get(hub: Hub, path: str) -> Any:
    return hub.client().request("GET", path)


def status_of(hub: Hub, path: str) -> int:
    with pytest.raises(ApiError) as err:
        get(hub, path)
    return int(err.value.status)


def events(hub: Hub) -> list[tuple[str, str]]:
    return [(e["kind"], e["subject"]) for e in get(hub, "/api/events?limit=1000")["events"]]


def test_spokes_leave_cleanly_or_are_lost_and_it_survives_a_restart(
        tmp_path: Path, hub: Hub, spokes: list[Spoke]) -> None:
    calm, killed = Spoke(tmp_path, hub, "calm"), Spoke(tmp_path, hub, "killed")
    spokes += [calm, killed]
    calm.join()
    killed.join()
    row = hub.spoke_row("calm")
    assert row is not None and row["state"] == "connected" and row["max_workstreams"] == 4
    assert row["latency"]["box.list"]["count"] >= 1  # the connect-time reconcile
    assert row["connected_at"] and row["silent_s"] is not None
    calm.stop()  # SIGTERM: the spoke says goodbye (close 1000)
    wait_until(lambda: state_of(hub, "calm") == "left", what="calm to be left")
    assert killed.proc is not None
    killed.proc.stop(signal.SIGKILL)  # no goodbye
    wait_until(lambda: state_of(hub, "killed") == "lost", what="killed to be lost")
    assert {("spoke.left", "calm"), ("spoke.lost", "killed")} <= set(events(hub))
    hub.stop()
    hub.start()
    states = {r["name"]: (r["state"], r["disconnect_reason"]) for r in get(hub, "/api/spokes")}
    assert states["calm"] == ("left", "spoke stopping") and states["killed"][0] == "lost"


def test_workers_runs_and_inspect(tmp_path: Path, model_hub: Hub, model_spoke: Spoke,
                                  llm: ThreadedLLM) -> None:
    hub = model_hub
    marker = llm.script("hang", [Hang("working")])
    ws_id = start_ws(hub, f"{marker} go", spoke=model_spoke.name)
    wait_state(hub, ws_id, "thinking")
    run_id = ws_row(hub, ws_id)["run_id"]
    assert run_id.startswith("run_")
    box = hub.client().request("POST", "/api/boxes", {"spoke": model_spoke.name, "image": IMAGE})

    async def start_job() -> str:
        async with mcp_session(hub) as s:
            return str((await call(s, "start_exec", box=box["id"], cmd="sleep 60"))["job"])

    job = asyncio.run(start_job())
    workers = wait_until(lambda: (w := get(hub, "/api/workers/active"))["count"] >= 2 and w,
                         what="two workers")
    by_id = {w["id"]: w for w in workers["workers"]}
    assert abs(workers["checked_at"] - time.time()) < 60
    work = by_id[ws_id]
    assert (work["kind"], work["run_id"], work["spoke"], work["state"]) == ("workstream", run_id, model_spoke.name, "thinking")
    assert work["box"].startswith("bx_") and work["started_at"] and work["last_heartbeat"]
    exe = by_id[job]
    assert (exe["kind"], exe["box"], exe["spoke"], exe["spoke_state"]) == ("job", box["id"], model_spoke.name, "connected")
    run = get(hub, f"/api/runs/{run_id}")
    assert (run["kind"], run["attempt"], run["state"], run["ws_id"]) == ("workstream", 1, "running", ws_id)
    assert get(hub, f"/api/runs/{job}")["state"] == "running"
    live = get(hub, f"/api/runs/{job}/inspect")
    assert live["alive"] is True and live["pids"] >= 2 and live["memory_bytes"] > 0
    assert get(hub, f"/api/runs/{run_id}/inspect")["alive"] is True

    async def cancel() -> None:
        async with mcp_session(hub) as s:
            await call(s, "cancel_job", job=job)

    asyncio.run(cancel())
    ended = get(hub, f"/api/runs/{job}")
    assert (ended["state"], ended["outcome"]) == ("ended", "cancelled")
    assert get(hub, f"/api/runs/{job}/inspect")["alive"] is False
    llm.release()
    wait_state(hub, ws_id, "idle")
    hub.client().request("POST", f"/api/ws/{ws_id}/close")
    closed = get(hub, f"/api/runs/{run_id}/inspect")
    assert closed["alive"] is False and "closed" in closed["reason"]
    assert get(hub, "/api/workers/active")["count"] == 0
    assert status_of(hub, "/api/runs/run_0000000000000000") == 404
    assert status_of(hub, "/api/runs/nothing/inspect") == 404


# ------------------------------------------------------------------------- events, SSE
async def _sse(hub: Hub, path: str, headers: dict[str, str], want: int,
               timeout: float = 60) -> list[dict[str, Any]]:
    """Read ``want`` events (with ids) from an SSE route of the real hub."""
    doc = json.loads((hub.dir / "admin.json").read_text())
    ctx = ssl.create_default_context(cafile=str(hub.dir / "tls.crt"))
    got: list[dict[str, Any]] = []
    auth = {"Authorization": f"Bearer {doc['api_key']}", **headers}
    async with aiohttp.ClientSession() as http, http.get(hub.url + path, headers=auth, ssl=ctx) as resp:
        assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/event-stream")
        event: dict[str, Any] = {}
        async with asyncio.timeout(timeout):
            async for raw in resp.content:
                line = raw.decode().rstrip("\n")
                if line.startswith("id: "):
                    event["id"] = int(line[4:])
                elif line.startswith("data: "):
                    event["data"] = json.loads(line[6:])
                elif line == "" and "id" in event:
                    got.append(event)
                    event = {}
                    if len(got) == want:
                        return got
    return got


def test_events_stream_delivers_a_join_live_and_resumes(tmp_path: Path, hub: Hub,
                                                        spokes: list[Spoke]) -> None:
    last = get(hub, "/api/events")["last"]
    late = Spoke(tmp_path, hub, "late")
    spokes.append(late)

    async def follow() -> list[dict[str, Any]]:
        reader = asyncio.create_task(_sse(hub, f"/api/events/stream?after={last}", {}, 3))
        await asyncio.sleep(0.5)  # the stream is open before the spoke joins
        await asyncio.to_thread(late.join)
        return await reader

    live = asyncio.run(follow())
    kinds = [(e["data"]["kind"], e["data"]["subject"]) for e in live]
    assert ("spoke.connected", "late") in kinds and ("token.created", "late") in kinds
    assert [e["id"] for e in live] == sorted(e["id"] for e in live) and live[0]["id"] > last
    again = asyncio.run(_sse(hub, "/api/events/stream?after=0", {"Last-Event-ID": str(live[0]["id"])}, 2))
    assert [e["id"] for e in again] == [live[1]["id"], live[2]["id"]]  # no repeat, no gap
    assert status_of(hub, "/api/events?after=-3") == 400
    assert status_of(hub, "/api/events?limit=100000") == 400


# ------------------------------------------------------------------------------ history
@pytest.fixture
def sampled_hub(tmp_path: Path, sandbox_image: str) -> Iterator[Hub]:
    h = Hub(tmp_path)
    h.extra = ["--history-interval", "1s", "--history-retention", "1h"]
    h.start()
    yield h
    h.stop()


def test_history_after_a_few_samples(sampled_hub: Hub, spokes: list[Spoke], tmp_path: Path) -> None:
    hub = sampled_hub
    spoke = Spoke(tmp_path, hub, "hist")
    spokes.append(spoke)
    spoke.join()

    def connected_seen() -> Any:
        doc = get(hub, "/api/history?range=1h&series=spokes.connected,boxes.live,latency.*")
        points = doc["series"]["spokes.connected"]
        return doc if points and points[-1][1] > 0 else None

    doc = wait_until(connected_seen, timeout=30, what="a sample with the spoke connected")
    assert (doc["range"], doc["step_s"]) == ("1h", 12) and doc["to"] - doc["from"] >= 3600
    assert any(name.startswith("latency.p95.") for name in doc["series"])
    assert "boxes.live" in doc["series"] and "workstreams.idle" not in doc["series"]
    everything = get(hub, "/api/history?range=7d")
    assert {"spokes.lost", "queue.depth", "tokens.input", "execs.running"} <= set(everything["series"])
    assert status_of(hub, "/api/history?range=5m") == 400
    bad = hub.cli("serve", "--data-dir", str(tmp_path / "other"), "--history-interval", "soon")
    assert bad.returncode == 2 and "--history-interval" in bad.stderr
