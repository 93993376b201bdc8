"""The in-box exec agent (spoke/boxes/inbox/supervisor.py, spoke/boxes/agent_*.py).

The frame codec is checked without sockets; everything else runs the real supervisor in
real boxes of the sandbox image (whose python3 is Debian's python3-minimal: no json, no
termios, no pty module). The agent's exec contract as a whole is the ``agent`` backend of
tests/boxes/test_conformance.py.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import json
import struct
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import docker
import pytest

import spoke.boxes.inbox.boxlib as boxlib
import spoke.boxes.inbox.supervisor as supervisor
from spoke.boxes import agent_frames as af
from spoke.boxes.agent_boxes import attach_socket, supervisor_source
from spoke.boxes.agent_client import AgentChannel, AgentExecHandle
from spoke.boxes.agent_docker_tty import DockerTtyChannel
from spoke.boxes.base import BoxError, BoxSpec, Channel
from spoke.boxes.docker_boxes import DockerBoxManager
from tests.boxes.helpers import run, unique_sleep

pytestmark = pytest.mark.timeout(180)

NO_PYTHON_IMAGE = "spokehub-test-nopython:latest"


# ---------------------------------------------------------------------- codec (no sockets)
def test_frame_codec_round_trip_and_sync() -> None:
    frames = [af.encode_json(af.HELLO, 0, {"v": 1}, magic=True),
              af.encode(af.DATA, 7, b"x" * af.MAX_IN), af.ack(7, 12345)]
    raw = b"junk before the marker" + b"".join(frames)
    decoder = af.FrameDecoder(types=af.TO_BOX)
    got: list[af.Frame] = []
    for i in range(0, len(raw), 1000):  # arbitrary splits
        got += decoder.feed(raw[i:i + 1000])
    assert [(f.type, f.channel) for f in got] == [(af.HELLO, 0), (af.DATA, 7), (af.ACK, 7)]
    assert got[0].json() == {"v": 1} and got[1].payload == b"x" * af.MAX_IN
    assert got[2].count() == 12345 and decoder.skipped == len(b"junk before the marker")


def test_frame_codec_refuses_malformed_and_oversized_frames() -> None:
    with pytest.raises(af.FrameError, match="over the 65536-byte limit"):
        af.encode(af.DATA, 1, b"x" * (af.MAX_IN + 1))
    with pytest.raises(af.FrameError, match="not one the spoke sends"):
        af.encode(af.EXIT, 1)
    decoder = af.FrameDecoder(synced=True)
    with pytest.raises(af.FrameError, match="declares 1048576 bytes, over the"):
        decoder.feed(af.HEADER.pack(af.STDOUT, 3, 1 << 20))
    with pytest.raises(af.FrameError, match="unknown frame type 255"):
        af.FrameDecoder(synced=True).feed(b"\xff" * 9)  # what a dead supervisor's shell prints
    with pytest.raises(af.FrameError, match="not JSON"):
        af.Frame(af.EXIT, 1, b"{nope").json()
    with pytest.raises(af.FrameError, match="must carry 4 bytes"):
        af.Frame(af.ACK, 1, b"12345").count()
    with pytest.raises(af.FrameError, match="bad Docker stream header"):
        af.DockerStreamDecoder().feed(b"\x09\x00\x00\x00\x00\x00\x00\x01x")
    # Unsynced, garbage is skipped (never buffered without bound) until the marker.
    loose = af.FrameDecoder()
    assert loose.feed(b"\xff" * 100_000) == [] and loose.skipped > 99_000


def test_codec_constants_match_the_supervisor() -> None:
    assert supervisor.HEADER.format == af.HEADER.format
    for name in ("MAGIC", "MAX_IN", "WINDOW", "HELLO", "OPEN", "OPENED", "DATA", "EOF",
                 "STDOUT", "STDERR", "RESIZE", "ERROR", "SIGNAL", "KILL", "EXIT", "ACK", "CLOSE"):
        assert getattr(supervisor, name) == getattr(af, name), name
    assert supervisor.KNOWN_IN == set(af.TO_BOX)
    assert supervisor.READ_SIZE <= af.MAX_OUT


def test_supervisor_runs_on_python37_without_json(monkeypatch: pytest.MonkeyPatch) -> None:
    ast.parse(supervisor_source(), feature_version=(3, 7))
    monkeypatch.setattr(boxlib, "json", None)
    value = {"argv": ["sh", "-c", "echo 'é' \"\\ \U0001f600\t"], "env": {"A": ""}, "cwd": None,
             "n": -3, "ok": True, "list": [], "d": {}}
    assert json.loads(boxlib.dumps(value)) == value
    assert boxlib.loads(json.dumps(value, indent=1)) == value
    with pytest.raises(ValueError):
        boxlib.loads('{"a": 1} trailing')


# ---------------------------------------------------------------------- helpers
def _agent_conn(mgr: DockerBoxManager, container_id: str) -> Any:
    assert mgr.agents is not None
    return mgr.agents._conns.get(container_id)


async def _read_until(channel: Channel, needle: bytes, limit: int = 200) -> bytes:
    seen = b""
    for _ in range(limit):
        chunk = await asyncio.wait_for(channel.read(), timeout=20)
        if not chunk:
            break
        seen += chunk
        if needle in seen:
            return seen
    raise AssertionError(f"{needle!r} never came; got {seen[-500:]!r}")


def _docker_top(client: docker.DockerClient, container_id: str) -> str:
    top = client.api.top(container_id)
    return "\n".join(" ".join(map(str, row)) for row in top.get("Processes") or [])


@pytest.fixture(scope="session")
def no_python_image(box_image: str, docker_client: docker.DockerClient) -> str:
    """The sandbox image with python3 removed (made locally once, then cached)."""
    with contextlib.suppress(docker.errors.ImageNotFound):
        docker_client.images.get(NO_PYTHON_IMAGE)
        return NO_PYTHON_IMAGE
    api = docker_client.api
    made = api.create_container(box_image, user="0", labels={"spokehub.test": "nopython"},
                                command=["/bin/sh", "-c", "rm -f /usr/bin/python3*"])["Id"]
    try:
        api.start(made)
        assert api.wait(made)["StatusCode"] == 0
        repo, tag = NO_PYTHON_IMAGE.split(":")
        api.commit(made, repository=repo, tag=tag)
    finally:
        api.remove_container(made, force=True)
    return NO_PYTHON_IMAGE


@pytest.fixture
async def plain_manager(box_image: str) -> AsyncIterator[DockerBoxManager]:
    """A manager forced onto docker exec (``exec_agent=False``)."""
    mgr = DockerBoxManager(f"test-{uuid.uuid4().hex[:12]}", exec_agent=False)
    yield mgr
    try:
        await mgr.reap(keep=set())
    finally:
        await mgr.close()


# ---------------------------------------------------------------------- real boxes
async def test_exec_goes_through_the_agent_as_the_box_user(
        docker_manager: DockerBoxManager, box_id: str, image: str) -> None:
    info = await docker_manager.create(box_id, BoxSpec(image=image, env={"FROM_SPEC": "s"}))
    handle = await docker_manager.exec(box_id, ["sh", "-c", "id -u; echo $FROM_SPEC$X; pwd"],
                                       env={"X": "x"})
    assert isinstance(handle, AgentExecHandle)
    out = b"".join([d async for _, d in handle.chunks()])
    assert out == b"1000\nsx\n/workspace\n" and (await handle.wait()).exit_code == 0
    conn = _agent_conn(docker_manager, info.container_id)
    assert conn is not None and conn.dead is None and conn.info["v"] == 1
    assert await docker_manager.logs(box_id) == b""  # frames never land in a log file


async def test_an_image_without_python3_falls_back_to_docker_exec(
        docker_manager: DockerBoxManager, box_id: str, no_python_image: str) -> None:
    info = await docker_manager.create(box_id, BoxSpec(image=no_python_image))
    out, _, res = await run(docker_manager, box_id, ["sh", "-c", "echo fine"])
    assert (out, res.exit_code) == (b"fine\n", 0)
    handle = await docker_manager.exec(box_id, ["true"])
    assert not isinstance(handle, AgentExecHandle)
    await handle.wait()
    assert _agent_conn(docker_manager, info.container_id) is None
    with pytest.raises(BoxError, match="python3") as refused:
        await docker_manager.open_port(box_id, 8000)
    assert refused.value.code == "unavailable"


async def test_a_killed_supervisor_falls_back_and_the_box_lives(
        docker_manager: DockerBoxManager, docker_client: docker.DockerClient, box_id: str,
        image: str) -> None:
    info = await docker_manager.create(box_id, BoxSpec(image=image))
    await run(docker_manager, box_id, ["true"])
    conn = _agent_conn(docker_manager, info.container_id)
    assert conn is not None
    pid = conn.info["pid"]
    killed = docker_client.api.exec_create(info.container_id, ["sh", "-c", f"kill -9 {pid}"])
    docker_client.api.exec_start(killed["Id"])
    for attempt in range(3):
        out, _, res = await run(docker_manager, box_id, ["echo", f"still here {attempt}"])
        assert (out, res.exit_code) == (f"still here {attempt}\n".encode(), 0)
    assert conn.dead is not None
    assert (await docker_manager.get(box_id)).state == "running"


async def test_a_silent_supervisor_is_overruled_from_outside(
        docker_manager: DockerBoxManager, docker_client: docker.DockerClient, box_id: str,
        image: str) -> None:
    """A supervisor that stops answering (frozen here with SIGSTOP) cannot keep a command
    alive past its timeout: the kill falls back to docker exec's kill script on the pid file,
    and later commands use docker exec."""
    info = await docker_manager.create(box_id, BoxSpec(image=image))
    await run(docker_manager, box_id, ["true"])
    conn = _agent_conn(docker_manager, info.container_id)
    n = unique_sleep()
    handle = await docker_manager.exec(box_id, ["sh", "-c", f"sleep {n} & sleep {n}"],
                                       timeout=1.0)
    assert isinstance(handle, AgentExecHandle)
    api = docker_client.api
    api.exec_start(api.exec_create(info.container_id,
                                   ["sh", "-c", f"kill -STOP {conn.info['pid']}"]))
    try:
        res = await asyncio.wait_for(handle.wait(), timeout=60)
        assert res.timed_out and res.exit_code == 137 and conn.dead is not None
        assert f"sleep {n}" not in _docker_top(docker_client, info.container_id)
        out, _, res = await run(docker_manager, box_id, ["echo", "via docker exec"])
        assert (out, res.exit_code) == (b"via docker exec\n", 0)
    finally:
        api.exec_start(api.exec_create(info.container_id,
                                       ["sh", "-c", f"kill -CONT {conn.info['pid']}"]))


async def test_timeout_kills_the_whole_tree_as_docker_top_shows(
        docker_manager: DockerBoxManager, docker_client: docker.DockerClient, box_id: str,
        image: str) -> None:
    info = await docker_manager.create(box_id, BoxSpec(image=image))
    n = unique_sleep()
    script = f"(sleep {n} &); (sh -c 'sleep {n}' &) & sleep {n} & sleep {n}"
    handle = await docker_manager.exec(box_id, ["sh", "-c", script], timeout=1.0)
    assert isinstance(handle, AgentExecHandle)
    res = await asyncio.wait_for(handle.wait(), timeout=30)
    assert res.timed_out and res.exit_code == 137
    assert f"sleep {n}" not in _docker_top(docker_client, info.container_id)


async def test_many_concurrent_execs(docker_manager: DockerBoxManager, box_id: str,
                                     image: str) -> None:
    await docker_manager.create(box_id, BoxSpec(image=image, pids=512))
    results = await asyncio.gather(*(
        run(docker_manager, box_id, ["sh", "-c", f"sleep 0.2; echo {i}; exit {i % 7}"])
        for i in range(48)))
    for i, (out, _, res) in enumerate(results):
        assert (out, res.exit_code) == (f"{i}\n".encode(), i % 7)


async def test_large_output_is_flow_controlled(docker_manager: DockerBoxManager, box_id: str,
                                               image: str) -> None:
    info = await docker_manager.create(box_id, BoxSpec(image=image))
    total = 64 << 20
    handle = await docker_manager.exec(box_id, ["head", "-c", str(total), "/dev/zero"])
    assert isinstance(handle, AgentExecHandle)
    await asyncio.sleep(1.0)  # nobody reads: both ends stop at their bounds
    parked = sum(len(d) for _, d in handle.chan.out)
    assert parked <= af.WINDOW + af.MAX_OUT and handle.buffered == handle.max_buffered
    # A second command in the same box is not held up by the stalled one.
    out, _, res = await asyncio.wait_for(run(docker_manager, box_id, ["echo", "other"]), 20)
    assert (out, res.exit_code) == (b"other\n", 0)
    received, peak = 0, 0
    async for _stream, data in handle.chunks():
        received += len(data)
        peak = max(peak, sum(len(d) for _, d in handle.chan.out))
    assert received == total and (await handle.wait()).exit_code == 0
    assert peak <= af.WINDOW + af.MAX_OUT and handle.peak_buffered <= handle.max_buffered
    assert _agent_conn(docker_manager, info.container_id).dead is None


async def test_pty_session(docker_manager: DockerBoxManager, box_id: str, image: str) -> None:
    await docker_manager.create(box_id, BoxSpec(image=image))
    pty = await docker_manager.open_pty(box_id, ["sh"], rows=24, cols=80, env={"PS1": "$ "})
    assert isinstance(pty, AgentChannel)
    await _pty_session(pty)


async def test_a_pty_without_an_agent_uses_docker_tty_exec(
        docker_manager: DockerBoxManager, docker_client: docker.DockerClient, box_id: str,
        no_python_image: str) -> None:
    info = await docker_manager.create(box_id, BoxSpec(image=no_python_image))
    pty = await docker_manager.open_pty(box_id, ["sh"], rows=24, cols=80, env={"PS1": "$ "})
    assert isinstance(pty, DockerTtyChannel)
    await _pty_session(pty)
    n = unique_sleep()  # close() kills what runs on it, like the agent's kill
    pty = await docker_manager.open_pty(box_id, ["sh", "-c", f"sleep {n} & sleep {n}"])
    await asyncio.sleep(0.5)
    assert f"sleep {n}" in _docker_top(docker_client, info.container_id)
    await pty.close()
    assert f"sleep {n}" not in _docker_top(docker_client, info.container_id)


async def _pty_session(pty: Channel) -> None:
    """Type, resize (``stty size`` shows it), Ctrl-C a job, exit with a code."""
    await pty.write(b"stty size; echo mark-$((40+2))\n")
    assert b"24 80" in await _read_until(pty, b"mark-42")
    await pty.resize(50, 132)
    await pty.write(b"stty size; echo mark-$((40+3))\n")
    assert b"50 132" in await _read_until(pty, b"mark-43")
    await pty.write(b"sleep 600\n")
    await asyncio.sleep(0.5)
    await pty.write(b"\x03")  # Ctrl-C reaches the foreground job through the terminal
    await pty.write(b"echo status-$?\n")
    await _read_until(pty, b"status-130")
    await pty.write(b"exit 7\n")
    res = await asyncio.wait_for(pty.wait(), timeout=20)
    assert (res.exit_code, res.cancelled) == (7, False)


SERVER = """
import socket
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", 8000)); s.listen(5)
while True:
    c, _ = s.accept()
    req = b""
    while b"\\r\\n\\r\\n" not in req:
        req += c.recv(4096)
    body = b"hello from the box: " + req.split(b" ")[1]
    c.sendall(b"HTTP/1.0 200 OK\\r\\nContent-Length: %d\\r\\n\\r\\n" % len(body) + body)
    c.close()
