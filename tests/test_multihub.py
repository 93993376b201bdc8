"""Three real hubs on one real PostgreSQL behind a TCP load balancer (issue 11), with real
spokes and Docker boxes: spokes spread over the hubs; exec, copy and workstreams work through a
hub that does not hold the spoke, streamed; a hub killed with SIGKILL loses neither its spokes
(they reconnect through the balancer) nor a row of the database; the leader lease moves on.

One rig for the module (tests/multihub.py), started once; the tests run in file order and only
the last two disturb it (each kills a hub, and the first restarts the hub it killed).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.cluster import HUB, wait_until
from tests.llm_server import Call, Echo
from tests.multihub import ClusterHub, MultiHub
from tests.pg import PgServer
from tests.ws_helpers import ThreadedLLM, start_ws, ws_events, ws_row

IMAGE = "spokehub-sandbox:bookworm"
SPOKES = 4
GATE = "echo first; while [ ! -e /workspace/go ]; do sleep 0.05; done; echo second"


@pytest.fixture(scope="module")
def llm() -> Iterator[ThreadedLLM]:
    server = ThreadedLLM().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory, pg_server: PgServer, sandbox_image: str,
        llm: ThreadedLLM) -> Iterator[MultiHub]:
    url = pg_server.new_database()
    cluster = MultiHub(tmp_path_factory.mktemp("multihub"), url, 3, llm=llm)
    try:
        cluster.start()
        for _ in range(SPOKES):
            cluster.join()
        yield cluster
    finally:
        cluster.stop()
        pg_server.drop_database(url)


def _split(rig: MultiHub) -> tuple[str, ClusterHub, ClusterHub, ClusterHub]:
    """A spoke, the hub C holding it, a hub A that does not, and the third hub B."""
    for spoke in rig.spokes:
        holder = rig.holder_of(spoke.name)
        others = rig.others(holder)
        if holder is not None and len(others) >= 2:
            return spoke.name, holder, others[0], others[1]
    raise AssertionError(f"no spoke with two other live hubs: {rig.spread()}")


def _box(hub: ClusterHub, spoke: str) -> str:
    created = hub.cli_json("box", "create", "--spoke", spoke, "--image", IMAGE)
    assert created["spoke"] == spoke
    return str(created["id"])


def _readline(proc: subprocess.Popen[bytes]) -> bytes:
    assert proc.stdout is not None
    return proc.stdout.readline()


def _db_rows(hub: ClusterHub) -> dict[str, Any]:
    """What the cluster's database holds that a hub's death must not lose: the boxes, the
    audit log, and every workstream's events (read through ``hub``'s API)."""
    api = hub.client()
    audit = api.request("GET", "/api/audit?limit=1000")["audit"]
    events = {ws["id"]: ws_events(hub, ws["id"]) for ws in api.request("GET", "/api/ws")}
    return {"boxes": {b["id"] for b in api.request("GET", "/api/boxes")},
            "audit": {r["id"]: r for r in audit},
            "events": {ws_id: [(e["seq"], e["kind"]) for e in evs] for ws_id, evs in events.items()}}


# ---------------------------------------------------------------- a healthy cluster
def test_spokes_spread_over_the_hubs_and_every_hub_agrees(rig: MultiHub) -> None:
    views = [h.cluster() for h in rig.hubs]
    ids = {h.hub_id for h in rig.hubs}
    for hub, view in zip(rig.hubs, views, strict=True):
        assert view["hub"] == hub.hub_id
        assert {m["id"] for m in view["hubs"]} >= ids
        assert {m["url"] for m in view["hubs"] if m["id"] in ids} == {h.url for h in rig.hubs}
    leaders = {v["leader"] for v in views}
    assert len(leaders) == 1 and leaders <= ids, f"one leader, seen alike by all: {views}"
    assert sum(m["leader"] for m in views[0]["hubs"]) == 1
    # Every spoke is held by one hub, every hub tells the same, the counts add up.
    holders = views[0]["holders"]
    assert set(holders) >= {s.name for s in rig.spokes}
    assert all(v["holders"] == holders for v in views)
    counts = {m["id"]: m["spokes"] for m in views[0]["hubs"] if m["id"] in ids}
    assert sum(counts.values()) == len(rig.spokes)
    # The balancer deals connections round robin: the spokes are spread, not all on one hub.
    spread = rig.spread()
    assert sum(1 for names in spread.values() if names) >= 2, spread
    assert sum(1 for n in rig.lb.counts().values() if n) >= 2
    # Every hub lists every spoke as connected, whoever holds it.
    for hub in rig.hubs:
        rows = {r["name"]: r for r in hub.client().request("GET", "/api/spokes")}
        assert all(rows[s.name]["connected"] for s in rig.spokes), (hub, rows)


def test_exec_through_a_hub_that_does_not_hold_the_spoke_streams(rig: MultiHub) -> None:
    spoke, c, a, b = _split(rig)
    box = _box(a, spoke)  # created through A, on C's spoke
    assert a.cli("box", "exec", box, "--", "true").returncode == 0
    res = a.cli("box", "exec", box, "--", "sh", "-c", "echo out; echo err >&2; exit 3")
    assert (res.returncode, res.stdout, res.stderr) == (3, "out\n", "err\n")
    # The command waits for a file only the test makes after it has read the first line: the
    # line can only have come while the command ran, i.e. streamed through A.
    proc = a.popen_cli("box", "exec", box, "--", "sh", "-c", GATE + "; exit 7")
    try:
        assert _readline(proc) == b"first\n"
        assert proc.poll() is None
        assert b.cli("box", "exec", box, "--", "touch", "/workspace/go").returncode == 0
        assert _readline(proc) == b"second\n"
        assert proc.wait(60) == 7
    finally:
        if proc.poll() is None:
            proc.kill()
    # The holder and the third hub see the same box.
    for hub in (b, c):
        assert box in {x["id"] for x in hub.cli_json("box", "ls", "--spoke", spoke)}
        assert hub.cli("box", "exec", box, "--", "test", "-e", "/workspace/go").returncode == 0


def test_box_cp_both_ways_through_hubs_that_do_not_hold_the_spoke(rig: MultiHub, tmp_path: Path) -> None:
    spoke, _c, a, b = _split(rig)
    box = _box(a, spoke)
    src = tmp_path / "blob.bin"
    src.write_bytes(os.urandom(3 * 1024 * 1024 + 17))
    assert a.cli("box", "cp", str(src), f"{box}:/workspace/blob.bin").returncode == 0
    digest = b.cli("box", "exec", box, "--", "sh", "-c", "sha256sum /workspace/blob.bin").stdout.split()[0]
    assert digest == hashlib.sha256(src.read_bytes()).hexdigest()
    back = tmp_path / "back.bin"
    res = b.cli("box", "cp", f"{box}:/workspace/blob.bin", str(back))
    assert res.returncode == 0, res.stderr
    assert back.read_bytes() == src.read_bytes()
    missing = a.cli("box", "cp", f"{box}:/workspace/nope", str(tmp_path / "x"))
    assert missing.returncode != 0 and "nope" in missing.stderr


def test_exec_i_pipes_stdin_through_a_hub_that_does_not_hold_the_spoke(rig: MultiHub) -> None:
    spoke, _c, a, _b = _split(rig)
    box = _box(a, spoke)
    argv = [HUB, "box", "exec", "-i", box, "--", "sh", "-c", "read a; read b; echo got-$a-$b; exit 4"]
    res = subprocess.run(argv, input=b"one\ntwo\n", capture_output=True, env=a.cli_env(), timeout=60)
    assert res.returncode == 4 and b"got-one-two" in res.stdout, res.stderr


def test_a_workstream_started_through_one_hub_is_watched_live_through_another(
        rig: MultiHub, llm: ThreadedLLM) -> None:
    a, b = rig.hubs[0], rig.hubs[1]
    marker = llm.script("multihub-live", [Call("bash", {"command": GATE}),
                                          Echo("the tool said: {last_tool_result}")])
    ws_id = start_ws(a, f"{marker} wait for go", auto_approve=True)
    seen: list[dict[str, Any]] = []
    result: dict[str, Any] = {}

    def watch() -> None:  # through B, from the start, as `hub ws wait` and the SDK do
        result.update(b.client().wait_reply(ws_id, after=0, on_event=seen.append))

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    # The tool call is seen through B while the tool still runs (it waits for the test).
    wait_until(lambda: any(e["kind"] == "tool_call" for e in seen), timeout=120,
               what="the tool call, watched through the other hub")
    assert ws_row(a, ws_id)["state"] == "running"
    assert not result
    box = ws_row(b, ws_id)["box_id"]
    third = rig.hubs[2]
    assert third.cli("box", "exec", box, "--", "touch", "/workspace/go").returncode == 0
    wait_until(lambda: not watcher.is_alive(), timeout=120, what="the turn to end, watched through B")
    assert result["state"] == "idle", result
    assert "second" in result["answer"] and "first" in result["answer"]
    # What B streamed is what A stores: the same events, in order.
    through_a = [(e["seq"], e["kind"]) for e in ws_events(a, ws_id)]
    assert [(e["seq"], e["kind"]) for e in seen] == through_a[:len(seen)]
    assert ("tool_result" in {k for _, k in through_a}) and ("assistant_message" in {k for _, k in through_a})


def test_an_mcp_session_works_through_every_hub(rig: MultiHub) -> None:
    """The real MCP client through the balancer, one TCP connection per request (no
    keep-alive), so its requests land on different hubs: the session opened on one hub
    answers through all of them (hub/mcp/sessions.py), and every hub knows who holds it."""
    import asyncio
    import json

    import httpx2
    from mcp import ClientSession
    from mcp.client.streamable_http import streamable_http_client

    from cli.mcp_command import pinned_context

    doc = json.loads((rig.hubs[0].dir / "admin.json").read_text())
    lb_port = rig.lb.port
    before = dict(rig.lb.counts())

    async def run() -> list[str]:
        ctx = await pinned_context("127.0.0.1", lb_port, doc["pin"])
        limits = httpx2.Limits(max_keepalive_connections=0)
        names: list[str] = []
        async with httpx2.AsyncClient(verify=ctx, limits=limits, timeout=httpx2.Timeout(30, read=120),
                                      headers={"Authorization": f"Bearer {doc['api_key']}"}) as http:
            transport = streamable_http_client(f"{rig.lb.url}/mcp", http_client=http)
            async with transport as (read, write), ClientSession(read, write) as session:
                await session.initialize()
                for _ in range(6):
                    result = await session.call_tool("list_spokes", {})
                    assert not result.is_error, result.content
                    names = sorted(s["name"] for s in (result.structured_content or {})["spokes"])
        return names

    names = asyncio.run(run())
    assert names == sorted(s.name for s in rig.spokes)
    after = rig.lb.counts()
    assert sum(1 for port, n in after.items() if n > before.get(port, 0)) >= 2  # several hubs served it


# ------------------------------------------------------------------------- faults
def test_kill9_the_hub_holding_a_spoke_loses_neither_the_spoke_nor_a_row(rig: MultiHub) -> None:
    leader = rig.leader()
    # Kill a hub that holds spokes but not the lease (the next test kills the leader).
    victim = next((h for h in rig.live() if h is not leader and rig.spread()[h.name]), None)
    assert victim is not None, f"no non-leader hub holds a spoke: {rig.spread()}, leader {leader}"
    held = rig.spread()[victim.name]
    survivor = rig.others(victim)[0]
    box = _box(survivor, held[0])
    assert survivor.cli("box", "exec", box, "--", "sh", "-c", "echo kept > /workspace/kept").returncode == 0
    # An exec through the survivor, forwarded to the victim, in flight when the victim dies.
    in_flight = survivor.popen_cli("box", "exec", box, "--", "sh", "-c", GATE + "; exit 7")
    try:
        assert _readline(in_flight) == b"first\n"
        before = _db_rows(survivor)
        assert box in before["boxes"] and before["audit"]

        rig.kill9(victim)
        # Every spoke it held reconnects, through the balancer, to a live hub.
        for name in held:
            _wait_held_by_a_live_hub(rig, name, survivor, victim)
        # The forwarded exec was not lost with the hub in the middle: the survivor re-attaches
        # to it where the spoke now is, and the rest of its output and its exit code arrive.
        assert in_flight.poll() is None, in_flight.stderr.read() if in_flight.stderr else ""
        assert survivor.cli("box", "exec", box, "--", "touch", "/workspace/go").returncode == 0
        assert _readline(in_flight) == b"second\n"
        assert in_flight.wait(60) == 7
    finally:
        if in_flight.poll() is None:
            in_flight.kill()
    # Its boxes are still there and work; the exec can be run again.
    assert box in {x["id"] for x in survivor.cli_json("box", "ls", "--spoke", held[0])}
    res = survivor.cli("box", "exec", box, "--", "cat", "/workspace/kept")
    assert (res.returncode, res.stdout) == (0, "kept\n"), res.stderr
    # Nothing written before the kill is lost: boxes, audit rows, workstream events.
    after = _db_rows(rig.any_live())
    assert before["boxes"] <= after["boxes"]
    assert all(after["audit"].get(i) == row for i, row in before["audit"].items())
    for ws_id, events in before["events"].items():
        assert after["events"][ws_id][:len(events)] == events
    # Once its lease ran out the cluster no longer counts the dead hub; back, it is a new member.
    def gone() -> bool:
        row = next((m for m in survivor.cluster()["hubs"] if m["id"] == victim.hub_id), None)
        return row is None or (row.get("live") is False and not row["leader"] and not row["spokes"])

    wait_until(gone, timeout=30, what="the dead hub to be out of the cluster's view")
    rig.restart(victim)
    wait_until(lambda: victim.hub_id in {m["id"] for m in survivor.cluster()["hubs"]},
               what="the restarted hub to join")


def test_kill9_the_leader_hands_the_lease_and_its_work_to_another_hub(rig: MultiHub) -> None:
    leader = rig.leader()
    assert leader is not None
    survivors = rig.others(leader)
    assert _last_sample(rig) is not None, "the leader samples the history (every second here)"
    # An exec whose caller is connected to the leader, for a spoke another hub holds: when the
    # leader dies, the caller's stream ends with an error (it does not hang) and can be re-run.
    spoke = next((s.name for s in rig.spokes if rig.holder_of(s.name) is not leader), None)
    assert spoke is not None, f"every spoke is on the leader: {rig.spread()}"
    box = _box(leader, spoke)
    in_flight = leader.popen_cli("box", "exec", box, "--", "sh", "-c", "echo first; sleep 600")
    try:
        assert _readline(in_flight) == b"first\n"
        killed_at = rig.kill9(leader)
        code = in_flight.wait(60)
    finally:
        if in_flight.poll() is None:
            in_flight.kill()
    assert code != 0 and in_flight.stderr is not None and in_flight.stderr.read().strip()
    again = survivors[0].cli("box", "exec", box, "--", "echo", "again")
    assert (again.returncode, again.stdout) == (0, "again\n"), again.stderr

    def new_leader() -> ClusterHub | None:
        seen = {rig.hub_by_id(s.cluster()["leader"]) for s in survivors}
        found = seen.pop() if len(seen) == 1 else None
        return found if found is not None and found is not leader else None

    took_over = wait_until(new_leader, timeout=20, what="a survivor to take the leader lease")
    assert took_over in survivors
    # Leader work runs there: history samples stamped after the old leader died (whole
    # seconds, so one more than the kill), which no dead process can have written.
    wait_until(lambda: (_last_sample(rig) or 0) > killed_at + 1, timeout=30,
               what="the new leader's history samples")
    # And the cluster still serves spokes through the survivors.
    for joined in rig.spokes:
        _wait_held_by_a_live_hub(rig, joined.name, took_over, leader)


def _wait_held_by_a_live_hub(rig: MultiHub, spoke: str, via: ClusterHub, dead: ClusterHub) -> None:
    """Within seconds (the bound only stops a hang): ``spoke`` held by a hub other than
    ``dead``, and connected, as ``via`` sees it."""

    def moved() -> bool:
        holder = rig.holder_of(spoke, via=via)
        return holder is not None and holder is not dead and via.connected(spoke)

    wait_until(moved, timeout=30, what=f"{spoke} to reconnect to a live hub")


def _last_sample(rig: MultiHub) -> float | None:
    """The newest history sample's timestamp, read from the database itself."""
    with psycopg.connect(rig.database_url, connect_timeout=10) as conn:
        row = conn.execute("SELECT max(ts) FROM history").fetchone()
    return None if row is None or row[0] is None else float(row[0])


def test_the_rig_refuses_what_is_not_a_cluster(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="PostgreSQL"):
        MultiHub(tmp_path, "sqlite:/tmp/hub.db")
    with pytest.raises(ValueError, match="at least one hub"):
        MultiHub(tmp_path, "postgresql://x@127.0.0.1/db", 0)
