"""Issue 8 (hardening), items 2, 6, 7, 8 and 12, on a real hub and spoke over wss, real Docker.

Each test failed before its fix:

- item 6: a 100 MB upload grew the spoke by ~300 MB (the whole file joined in memory; the
  benchmark's 200 MB took it from 59 MB to 677 MB) — now its RSS stays flat both ways;
- item 2: a box of an image without USER ran as root, and ``--user`` did not exist;
- item 7: ``/workspace`` had no size limit (``--workspace``, ``--max-workspace`` did not exist);
- item 8: ``hub box cp BOX:/tmp/f`` answered "no such file" for a file a command wrote;
- item 12: networked boxes shared Docker's default bridge and could connect to each other.
"""

from __future__ import annotations

import os
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from tests.boxes.helpers import NO_USER_IMAGE, ensure_test_images
from tests.boxes.test_docker_isolation import CONNECT, LISTEN
from tests.cluster import HUB, Hub, Spoke, wait_until

pytestmark = pytest.mark.timeout(300)
IMAGE = "spokehub-sandbox:bookworm"
MB = 1_000_000


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


class Peak:
    """The highest RSS of ``pid`` while the block runs (sampled every 10 ms)."""

    def __init__(self, pid: int) -> None:
        self.pid, self.value = pid, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.value = max(self.value, rss(self.pid))
            time.sleep(0.01)

    def __enter__(self) -> Peak:
        self.value = rss(self.pid)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def create(hub: Hub, spoke: Spoke, *args: str) -> str:
    return str(hub.cli_json("box", "create", "--spoke", spoke.name, *args)["id"])


def sh(hub: Hub, box: str, script: str, *, check: bool = True) -> subprocess.CompletedProcess[str]:
    res = hub.cli("box", "exec", box, "--", "sh", "-c", script)
    if check:
        assert res.returncode == 0, res.stderr
    return res


def test_file_transfers_keep_the_spoke_small(hub: Hub, spoke: Spoke, tmp_path: Path) -> None:
    """RSS is memory, not time: the growth bound holds however slow the machine is."""
    assert spoke.proc is not None
    pid = spoke.proc.popen.pid
    box = create(hub, spoke, "--image", IMAGE)
    client = hub.client()
    source = tmp_path / "big.bin"
    block = os.urandom(MB)
    with source.open("wb") as fh:
        for _ in range(100):
            fh.write(block)
    with source.open("rb") as fh:  # warm up: first transfer, thread pools, imports
        client.put_file(box, "warm.bin", fh, 100 * MB)
    base = rss(pid)
    with source.open("rb") as fh, Peak(pid) as upload:
        assert client.put_file(box, "big.bin", fh, 100 * MB)["size"] == 100 * MB
    with Peak(pid) as download:
        got = sum(len(chunk) for chunk in client.get_file(box, "big.bin"))
    assert got == 100 * MB
    assert upload.value - base < 64 * 1024 * 1024, (base, upload.value)
    assert download.value - base < 64 * 1024 * 1024, (base, download.value)
    assert sh(hub, box, "cmp big.bin warm.bin && echo same").stdout == "same\n"


def test_box_users(hub: Hub, spokes: list[Spoke], tmp_path: Path) -> None:
    ensure_test_images(IMAGE)
    allow = ["--allow-image", IMAGE, "--allow-image", NO_USER_IMAGE]
    plain = Spoke(tmp_path, hub, extra=allow)
    rooted = Spoke(tmp_path, hub, extra=[*allow, "--allow-root"])
    for s in (plain, rooted):
        spokes.append(s)
        s.join()
    box = create(hub, plain, "--image", NO_USER_IMAGE)
    assert sh(hub, box, "id -u; touch /workspace/mine && echo ok").stdout == "1000\nok\n"
    named = create(hub, plain, "--image", IMAGE, "--user", "nobody")
    assert sh(hub, named, "id -un").stdout == "nobody\n"
    for user in ("0", "root"):
        refused = hub.cli("box", "create", "--spoke", plain.name, "--image", NO_USER_IMAGE,
                          "--user", user)
        assert refused.returncode != 0 and "denied" in refused.stderr, refused.stderr
        assert "--allow-root" in refused.stderr, refused.stderr
    bad = hub.cli("box", "create", "--spoke", plain.name, "--image", IMAGE, "--user", "a\x1bb")
    assert bad.returncode != 0 and "invalid" in bad.stderr, bad.stderr
    root = create(hub, rooted, "--image", NO_USER_IMAGE, "--user", "0")
    assert sh(hub, root, "id -u").stdout == "0\n"
    default = create(hub, rooted, "--image", NO_USER_IMAGE)  # allowed, but only if asked
    assert sh(hub, default, "id -u").stdout == "1000\n"
    info = hub.client().request("GET", "/api/spokes")
    assert any(row["name"] == rooted.name for row in info)


