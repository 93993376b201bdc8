"""The janitor with real parts: a real hub (``--box-idle-ttl 3s``), a real spoke over wss, real
Docker. A box nobody uses is removed from Docker and recorded destroyed, with an audit row that
says why; a box with an exec running past the TTL stays, and is reaped once it is idle too.
Every wait is for something that must happen (tests.cluster.wait_until, generous bounds); the
only timing is the TTL itself. tests/hub/test_janitor.py covers the rules with a fake clock.
"""

from __future__ import annotations

import base64
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from tests.cluster import Hub, Spoke, wait_until

IMAGE = "spokehub-sandbox:bookworm"
WAIT_FOR_GO = "echo started; while [ ! -e /workspace/go ]; do sleep 0.1; done; echo done"


@pytest.fixture
def reaping_hub(tmp_path: Path, sandbox_image: str) -> Iterator[Hub]:
    h = Hub(tmp_path)
    h.extra = ["--box-idle-ttl", "3s"]
    h.start()
    yield h
    h.stop()


def containers(box_id: str) -> list[Any]:
    return list(docker.from_env().containers.list(all=True, filters={"label": f"spokehub.box={box_id}"}))


def live_ids(hub: Hub) -> set[str]:
    return {b["id"] for b in hub.cli_json("box", "ls")}


class BusyExec:
    """An exec that runs until the test lets it finish, in a thread (the SDK is blocking)."""

    def __init__(self, hub: Hub, box_id: str) -> None:
        self.started = threading.Event()
        self.lines: list[str] = []
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(hub, box_id), daemon=True)
        self.thread.start()

    def _run(self, hub: Hub, box_id: str) -> None:
        try:
            for event in hub.client().exec_stream(box_id, ["sh", "-c", WAIT_FOR_GO], timeout_s=300):
                if event["t"] == "stdout":
                    self.lines.append(base64.b64decode(event["d"]).decode())
                    self.started.set()
        except BaseException as err:  # noqa: BLE001 - reported by the test
            self.error = err
        finally:
            self.started.set()


def start_busy_box(hub: Hub, spoke: Spoke) -> tuple[str, BusyExec]:
    """A box with an exec running in it. On a slow machine a new box may sit idle past the
    3 s TTL before its exec starts, and be reaped first: then try again with a new one."""
    for _ in range(5):
        box_id = str(hub.cli_json("box", "create", "--spoke", spoke.name, "--image", IMAGE)["id"])
        busy = BusyExec(hub, box_id)
        assert busy.started.wait(120), "the exec never started"
        if busy.error is None and busy.lines:
            return box_id, busy
    raise AssertionError(f"no exec started before its box was reaped: {busy.error}")


def test_an_idle_box_is_removed_from_docker_and_a_busy_one_stays(
        reaping_hub: Hub, tmp_path: Path, spokes: list[Spoke]) -> None:
    hub = reaping_hub
    spoke = Spoke(tmp_path, hub)
    spokes.append(spoke)
    spoke.join()
    busy_box, busy = start_busy_box(hub, spoke)
    idle_box = str(hub.cli_json("box", "create", "--spoke", spoke.name, "--image", IMAGE)["id"])
    assert containers(idle_box)

    # Idle: reaped through the destroy path, the container gone, the box recorded destroyed.
    wait_until(lambda: idle_box not in live_ids(hub), timeout=120, what="the idle box reaped")
    wait_until(lambda: not containers(idle_box), timeout=60, what="its container removed")
    rows = hub.cli_json("audit", "--kind", "box.destroy")["audit"]
    (row,) = [r for r in rows if r["subject"] == idle_box]
    assert row["result"] == "ok" and row["actor"] == "" and row["spoke"] == spoke.name
    assert row["detail"].startswith("idle for ") and "--box-idle-ttl 3s" in row["detail"]
    inventory = {b["id"]: b for b in hub.client().request("GET", "/api/boxes?all=1")}
    assert idle_box not in inventory

    # Busy: its exec started before the idle box was made, so it has had no new activity for
    # longer than the idle box had when that was reaped; it stays while the exec runs.
    assert busy.thread.is_alive() and busy_box in live_ids(hub) and containers(busy_box)
    assert hub.cli("box", "exec", busy_box, "--", "touch", "/workspace/go").returncode == 0
    busy.thread.join(60)
    assert busy.error is None and "".join(busy.lines) == "started\ndone\n"

    # Once idle too, it goes the same way.
    wait_until(lambda: busy_box not in live_ids(hub), timeout=120, what="the busy box reaped once idle")
    wait_until(lambda: not containers(busy_box), timeout=60, what="its container removed")
    assert hub.cli_json("box", "ls") == []
