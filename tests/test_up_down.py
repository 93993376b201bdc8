"""``hub up``, ``hub down`` and ``hub box ls --all`` as a new user meets them (issue 15,
items 4, 5, 6, 8, 9): real ``hub up`` processes with their output going to a log file (not a
terminal), a real hub, spoke and Docker boxes underneath."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from client.http_client import HubClient
from tests.cluster import HUB, Hub, Spoke, free_port, wait_until

IMAGE = "spokehub-sandbox:bookworm"


class Up:
    """One ``hub up`` in its own session (so a test can Ctrl-C its whole process group)."""

    def __init__(self, tmp: Path, port: int | None = None, name: str | None = None,
                 log: str = "up.log") -> None:
        self.tmp = tmp
        self.hub_dir, self.spoke_dir = tmp / "hub", tmp / "spoke"
        self.port = port or free_port()
        self.name = name or f"up-{uuid.uuid4().hex[:8]}"
        self.log = tmp / log
        self.env = {**os.environ, "XDG_DATA_HOME": str(tmp / "xdg"),
                    "SPOKEHUB_HUB_DIR": str(self.hub_dir), "SPOKEHUB_SPOKE_DIR": str(self.spoke_dir)}
        self.proc: subprocess.Popen[bytes] | None = None

    def args(self) -> list[str]:
        return [HUB, "up", "--port", str(self.port), "--spoke-name", self.name]

    def start(self, wait: bool = True) -> Up:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(self.args(), stdout=out, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, env=self.env,
                                         start_new_session=True)
        if wait:
            wait_until(self.is_up, 90, what="hub up to say it is up")
        return self

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def is_up(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"hub up exited with {self.proc.returncode}:\n{self.output()}")
        return "spokehub is up" in self.output()

    def run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Another command in the same environment (data dirs), e.g. a second ``hub up``."""
        return subprocess.run([HUB, *args], capture_output=True, text=True, timeout=timeout,
                              env=self.env, stdin=subprocess.DEVNULL)

    def client(self) -> HubClient:
        return HubClient.from_data_dir(self.hub_dir)

    def wait(self, timeout: float = 60) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def _containers(name: str) -> list[Any]:
    return list(docker.from_env().containers.list(all=True, filters={"label": f"spokehub.spoke={name}"}))


@pytest.fixture
def ups(tmp_path: Path, sandbox_image: str) -> Iterator[list[Up]]:
    """``hub up`` runs started by a test; killed (with their children) and their boxes removed."""
    started: list[Up] = []
    yield started
    for up in started:
        up.run("down", timeout=60)
        up.kill()
    client = docker.from_env()
    for up in started:
        for c in _containers(up.name):
            c.remove(force=True)
        for v in client.volumes.list(filters={"label": f"spokehub.spoke={up.name}"}):
            v.remove(force=True)


def _no_traceback(text: str) -> None:
    assert "Traceback" not in text, text[-4000:]


def _create_box(up: Up) -> str:
    return str(up.client().request("POST", "/api/boxes", {"spoke": up.name, "image": IMAGE})["id"])


# -------------------------------------------------- item 4: a second `hub up`
def test_second_up_says_it_is_running_and_disturbs_nothing(tmp_path: Path, ups: list[Up]) -> None:
    first = Up(tmp_path).start()
    ups.append(first)
    second = first.run("up", "--port", str(first.port), "--spoke-name", first.name, timeout=60)
    assert second.returncode == 1
    text = second.stdout + second.stderr
    _no_traceback(text)
    assert "already running" in text and "spokehub is up" not in text, text
    assert "hub spoke list" in text and "hub down" in text, text
    time.sleep(2)  # what used to go wrong (a second spoke replacing the first) would show by now
    [row] = [s for s in first.client().request("GET", "/api/spokes") if s["name"] == first.name]
    assert row["connected"], row
    spoke_lines = [ln for ln in first.output().splitlines() if "connected to" in ln]
    assert len(spoke_lines) == 1, first.output()  # the spoke's status line, once: no reconnect
    assert first.proc is not None and first.proc.poll() is None


