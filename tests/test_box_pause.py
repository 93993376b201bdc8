"""`hub box pause` / `resume` through a real hub and spoke on Docker: the freezer keeps the
box's processes and memory, a paused box refuses work with a clear error at the hub and shows
as paused in listings, and it survives the spoke reconnecting (reconcile keeps it)."""

from __future__ import annotations

from pathlib import Path

import docker

from tests.cluster import Hub, Spoke, wait_until

IMAGE = "spokehub-sandbox:bookworm"


def test_pause_refuses_work_shows_everywhere_and_resume_restores(hub: Hub, spoke: Spoke,
                                                                  tmp_path: Path) -> None:
    box = hub.cli_json("box", "create", "--spoke", spoke.name, "--image", IMAGE)["id"]
    started = hub.cli("box", "exec", box, "--", "sh", "-c", "echo kept > /tmp/mem")
    assert started.returncode == 0, started.stderr

    paused = hub.cli_json("box", "pause", box)
    assert paused["state"] == "paused"
    client = docker.from_env()
    try:
        container = next(c for c in client.containers.list()
                         if c.labels.get("spokehub.box") == box)
        assert container.status == "paused"  # Docker's freezer, not a stop
    finally:
        client.close()
    listed = {b["id"]: b["state"] for b in hub.cli_json("box", "ls")}
    assert listed[box] == "paused"
    assert hub.client().request("GET", "/api/boxes")[0]["state"] == "paused"

    refused = hub.cli("box", "exec", box, "--", "true")
    assert refused.returncode != 0
    assert f"box {box} is paused: resume it first (hub box resume {box})" in refused.stderr
    cp = hub.cli("box", "cp", f"{box}:/tmp/mem", str(tmp_path / "mem"))
    assert cp.returncode != 0 and "paused" in cp.stderr

    # The spoke restarts while the box is paused: reconcile keeps it, still paused.
    spoke.stop()
    wait_until(lambda: not hub.connected(spoke.name), what="spoke gone")
    spoke.run()
    assert {b["id"]: b["state"] for b in hub.cli_json("box", "ls")}[box] == "paused"
    assert hub.cli("box", "exec", box, "--", "true").returncode != 0

    resumed = hub.cli_json("box", "resume", box)
    assert resumed["state"] == "running"
    again = hub.cli("box", "exec", box, "--", "cat", "/tmp/mem")
    assert (again.returncode, again.stdout) == (0, "kept\n")  # tmpfs memory kept

    hub.cli_json("box", "pause", box)
    gone = hub.cli_json("box", "rm", box)
    assert gone["removed"] is True


def test_pause_of_unknown_or_bad_box_is_a_clear_error(hub: Hub) -> None:
    bad = hub.cli("box", "pause", "not-a-box")
    assert bad.returncode != 0 and "box id" in bad.stderr
    missing = hub.cli("box", "resume", "bx_0123456789abcdef")
    assert missing.returncode != 0 and "no box bx_0123456789abcdef" in missing.stderr