def test_workspace_size(hub: Hub, spokes: list[Spoke], tmp_path: Path) -> None:
    spoke = Spoke(tmp_path, hub, extra=["--max-workspace", "256m"])
    spokes.append(spoke)
    spoke.join()
    box = create(hub, spoke, "--image", IMAGE, "--workspace", "64m")
    full = sh(hub, box, "dd if=/dev/zero of=/workspace/big bs=1M count=100 2>&1", check=False)
    assert full.returncode != 0 and "No space left on device" in full.stdout, full.stdout
    image = spoke.dir / "workspaces" / f"{box}.img"
    assert image.stat().st_blocks * 512 <= 64 * 1024 * 1024  # the host held no more
    default = create(hub, spoke, "--image", IMAGE)  # 1 GiB, capped at this spoke's 256m
    size = sh(hub, default, "df -B1 --output=size /workspace | tail -1").stdout
    assert 200 * 1024 * 1024 < int(size) <= 256 * 1024 * 1024
    over = hub.cli("box", "create", "--spoke", spoke.name, "--image", IMAGE, "--workspace", "1g")
    assert over.returncode != 0 and "denied" in over.stderr and "ceiling" in over.stderr
    hub.cli("box", "rm", box, check=True)
    assert not image.exists()


def test_files_under_tmp(hub: Hub, spoke: Spoke, tmp_path: Path) -> None:
    box = create(hub, spoke, "--image", IMAGE)
    sh(hub, box, "echo written by a command > /tmp/out.txt")
    hub.cli("box", "cp", f"{box}:/tmp/out.txt", str(tmp_path / "out.txt"), check=True)
    assert (tmp_path / "out.txt").read_text() == "written by a command\n"
    (tmp_path / "in.txt").write_text("put by the hub\n")
    hub.cli("box", "cp", str(tmp_path / "in.txt"), f"{box}:/tmp/", check=True)
    assert sh(hub, box, "cat /tmp/in.txt").stdout == "put by the hub\n"
    missing = hub.cli("box", "cp", f"{box}:/tmp/nope.txt", str(tmp_path / "nope.txt"))
    assert missing.returncode != 0 and "no such file /tmp/nope.txt" in missing.stderr


@pytest.fixture
def host_port() -> Iterator[int]:
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("0.0.0.0", 0))
    server.listen()
    server.settimeout(0.5)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            conn.sendall(b"host says hi")
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield int(server.getsockname()[1])
    stop.set()
    thread.join()
    server.close()


def _network(spoke: Spoke) -> list[dict[str, object]]:
    return docker.from_env().api.networks(filters={"label": f"spokehub.spoke={spoke.name}"})


def test_networked_boxes_are_isolated(hub: Hub, spoke: Spoke, host_port: int) -> None:
    """Box to box is dropped; the host (gateway) is reachable — there is no internet here,
    so that is the "outside" this machine offers. The network goes with the last box."""
    a, b = (create(hub, spoke, "--image", IMAGE, "--network") for _ in range(2))
    [net] = _network(spoke)
    api = docker.from_env().api
    [container] = api.containers(filters={"label": f"spokehub.box={a}"})
    settings = container["NetworkSettings"]["Networks"][net["Name"]]
    listener = subprocess.Popen([HUB, "box", "exec", a, "--", "python3", "-c", LISTEN],
                                stdout=subprocess.PIPE, text=True,
                                env={**os.environ, "SPOKEHUB_HUB_DIR": str(hub.dir)})
    try:
        assert listener.stdout is not None and listener.stdout.readline() == "listening\n"
        blocked = hub.cli("box", "exec", b, "--", "python3", "-c", CONNECT,
                          settings["IPAddress"], "8080")
        assert blocked.stdout.startswith("refused"), blocked.stdout
        outside = hub.cli("box", "exec", b, "--", "python3", "-c", CONNECT,
                          settings["Gateway"], str(host_port))
        assert outside.stdout == "connected b'host says hi'\n", outside.stdout
    finally:
        listener.kill()
        listener.wait()
    hub.cli("box", "rm", a, check=True)
    assert _network(spoke)
    hub.cli("box", "rm", b, check=True)
    assert not _network(spoke)


def test_hub_down_rm_boxes_leaves_no_network(hub: Hub, spoke: Spoke) -> None:
    box = create(hub, spoke, "--image", IMAGE, "--network")
    assert _network(spoke)
    res = subprocess.run([HUB, "down", "--rm-boxes", "--data-dir", str(hub.dir),
                          "--spoke-dir", str(spoke.dir)], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"removed box {box}" in res.stdout + res.stderr
    wait_until(lambda: not _network(spoke), what="the box network removed")
    assert not docker.from_env().api.containers(all=True, filters={
        "label": f"spokehub.spoke={spoke.name}"})