# ----------------------------------------------------- item 5: a busy port
def test_up_on_a_busy_port_fails_with_one_clear_line(tmp_path: Path, sandbox_image: str) -> None:
    up = Up(tmp_path)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", up.port))
        sock.listen()
        res = up.run("up", "--port", str(up.port), "--spoke-name", up.name, timeout=60)
    assert res.returncode != 0
    _no_traceback(res.stdout + res.stderr)
    assert f"error: port {up.port} on 127.0.0.1 is in use (another hub? `--port`)" in res.stderr
    assert not up.hub_dir.exists() and not up.spoke_dir.exists()


# ------------------------------------------- items 6 and 8: Ctrl-C of `hub up`
def test_ctrl_c_of_up_stops_both_quietly_and_says_what_is_left(tmp_path: Path,
                                                               ups: list[Up]) -> None:
    up = Up(tmp_path).start()
    ups.append(up)
    box = _create_box(up)
    assert up.proc is not None
    os.killpg(up.proc.pid, signal.SIGINT)  # what Ctrl-C in its terminal does
    assert up.wait() == 0
    out = up.output()
    _no_traceback(out)
    assert "stopped" in out and box in out and "hub down --rm-boxes" in out, out
    res = up.run("down")
    assert res.returncode == 0 and "nothing to stop" in res.stderr, res.stderr
    assert box in res.stderr
    # The boxes can be removed with the hub down, too (straight from Docker).
    gone = up.run("down", "--rm-boxes")
    assert gone.returncode == 0 and box in gone.stderr, gone.stderr
    assert _containers(up.name) == []


def test_ctrl_c_in_a_terminal(tmp_path: Path, ups: list[Up]) -> None:
    """The same through a real pseudo-terminal: ^C goes to the foreground process group."""
    import pty
    import select

    up = Up(tmp_path)
    ups.append(up)
    pid, fd = pty.fork()
    if pid == 0:  # the child: become `hub up` on the terminal
        try:
            os.execve(HUB, up.args(), up.env)
        finally:
            os._exit(127)
    out = b""

    def read(until: bytes, timeout: float) -> None:
        nonlocal out
        deadline = time.monotonic() + timeout
        while until not in out and time.monotonic() < deadline:
            if select.select([fd], [], [], 0.2)[0]:
                try:
                    chunk = os.read(fd, 65536)
                except OSError:  # the terminal closed: `hub up` ended
                    return
                if not chunk:
                    return
                out += chunk

    try:
        read(b"spokehub is up", 90)
        assert b"spokehub is up" in out, out.decode(errors="replace")
        os.write(fd, b"\x03")
        read(b"no boxes left", 60)
        _, status = os.waitpid(pid, 0)
    finally:
        os.close(fd)
    text = out.decode(errors="replace")
    _no_traceback(text)
    assert os.waitstatus_to_exitcode(status) == 0, text
    assert "stopped the hub and spoke" in text and f"no boxes left on spoke {up.name}" in text


# ------------------------------------------------------------ item 8: hub down
def test_down_stops_up_then_rm_boxes_cleans_through_the_hub(tmp_path: Path,
                                                            ups: list[Up]) -> None:
    up = Up(tmp_path).start()
    ups.append(up)
    box = _create_box(up)
    res = up.run("down")
    assert res.returncode == 0, res.stderr
    assert f"spoke {up.name}" in res.stderr and "hub at" in res.stderr, res.stderr
    assert box in res.stderr and "hub down --rm-boxes" in res.stderr, res.stderr
    assert up.wait() == 0
    _no_traceback(up.output())
    assert [c.labels["spokehub.box"] for c in _containers(up.name)] == [box], "down keeps boxes"

    again = Up(tmp_path, port=up.port, name=up.name, log="up2.log").start()
    ups.append(again)
    listed = json.loads(again.run("box", "ls", "--all", "--json").stdout)
    assert [b["id"] for b in listed] == [box] and listed[0]["on_spoke"], listed
    res = again.run("down", "--rm-boxes")
    assert res.returncode == 0, res.stderr
    assert f"removed box {box}" in res.stderr and "through the hub" in res.stderr, res.stderr
    assert "no boxes left" in res.stderr, res.stderr
    assert again.wait() == 0
    assert _containers(up.name) == []
    rows = _hub_rows(up.hub_dir, box)  # the hub recorded the removal
    assert rows == [("destroyed",)], rows


