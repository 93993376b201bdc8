"""``spoke sim`` against a real hub: a real ``hub serve`` process, real wss, the real spoke
connector and dispatcher under every simulated spoke; no Docker, no LLM.

Each test runs the ``spoke sim`` command itself and checks its JSON report and what the hub
says, never how fast anything was: all connect, every call of the load is answered, a crash is
listed as lost and comes back, a churn ends with everyone back, a clean stop is ``left``, and a
second run resumes the enrolled identities without spending token uses.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.cluster import SPOKE, Hub

pytestmark = pytest.mark.timeout(600)
COUNT = 50


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[Hub]:
    """A real hub (no sandbox image needed: the simulated spokes run no containers)."""
    h = Hub(tmp_path)
    h.start()
    yield h
    h.stop()


def sim(hub: Hub, data_dir: Path, *args: str, token: str | None = None,
        expect: int = 0) -> dict[str, Any]:
    cmd = [SPOKE, "sim", "--data-dir", str(data_dir), "--hub-dir", str(hub.dir), "--json",
           *(["--token", token] if token else []), *args]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=500)
    assert res.returncode == expect, f"spoke sim exited {res.returncode}:\n{res.stdout}\n{res.stderr}"
    report: dict[str, Any] = json.loads(res.stdout)
    return report


def multi_token(hub: Hub, prefix: str, uses: int) -> str:
    made = hub.client().request("POST", "/api/tokens", {"name": prefix, "ttl": "1h", "uses": uses})
    return str(made["token"])


def states(hub: Hub, prefix: str) -> dict[str, str]:
    return {r["name"]: r["state"] for r in hub.client().request("GET", "/api/spokes")
            if r["name"].startswith(prefix + "-")}


def answered(report: dict[str, Any], kind: str) -> int:
    row = report["load"][kind]
    assert row["errors"] == 0, row
    return int(row["count"])


def test_steady_and_burst_answer_every_call(tmp_path: Path, hub: Hub) -> None:
    token = multi_token(hub, "sim", COUNT)
    data = tmp_path / "sims"
    report = sim(hub, data, "--count", str(COUNT), "--scenario", "steady", "--duration", "3",
                 "--rate", "40", "--box-every", "5", "--workstreams", "2",
                 "--slow-ms", "20", "--slow-fraction", "0.2", token=token)
    assert report["ok"] and report["connect_s"] is not None, report["problems"]
    assert report["hub_connected"] == COUNT
    assert answered(report, "ping (client)") > 0 and answered(report, "ping (hub)") > 0
    assert answered(report, "box.create") == answered(report, "box.exec") > 0
    assert answered(report, "ws.reply") == 2
    assert report["slow"]["spokes"] == COUNT // 5
    assert set(states(hub, "sim").values()) == {"left"}  # a clean stop says goodbye
    [row] = [t for t in hub.client().request("GET", "/api/tokens") if t["name"] == "sim"]
    assert row["uses_left"] == 0

    # A second run resumes the same identities without the token (its uses are all spent).
    again = sim(hub, data, "--count", str(COUNT), "--scenario", "burst", "--burst", "400",
                "--duration", "1")
    assert again["ok"] and again["hub_connected"] == COUNT, again["problems"]
    assert again["bursts"] and all(b["failed_requests"] == 0 for b in again["bursts"])
    assert answered(again, "burst request") > 0
    assert sorted(states(hub, "sim")) == [f"sim-{i:05d}" for i in range(1, COUNT + 1)]


def test_a_crash_is_listed_as_lost_and_comes_back(tmp_path: Path, hub: Hub) -> None:
    report = sim(hub, tmp_path / "kill", "--count", str(COUNT), "--scenario", "crash",
                 "--fraction", "0.2", "--duration", "3", token=multi_token(hub, "crash", COUNT))
    assert report["ok"], report["problems"]
    assert report["fault"] == {"kind": "kill", "spokes": COUNT // 5}
    assert report["lost_detect_s"] is not None and report["recover_s"] is not None
    assert answered(report, "ping (hub)") > 0

    # A partition: nothing flows, so the hub finds out from missing heartbeats.
    report = sim(hub, tmp_path / "cut", "--count", "10", "--scenario", "crash", "--fault",
                 "partition", "--fraction", "0.3", "--duration", "2", "--rate", "10",
                 token=multi_token(hub, "cut", 10))
    assert report["ok"], report["problems"]
    assert report["fault"]["kind"] == "partition" and report["lost_detect_s"] is not None
    assert report["recover_s"] is not None


def test_churn_brings_every_spoke_back(tmp_path: Path, hub: Hub) -> None:
    report = sim(hub, tmp_path / "churn", "--count", str(COUNT), "--scenario", "churn",
                 "--duration", "3", "--churn-every", "1", "--fraction", "0.2", "--rate", "20",
                 token=multi_token(hub, "churn", COUNT))
    assert report["ok"], report["problems"]
    assert len(report["waves"]) >= 2
    assert all(w["reconnect_s"] is not None and w["spokes"] == COUNT // 5 for w in report["waves"])
    assert report["final_s"] is not None


def test_the_simulator_refuses_a_single_use_token_and_an_unknown_data_dir(tmp_path: Path,
                                                                          hub: Hub) -> None:
    single = hub.token("one")
    cmd = [SPOKE, "sim", "--data-dir", str(tmp_path / "x"), "--count", "2"]
    res = subprocess.run([*cmd, "--token", single], capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and "multi-use token" in res.stderr
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and "give --token" in res.stderr