"""


async def test_a_port_inside_a_box_without_network(docker_manager: DockerBoxManager,
                                                    box_id: str, image: str) -> None:
    info = await docker_manager.create(box_id, BoxSpec(image=image, network=False))
    assert not info.network
    server = await docker_manager.exec(box_id, ["python3", "-c", SERVER], timeout=120)
    try:
        for _ in range(100):
            try:
                port = await docker_manager.open_port(box_id, 8000)
                break
            except BoxError as exc:
                assert exc.code == "unavailable" and "8000" in exc.message
                await asyncio.sleep(0.1)
        else:
            raise AssertionError("the server in the box never listened")
        await port.write(b"GET /index.html HTTP/1.0\r\nHost: box\r\n\r\n")
        reply = b""
        while chunk := await asyncio.wait_for(port.read(), timeout=20):
            reply += chunk
        assert reply.startswith(b"HTTP/1.0 200 OK") and reply.endswith(b"hello from the box: "
                                                                       b"/index.html")
        assert (await port.wait()).exit_code == 0
        with pytest.raises(BoxError, match="cannot connect to 127.0.0.1:8001"):
            await docker_manager.open_port(box_id, 8001)
    finally:
        await server.kill()


async def test_a_new_spoke_process_reattaches_after_a_half_written_frame(
        docker_manager: DockerBoxManager, box_id: str, image: str) -> None:
    """What a spoke killed mid-write leaves: a frame cut short on the box's stdin. The next
    manager (a restarted spoke) attaches again, resyncs, and uses the agent."""
    info = await docker_manager.create(box_id, BoxSpec(image=image))
    api = await docker_manager._api()
    sock = await asyncio.to_thread(attach_socket, api, info.container_id)
    try:
        cut = af.encode(af.DATA, 99, b"z" * 40_000)[:20_000]
        await asyncio.to_thread(sock.sendall, af.encode_json(af.HELLO, 0, {}, magic=True) + cut)
    finally:
        sock.close()
    again = DockerBoxManager(docker_manager.spoke_name)
    try:
        handle = await again.exec(box_id, ["echo", "again"])
        assert isinstance(handle, AgentExecHandle)
        assert b"".join([d async for _, d in handle.chunks()]) == b"again\n"
        assert (await handle.wait()).exit_code == 0
    finally:
        await again.close()


def test_supervisor_ships_with_the_package() -> None:
    source = Path(supervisor.__file__).read_text()
    lib = Path(boxlib.__file__).read_text().replace("from __future__ import annotations\n", "")
    script = supervisor_source()
    assert "spoke.boxes" not in script.split('"""', 2)[2]  # no spokehub import in the box
    head, _, rest = source.partition("# >>> boxlib")
    assert script.startswith(head) and lib in script
    assert script.endswith(rest.partition("# <<< boxlib")[2])
    assert struct.calcsize(">BII") == af.HEADER.size