def _hub_rows(hub_dir: Path, box: str) -> list[tuple[str]]:
    import sqlite3

    with sqlite3.connect(hub_dir / "hub.db") as db:
        return list(db.execute("SELECT state FROM boxes WHERE id=?", (box,)))


# ------------------------------------------------------- item 8: box ls --all
def test_box_ls_all_shows_what_really_exists(hub: Hub, spoke: Spoke) -> None:
    known = hub.cli_json("box", "create", "--spoke", spoke.name, "--image", IMAGE)["id"]
    lost = hub.cli_json("box", "create", "--spoke", spoke.name, "--image", IMAGE)["id"]
    engine = docker.from_env()
    [lost_container] = engine.containers.list(all=True, filters={"label": f"spokehub.box={lost}"})
    lost_container.remove(force=True)
    stray = "bx_" + uuid.uuid4().hex[:16]
    engine.containers.create(IMAGE, ["sleep", "600"], labels={
        "spokehub.managed": "1", "spokehub.spoke": spoke.name, "spokehub.box": stray,
        "spokehub.created_at": str(time.time())}, network_mode="none")
    plain = {b["id"] for b in hub.cli_json("box", "ls")}
    assert plain == {known, lost}, "without --all: the hub's records only"
    rows = {b["id"]: b for b in hub.cli_json("box", "ls", "--all")}
    assert set(rows) == {known, lost, stray}, rows
    assert rows[known]["state"] == "running" and rows[known]["on_spoke"] == "running"
    assert rows[lost]["on_spoke"] is None and "missing on the spoke" in rows[lost]["note"]
    assert rows[stray]["state"] is None and "not recorded by the hub" in rows[stray]["note"]
    table = hub.cli("box", "ls", "--all", check=True).stdout
    assert stray in table and "not recorded by the hub" in table, table


# --------------------------------------- item 9: image build progress in a log
def test_image_build_progress_is_printed_line_by_line_without_a_terminal(
        tmp_path: Path, sandbox_image: str) -> None:
    from spoke.boxes.image import RECIPE_VERSION, SUITE, default_cache_dir

    if not (default_cache_dir() / f"rootfs-{SUITE}-{RECIPE_VERSION}.tar").exists():
        pytest.skip("!!! SKIPPING: no cached sandbox root filesystem to import from (the image was built elsewhere)")
    image = f"spokehub-sandbox:lifecycle-{uuid.uuid4().hex[:8]}"
    code = ("import sys; from cli.up_command import build_sandbox_image; "
            "build_sandbox_image(sys.argv[1])")
    try:
        res = subprocess.run([sys.executable, "-c", code, image], capture_output=True, text=True,
                             timeout=300, cwd=Path(__file__).parent.parent,
                             stdin=subprocess.DEVNULL)
    finally:
        try:
            docker.from_env().images.remove(image, force=True)
        except docker.errors.ImageNotFound:
            pass
    assert res.returncode == 0, res.stderr
    lines = res.stderr.splitlines()
    assert any("docker import" in ln for ln in lines), res.stderr
    assert any(f"image {image} is ready" in ln for ln in lines), res.stderr
    assert lines[-1].endswith(f"built {image}"), res.stderr
    assert "\x1b[" not in res.stderr, "no terminal control sequences in a log"
