"""Boxes through the hub CLI on real Docker: exec streaming, timeouts, files, policy, reaping."""

from __future__ import annotations

import base64
import json
import os
import threading
from pathlib import Path

import docker
import pytest

from tests.cluster import Hub, Spoke, wait_until

IMAGE = "spokehub-sandbox:bookworm"


@pytest.fixture
def box(hub: Hub, spoke: Spoke) -> str:
    created = hub.cli_json("box", "create", "--spoke", spoke.name, "--image", IMAGE)
    assert created["spoke"] == spoke.name
    return str(created["id"])


def test_exec_streams_stdout_stderr_and_exit_code(hub: Hub, box: str) -> None:
    res = hub.cli("box", "exec", box, "--", "sh", "-c", "echo out; echo err >&2; exit 3")
    assert (res.returncode, res.stdout, res.stderr) == (3, "out\n", "err\n")
    assert hub.cli("box", "exec", box, "--", "true").returncode == 0


def test_exec_output_arrives_while_the_command_runs(hub: Hub, box: str) -> None:
    """The command blocks until the test has seen its first line: only streaming can pass."""
    client = hub.client()
    script = "echo first; while [ ! -e /workspace/go ]; do sleep 0.05; done; echo second"
    seen: list[str] = []
    for event in client.exec_stream(box, ["sh", "-c", script], timeout_s=60):
        if event["t"] == "stdout":
            seen.append(base64.b64decode(event["d"]).decode())
            if seen == ["first\n"]:
                other = hub.client()
                assert list(other.exec_stream(box, ["touch", "/workspace/go"]))[-1]["exit_code"] == 0
        elif event["t"] == "exit":
            assert event["exit_code"] == 0
    assert "".join(seen) == "first\nsecond\n"


def test_exec_timeout_kills_the_process(hub: Hub, box: str) -> None:
    res = hub.cli("box", "exec", "--timeout", "1", box, "--", "sh", "-c", "sleep 300; echo never")
    assert res.returncode != 0 and "timed out" in res.stderr and "never" not in res.stdout
    ps = hub.cli("box", "exec", box, "--", "sh", "-c", "cat /proc/[0-9]*/cmdline | tr '\\0' ' '")
    assert "sleep 300" not in ps.stdout


def test_copy_both_ways_with_a_large_file(hub: Hub, box: str, tmp_path: Path) -> None:
    src = tmp_path / "blob.bin"
    src.write_bytes(os.urandom(5 * 1024 * 1024 + 123))
    res = hub.cli("box", "cp", str(src), f"{box}:/workspace/blob.bin")
    assert res.returncode == 0, res.stderr
    check = hub.cli("box", "exec", box, "--", "sh", "-c", "wc -c < /workspace/blob.bin")
    assert check.stdout.strip() == str(5 * 1024 * 1024 + 123)
    back = tmp_path / "back.bin"
    res = hub.cli("box", "cp", f"{box}:/workspace/blob.bin", str(back))
    assert res.returncode == 0, res.stderr
    assert back.read_bytes() == src.read_bytes()
    missing = hub.cli("box", "cp", f"{box}:/workspace/nope", str(tmp_path / "x"))
    assert missing.returncode != 0 and "not_found" in missing.stderr
    assert not (tmp_path / "x").exists() and not (tmp_path / "x.part").exists()


def test_remove_is_idempotent(hub: Hub, box: str) -> None:
    assert hub.cli("box", "rm", box).returncode == 0
    assert hub.cli("box", "rm", box).returncode == 0
    assert hub.cli_json("box", "ls") == []
    assert docker.from_env().containers.list(all=True, filters={"label": f"spokehub.box={box}"}) == []
    gone = hub.cli("box", "exec", box, "--", "true")
    assert gone.returncode != 0 and "not_found" in gone.stderr


def test_logs_and_bad_arguments(hub: Hub, spoke: Spoke, box: str) -> None:
    assert hub.cli("box", "logs", box).returncode == 0
    bad_id = hub.cli("box", "exec", "not-a-box", "--", "true")
    assert bad_id.returncode == 2 and "not a box id" in bad_id.stderr
    no_spoke = hub.cli("box", "create", "--image", IMAGE)
    assert no_spoke.returncode == 2 and "--spoke" in no_spoke.stderr
    bad_env = hub.cli("box", "create", "--spoke", spoke.name, "--image", IMAGE, "--env", "NOEQUALS")
    assert bad_env.returncode == 2 and "K=V" in bad_env.stderr
    bad_mem = hub.cli("box", "create", "--spoke", spoke.name, "--image", IMAGE, "--memory", "lots")
    assert bad_mem.returncode == 2 and "bad size" in bad_mem.stderr


def test_unknown_spoke_is_not_found_and_an_offline_one_unavailable(
    hub: Hub, spoke: Spoke, box: str
) -> None:
    unknown = hub.cli("box", "create", "--spoke", "nosuchspoke", "--image", IMAGE)
    assert unknown.returncode == 2, unknown.stderr
    assert "no spoke 'nosuchspoke'" in unknown.stderr and "(not_found)" in unknown.stderr
    assert "not connected" not in unknown.stderr
    listed = hub.cli("box", "ls", "--spoke", "nosuchspoke")
    assert listed.returncode == 2 and "(not_found)" in listed.stderr
    spoke.stop()
    wait_until(lambda: not hub.connected(spoke.name), what="the spoke to be offline")
    offline = hub.cli("box", "create", "--spoke", spoke.name, "--image", IMAGE)
    assert offline.returncode == 1 and "not connected" in offline.stderr
    assert "(unavailable)" in offline.stderr
    in_box = hub.cli("box", "exec", box, "--", "true")
    assert in_box.returncode == 1 and "not connected (unavailable)" in in_box.stderr
    assert hub.cli_json("box", "ls", "--spoke", spoke.name)[0]["id"] == box