async def test_the_box_writing_to_its_main_process_stdout_is_logged_not_garbled(
        docker_manager: DockerBoxManager, box_id: str, image: str) -> None:
    """The supervisor's frames travel on the container's stderr; its stdout stays the box's
    main process output (``echo … > /proc/1/fd/1``, what the dashboard's logs show). Bytes a
    box forces onto the frame stream (``/proc/1/fd/2``) only cost it its agent: docker exec
    takes over."""
    info = await docker_manager.create(box_id, BoxSpec(image=image))
    _, _, res = await run(docker_manager, box_id,
                          ["sh", "-c", "echo said-by-the-main-process > /proc/1/fd/1"])
    assert res.exit_code == 0
    out, _, res = await run(docker_manager, box_id, ["echo", "still-the-agent"])
    assert (out, res.exit_code) == (b"still-the-agent\n", 0)
    assert _agent_conn(docker_manager, info.container_id).dead is None
    assert b"said-by-the-main-process\n" in await docker_manager.logs(box_id)
    with contextlib.suppress(BoxError):  # the agent carrying it may die under it
        await run(docker_manager, box_id, ["sh", "-c", "printf 'garbage\\377' > /proc/1/fd/2"])
    for _ in range(3):  # the next commands work, through docker exec if need be
        out, _, res = await run(docker_manager, box_id, ["echo", "after"])
        assert (out, res.exit_code) == (b"after\n", 0)
