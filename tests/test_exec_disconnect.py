"""An exec whose caller goes away dies with it (issue 8, item 1).

Ctrl-C on ``hub box exec BX -- sleep 45`` used to print "Aborted!" while ``sleep`` kept running
in the box; enough of them filled the spoke's exec slots for good. Now the hub notices the
HTTP client is gone, cancels the call, and the spoke kills the process tree. The MCP ``exec``
tool does the same when its client disconnects.
"""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import time

import docker

from tests.cluster import HUB, Hub, Spoke, wait_until


def _box(hub: Hub, spoke: Spoke) -> tuple[str, docker.models.containers.Container]:
    box_id = hub.cli_json("box", "create", "--spoke", spoke.name, "--image",
                          "spokehub-sandbox:bookworm")["id"]
    (container,) = docker.from_env().containers.list(filters={"label": f"spokehub.box={box_id}"})
    return box_id, container


def _not_sleeping(container: docker.models.containers.Container, needle: str) -> bool:
    return not _sleeping(container, needle)


def _sleeping(container: docker.models.containers.Container, marker: str) -> bool:
    top = container.top(ps_args="-eo pid,args")
    return any(marker in " ".join(map(str, row)) for row in top.get("Processes") or [])


def test_ctrl_c_on_box_exec_kills_the_command_in_the_box(hub: Hub, spoke: Spoke) -> None:
    box_id, container = _box(hub, spoke)
    env = {**os.environ, "SPOKEHUB_HUB_DIR": str(hub.dir)}
    for sig in (signal.SIGINT, signal.SIGKILL):
        marker = f"4{sig.value}.5"  # a distinct sleep per round: `sleep 42.5`, `sleep 49.5`
        cli = subprocess.Popen([HUB, "box", "exec", box_id, "--", "sleep", marker], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        wait_until(functools.partial(_sleeping, container, f"sleep {marker}"),
                   what="the sleep to start")
        cli.send_signal(sig)
        cli.wait(30)
        started = time.monotonic()
        wait_until(functools.partial(_not_sleeping, container, f"sleep {marker}"), timeout=20,
                   what=f"the sleep to be killed after {sig.name} of its caller")
        print(f"{sig.name}: killed {time.monotonic() - started:.2f}s after the caller went away")
    # Nothing is left holding the spoke's exec slots: a new exec runs at once.
    res = hub.cli("box", "exec", box_id, "--", "echo", "still-fine")
    assert res.returncode == 0 and res.stdout == "still-fine\n", res.stderr


MCP_CALLER = """
import asyncio, json, sys
import httpx2
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client
from cli.mcp_command import pinned_context

async def main(url, port, pin, key, box):
    ctx = await pinned_context("127.0.0.1", int(port), pin)
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx2.AsyncClient(verify=ctx, headers=headers, timeout=httpx2.Timeout(30, read=300)) as http:
        async with streamable_http_client(url + "/mcp", http_client=http) as (read, write):
            async with ClientSession(read, write) as session:
                await session.initialize()
                print("calling", flush=True)
                await session.call_tool("exec", {"box": box, "cmd": ["sleep", "47.5"], "timeout_s": 120})

asyncio.run(main(*sys.argv[1:]))
"""


def test_an_mcp_exec_dies_when_its_client_disconnects(hub: Hub, spoke: Spoke) -> None:
    import json
    import sys

    box_id, container = _box(hub, spoke)
    doc = json.loads((hub.dir / "admin.json").read_text())
    caller = subprocess.Popen([sys.executable, "-c", MCP_CALLER, hub.url, str(hub.port), doc["pin"],
                               doc["api_key"], box_id], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    wait_until(lambda: _sleeping(container, "sleep 47.5"), what="the MCP exec to start")
    caller.kill()  # no goodbye, no cancel notification: the connection just goes
    caller.wait(30)
    started = time.monotonic()
    wait_until(lambda: not _sleeping(container, "sleep 47.5"), timeout=20,
               what="the MCP exec to be killed after its client disconnected")
    print(f"MCP: killed {time.monotonic() - started:.2f}s after the client went away")


def _count_sleeping(container: docker.models.containers.Container, marker: str) -> int:
    top = container.top(ps_args="-eo pid,args")
    return sum(1 for row in top.get("Processes") or [] if marker in " ".join(map(str, row)))


def test_many_abandoned_execs_free_the_spoke_and_control_goes_on(hub: Hub, spoke: Spoke) -> None:
    """The review's case: killed clients left their processes, and enough of them filled the
    spoke's exec slots for good. 40 callers in flight (control calls still answered), then
    all killed: every process goes, and the next exec runs."""
    box_id, container = _box(hub, spoke)
    env = {**os.environ, "SPOKEHUB_HUB_DIR": str(hub.dir)}
    callers = [subprocess.Popen([HUB, "box", "exec", box_id, "--", "sleep", "77.5"], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
               for _ in range(40)]
    try:
        wait_until(lambda: _count_sleeping(container, "sleep 77.5") == 40, timeout=120,
                   what="40 execs running")
        client = hub.client()  # work in flight does not starve cheap control calls
        assert client.request("POST", f"/api/spokes/{spoke.name}/ping",
                              {"count": 200, "concurrency": 16})["count"] == 200
        assert client.request("GET", f"/api/boxes/{box_id}/stats")["pids"] >= 40
        assert [b["id"] for b in client.request("GET", "/api/boxes")] == [box_id]
    finally:
        for caller in callers:
            caller.kill()
        for caller in callers:
            caller.wait(30)
    wait_until(lambda: _count_sleeping(container, "sleep 77.5") == 0, timeout=30,
               what="every abandoned exec killed")
    res = hub.cli("box", "exec", box_id, "--", "echo", "free again")
    assert res.returncode == 0 and res.stdout == "free again\n", res.stderr


def _abandon(hub: Hub, request: bytes, read: int) -> None:
    """Send ``request`` on a raw TLS connection, read ``read`` bytes of the answer (0: none),
    then drop the connection without a goodbye."""
    import socket
    import ssl
    import struct

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    raw = socket.create_connection(("127.0.0.1", hub.port), timeout=30)
    tls = ctx.wrap_socket(raw, server_hostname="127.0.0.1")
    tls.sendall(request)
    got = b""
    while len(got) < read:
        chunk = tls.recv(65536)
        assert chunk, got[:300]
        got += chunk
    tls.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    tls.close()  # a reset: no TLS goodbye, no HTTP end


def test_abandoned_file_transfers_give_their_slots_back(hub: Hub, spoke: Spoke) -> None:
    """Downloads and uploads whose client goes mid-way end on the spoke too: more of them than
    the spoke's transfer slots (8) are abandoned, and a transfer still goes through after."""
    import io
    import json as json_

    box_id, _container = _box(hub, spoke)
    assert hub.cli("box", "exec", box_id, "--", "sh", "-c",
                   "head -c 30000000 /dev/urandom > big").returncode == 0
    key = json_.loads((hub.dir / "admin.json").read_text())["api_key"]
    auth = f"Authorization: Bearer {key}\r\nHost: 127.0.0.1\r\n".encode()
    for _ in range(10):
        _abandon(hub, b"GET /api/boxes/" + box_id.encode() + b"/file?path=big HTTP/1.1\r\n"
                 + auth + b"\r\n", read=200_000)
        _abandon(hub, b"PUT /api/boxes/" + box_id.encode() + b"/file?path=part HTTP/1.1\r\n"
                 + auth + b"Content-Length: 30000000\r\n\r\n" + b"x" * 1_000_000, read=0)
    client = hub.client()

    def transfers_work() -> bool:
        try:
            client.put_file(box_id, "small", io.BytesIO(b"fine"), 4)
            return b"".join(client.get_file(box_id, "small")) == b"fine"
        except Exception:  # busy while the abandoned ones are being ended
            return False

    wait_until(transfers_work, timeout=30, what="a transfer after 20 abandoned ones")