def test_spoke_policy_refuses_what_it_does_not_allow(tmp_path: Path, hub: Hub, spokes: list[Spoke]) -> None:
    s = Spoke(tmp_path, hub, extra=["--max-boxes", "1", "--max-memory", "1g"])
    spokes.append(s)
    s.join()
    other_image = hub.cli("box", "create", "--spoke", s.name, "--image", "alpine:latest")
    assert other_image.returncode == 2 and "not allowed" in other_image.stderr
    too_big = hub.cli("box", "create", "--spoke", s.name, "--image", IMAGE, "--memory", "2g")
    assert too_big.returncode == 2 and "ceiling" in too_big.stderr
    assert hub.cli("box", "create", "--spoke", s.name, "--image", IMAGE).returncode == 0
    full = hub.cli("box", "create", "--spoke", s.name, "--image", IMAGE)
    assert full.returncode == 2 and "maximum of 1" in full.stderr
    states = {b["state"] for b in hub.client().request("GET", "/api/boxes?spoke=" + s.name)}
    assert states == {"running"}  # refused creates leave nothing behind
    assert len(docker.from_env().containers.list(all=True, filters={"label": f"spokehub.spoke={s.name}"})) == 1


def test_box_hardening_on_docker(hub: Hub, box: str) -> None:
    [container] = docker.from_env().containers.list(filters={"label": f"spokehub.box={box}"})
    host = container.attrs["HostConfig"]
    assert host["ReadonlyRootfs"] is True and host["CapDrop"] == ["ALL"]
    assert "no-new-privileges" in host["SecurityOpt"] and host["NetworkMode"] == "none"
    assert host["PidsLimit"] and host["Memory"] > 0 and host["NanoCpus"] > 0
    assert not any("docker.sock" in str(m) for m in container.attrs["Mounts"])
    res = hub.cli("box", "exec", box, "--", "sh", "-c", "id -u; touch /etc/x 2>/dev/null || echo ro")
    assert res.stdout.split() == ["1000", "ro"]


def test_orphans_are_reaped_when_the_spoke_reconnects(hub: Hub, spoke: Spoke, box: str) -> None:
    import asyncio

    from spoke.boxes.base import BoxSpec
    from spoke.boxes.docker_boxes import DockerBoxManager

    spoke.stop()
    orphan = "bx_" + "ab" * 8

    async def make_orphan() -> None:
        manager = DockerBoxManager(spoke.name)
        try:
            await manager.create(orphan, BoxSpec(image=IMAGE))
        finally:
            await manager.close()

    asyncio.run(make_orphan())
    labels = lambda bid: {"label": f"spokehub.box={bid}"}  # noqa: E731
    client = docker.from_env()
    assert client.containers.list(all=True, filters=labels(orphan))
    spoke.run()
    wait_until(lambda: not client.containers.list(all=True, filters=labels(orphan)), what="orphan reaped")
    assert client.containers.list(all=True, filters=labels(box)), "the known box must survive"


def test_many_parallel_execs_share_one_link(hub: Hub, box: str) -> None:
    """A stalled stream (a reader that stops reading) must not block other calls."""
    client = hub.client()
    stalled = client.exec_stream(box, ["sh", "-c", "yes | head -c 50000000"], timeout_s=120)
    next(stalled)  # start it, then stop reading: its window fills and the spoke pauses it
    results: list[int] = []

    def run_one() -> None:
        c = hub.client()
        events = list(c.exec_stream(box, ["echo", "hi"]))
        results.append(events[-1]["exit_code"])

    threads = [threading.Thread(target=run_one) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results == [0] * 8
    client.close()


def test_api_rejects_bad_requests(hub: Hub) -> None:
    import http.client
    import ssl

    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    conn = http.client.HTTPSConnection("127.0.0.1", hub.port, context=ctx)
    conn.request("GET", "/api/boxes")
    resp = conn.getresponse()
    assert resp.status == 401 and json.loads(resp.read())["error"]["code"] == "denied"
    key = json.loads((hub.dir / "admin.json").read_text())["api_key"]
    for body, fragment in [(b"{not json", "not valid JSON"), (b"[1,2]", "JSON object"),
                           (b'{"name": 5}', "must be of type str"), (b"x" * (2 * 1024 * 1024), "larger than")]:
        conn = http.client.HTTPSConnection("127.0.0.1", hub.port, context=ctx)
        conn.request("POST", "/api/tokens", body=body, headers={"Authorization": f"Bearer {key}"})
        resp = conn.getresponse()
        payload = json.loads(resp.read())
        assert resp.status in (400, 413) and fragment in payload["error"]["message"], payload
    res = hub.cli("token", "create", "--name", "ok", "--ttl", "forever")
    assert res.returncode == 2 and "bad ttl" in res.stderr
