"""PTY sessions through the hub (issue 14).

First over the memory cluster (real hub services and spoke session over the in-memory pipe,
the fake manager running the shell on a real local PTY); then the real thing: tmux drives
``hub box exec -it`` against real hub and spoke processes over wss and the Docker manager,
reading the screen with ``tmux capture-pane``.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import uuid
from pathlib import Path

import aiohttp
import pytest
from yarl import URL

from hub.channels import ChannelService, ChannelSession
from protocol import verbs as v
from protocol.errors import ErrorCode, RemoteError
from protocol.tokens import hash_secret, new_id
from tests.cluster import Hub, wait_until
from tests.hub.channel_app import ChannelHub
from tests.hub.memory_cluster import IMAGE, MemoryCluster

DOCKER_IMAGE = "spokehub-sandbox:bookworm"


async def _read_until(session: ChannelSession, out: list[bytes], needle: bytes) -> bytes:
    """Output until ``needle`` shows (the wait bounded only against a hang)."""
    stream = session.output()

    async def scan() -> bytes:
        while needle not in b"".join(out):
            out.append(await anext(stream))
        return b"".join(out)

    return await asyncio.wait_for(scan(), 30)


async def test_a_pty_session_types_resizes_and_returns_the_exit_code(tmp_path: Path) -> None:
    async with MemoryCluster(tmp_path) as hub:
        await hub.join("alpha")
        box = await hub.boxes.create("alpha", {"image": IMAGE})
        channels = ChannelService(hub.boxes)
        session = await channels.open_pty(box["id"], ["/bin/sh"], rows=30, cols=100)
        out: list[bytes] = []
        await session.write(b"stty size; tty\n")
        seen = await _read_until(session, out, b"30 100")
        assert b"/dev/pts/" in await _read_until(session, out, b"/dev/pts/") or b"/dev/pts" in seen
        await session.resize(40, 132)
        await session.write(b"stty size\n")
        await _read_until(session, out, b"40 132")
        # Ctrl-C is a byte on the terminal: the shell's foreground job gets SIGINT.
        await session.write(b"sleep 300; echo after-sleep-$?\n")
        await asyncio.sleep(0.2)
        await session.write(b"\x03")
        await session.write(b"echo done-$((40+2))\n")
        await _read_until(session, out, b"done-42")
        await session.write(b"exit 3\n")
        async for _ in session.output():
            pass
        assert (await session.result()).exit_code == 3


async def test_closing_a_session_kills_its_program_and_input_then_is_not_found(
        tmp_path: Path) -> None:
    async with MemoryCluster(tmp_path) as hub:
        spoke = await hub.join("alpha")
        box = await hub.boxes.create("alpha", {"image": IMAGE})
        channels = ChannelService(hub.boxes)
        marker = f"pty-{uuid.uuid4().hex[:8]}"
        session = await channels.open_pty(box["id"], ["sh", "-c", f"sleep 300; echo {marker}"])
        pgrep = ["pgrep", "-f", marker]
        assert (await asyncio.to_thread(subprocess.run, pgrep)).returncode == 0
        await session.close()
        await hub.until(lambda: not spoke.session.rt.dispatcher.channels._open, "channel closed")
        assert (await asyncio.to_thread(subprocess.run, pgrep)).returncode == 1  # none left
        with pytest.raises(RemoteError) as err:
            await session.write(b"x")
        assert err.value.code is ErrorCode.NOT_FOUND and "no open channel" in err.value.message


@pytest.mark.parametrize("how", ["link lost", "box destroyed"])
async def test_a_lost_link_or_a_destroyed_box_ends_the_program(tmp_path: Path, how: str) -> None:
    async with MemoryCluster(tmp_path) as hub:
        spoke = await hub.join("alpha")
        box = await hub.boxes.create("alpha", {"image": IMAGE})
        marker = f"pty-{uuid.uuid4().hex[:8]}"
        session = await ChannelService(hub.boxes).open_pty(
            box["id"], ["sh", "-c", f"sleep 300; echo {marker}"])
        pgrep = ["pgrep", "-f", marker]
        assert (await asyncio.to_thread(subprocess.run, pgrep)).returncode == 0
        if how == "link lost":
            await hub.drop("alpha")
        else:
            await hub.boxes.destroy(box["id"])
        await hub.until(lambda: not spoke.session.rt.dispatcher.channels._open, "channel closed")
        assert (await asyncio.to_thread(subprocess.run, pgrep)).returncode == 1  # none left
        if how == "box destroyed":  # the session ends with the program's outcome
            async for _ in session.output():
                pass
            assert (await session.result()).exit_code != 0


async def test_pty_refusals_are_typed(tmp_path: Path) -> None:
    async with MemoryCluster(tmp_path) as hub:
        await hub.join("alpha")
        box = await hub.boxes.create("alpha", {"image": IMAGE})
        channels = ChannelService(hub.boxes)
        with pytest.raises(RemoteError) as err:
            await channels.open_pty(new_id("bx"), ["sh"])
        assert err.value.code is ErrorCode.NOT_FOUND
        with pytest.raises(RemoteError) as err:
            await channels.open_pty(box["id"], ["sh"], rows=0)
        assert err.value.code is ErrorCode.INVALID and "rows" in err.value.message
        with pytest.raises(RemoteError) as err:
            await channels.open_pty(box["id"], ["sh"], workdir="/workspace/missing")
        assert err.value.code is ErrorCode.INVALID
        await hub.boxes.pause(box["id"])
        with pytest.raises(RemoteError) as err:
            await channels.open_pty(box["id"], ["sh"])
        assert err.value.code is ErrorCode.BUSY and "paused" in err.value.message
        link = hub.registry.live("alpha")
        assert link is not None
        with pytest.raises(RemoteError) as err:
            await link.call(v.BOX_INPUT, v.ChannelInput(channel_id=new_id("ch"), data="eA=="))
        assert err.value.code is ErrorCode.NOT_FOUND


async def test_the_pty_websocket_speaks_bytes_and_json(tmp_path: Path) -> None:
    """What the web page will use: binary terminal bytes, JSON resize/exit/error messages."""
    async with ChannelHub(tmp_path) as hub, aiohttp.ClientSession() as http:
        auth = {"Authorization": f"Bearer {hub.key}"}
        url = f"{hub.url}/api/boxes/{hub.box}/pty"
        async with http.get(url, headers=auth) as plain:  # not an upgrade: a clear 400
            assert plain.status == 400 and "WebSocket" in (await plain.json())["error"]["message"]
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await http.ws_connect(f"{hub.url}/api/boxes/bx_0123456789abcdef/pty", headers=auth)
        assert refused.value.status == 404
        with pytest.raises(aiohttp.WSServerHandshakeError) as unauthenticated:
            await http.ws_connect(url)
        assert unauthenticated.value.status == 401
        params = [("cmd", "sh"), ("cmd", "-c"), ("cmd", "read line; stty size; exit 5"),
                  ("rows", "20"), ("cols", "70")]
        async with http.ws_connect(url, headers=auth, params=params) as ws:
            await ws.send_str(json.dumps({"type": "resize", "rows": 33, "cols": 77}))
            await ws.send_str(json.dumps({"type": "bogus"}))
            error = json.loads(await ws.receive_str())
            assert error["type"] == "error" and error["code"] == "invalid"
            await ws.send_bytes(b"go\r")
            output, exit_message = b"", None
            async for msg in ws:
                if msg.type is aiohttp.WSMsgType.BINARY:
                    output += msg.data
                elif msg.type is aiohttp.WSMsgType.TEXT:
                    exit_message = json.loads(msg.data)
        assert b"33 77" in output
        assert exit_message == {"type": "exit", "exit_code": 5, "timed_out": False,
                                "cancelled": False}


async def test_closing_the_websocket_kills_the_program(tmp_path: Path) -> None:
    async with ChannelHub(tmp_path) as hub, aiohttp.ClientSession() as http:
        marker = f"pty-{uuid.uuid4().hex[:8]}"
        params = [("cmd", "sh"), ("cmd", "-c"), ("cmd", f"sleep 300; echo {marker}")]
        pgrep = ["pgrep", "-f", marker]
        async with http.ws_connect(f"{hub.url}/api/boxes/{hub.box}/pty", params=params,
                                   headers={"Authorization": f"Bearer {hub.key}"}):
            assert (await asyncio.to_thread(subprocess.run, pgrep)).returncode == 0
        channels = hub.cluster.spokes["alpha"].session.rt.dispatcher.channels
        await hub.cluster.until(lambda: not channels._open, "the channel to close")
        assert (await asyncio.to_thread(subprocess.run, pgrep)).returncode == 1  # none left


async def test_a_browser_session_opens_a_terminal_only_from_the_hubs_origin(
        tmp_path: Path) -> None:
    """The session cookie works for the WebSocket (the web page's way), but a handshake whose
    Origin is another site is refused: a foreign page cannot open a terminal as the user."""
    async with ChannelHub(tmp_path) as hub:
        store = hub.cluster.store
        await store.add_user("ada", "x", "operator")
        cookie = new_id("sess")
        await store.add_session(hash_secret(cookie), "ada", "csrf", 3600, "127.0.0.1")
        jar = aiohttp.CookieJar(unsafe=True)
        jar.update_cookies({"spokehub_session": cookie}, URL(hub.url))
        url = f"{hub.url}/api/boxes/{hub.box}/pty"
        async with aiohttp.ClientSession(cookie_jar=jar) as http:
            with pytest.raises(aiohttp.WSServerHandshakeError) as foreign:
                await http.ws_connect(url, origin="https://evil.example")
            assert foreign.value.status == 403
            async with http.ws_connect(url, origin=hub.url,
                                       params=[("cmd", "sh"), ("cmd", "-c"), ("cmd", "exit 7")]) as ws:
                messages = [msg async for msg in ws if msg.type is aiohttp.WSMsgType.TEXT]
            assert json.loads(messages[-1].data)["exit_code"] == 7


# ------------------------------------------------------------------ the real CLI, in tmux
class Tmux:
    """A tmux server of its own (``-L``), one window running a command."""

    def __init__(self, tmp: Path) -> None:
        self.socket = f"spokehub-{uuid.uuid4().hex[:8]}"
        self.tmp = tmp

    def run(self, *args: str) -> str:
        res = subprocess.run(["tmux", "-L", self.socket, *args], capture_output=True, text=True,
                             timeout=30)
        assert res.returncode == 0, res.stderr
        return res.stdout

    def screen(self) -> str:
        return self.run("capture-pane", "-p", "-t", "main")

    def wait_for(self, text: str) -> str:
        try:
            return str(wait_until(lambda: text in self.screen() and self.screen(),
                                  what=f"{text!r} on the screen"))
        except AssertionError as err:
            raise AssertionError(f"{err}; the screen:\n{self.screen()}") from None

    def type(self, *keys: str) -> None:
        self.run("send-keys", "-t", "main", *keys)

    def kill(self) -> None:
        subprocess.run(["tmux", "-L", self.socket, "kill-server"], capture_output=True)


def _hub_bin() -> str:
    return shutil.which("hub") or str(Path(".venv/bin/hub").resolve())


def _drive_a_shell(tmp: Path, hub_dir: Path, box: str) -> None:
    """In a 100x30 tmux window: ``hub box exec -it BOX -- /bin/sh``; type, read the screen,
    resize the window and see ``stty size`` follow, Ctrl-C a ``sleep``, ``exit 3``."""
    tmux = Tmux(tmp)
    status = tmp / f"status-{tmux.socket}"
    command = (f"SPOKEHUB_HUB_DIR={hub_dir} {_hub_bin()} box exec -it {box} -- /bin/sh; "
               f"echo $? > {status}; stty -a > {status}.stty; sleep 600")
    tmux.run("-f", "/dev/null", "new-session", "-d", "-s", "main", "-x", "100", "-y", "30",
             command)
    tmux.run("set-option", "-g", "status", "off")
    try:
        # Keys typed before the CLI put the terminal in raw mode would be flushed: wait for
        # the shell's prompt first.
        wait_until(lambda: re.search(r"[$#] ?$", tmux.screen(), re.M), what="the prompt")
        tmux.type("stty size", "Enter")
        tmux.wait_for("30 100")
        tmux.run("resize-window", "-t", "main", "-x", "120", "-y", "40")
        tmux.type("stty size", "Enter")
        tmux.wait_for("40 120")
        tmux.type("sleep 300; echo after-$?", "Enter")
        tmux.type("C-c")  # the sleep ends at once, with SIGINT: the shell's ';' list is cut
        tmux.type("echo typed-$((6*7))", "Enter")
        screen = tmux.wait_for("typed-42")
        assert "after-" not in screen.replace("echo after-", "")
        tmux.type("exit 3", "Enter")
        wait_until(lambda: status.exists() and status.read_text().strip(), what="the CLI's exit")
        assert status.read_text().strip() == "3"
        # The local terminal was restored from raw mode: echo and canonical input are back.
        settings = wait_until(lambda: Path(f"{status}.stty").exists()
                              and Path(f"{status}.stty").read_text(), what="stty -a")
        assert " icanon" in settings and " echo" in settings
    finally:
        tmux.kill()


async def test_exec_i_pipes_stdin_to_the_program_and_t_needs_a_terminal(tmp_path: Path) -> None:
    async with ChannelHub(tmp_path) as hub:
        env = {**os.environ, "SPOKEHUB_HUB_DIR": str(hub.dir)}
        piped = await asyncio.to_thread(
            subprocess.run, [_hub_bin(), "box", "exec", "-i", hub.box, "--", "sh", "-c",
                             "read a; read b; echo got-$a-$b; exit 4"],
            input=b"one\ntwo\n", capture_output=True, env=env, timeout=60)
        assert piped.returncode == 4 and b"got-one-two" in piped.stdout, piped.stderr
        no_tty = await asyncio.to_thread(
            subprocess.run, [_hub_bin(), "box", "exec", "-it", hub.box, "--", "sh"],
            stdin=subprocess.DEVNULL, capture_output=True, text=True, env=env, timeout=60)
        assert no_tty.returncode == 1 and "the input device is not a TTY" in no_tty.stderr


async def test_hub_box_exec_it_in_tmux_over_the_fake_manager(tmp_path: Path) -> None:
    if shutil.which("tmux") is None:
        pytest.skip("!!! SKIPPING: tmux is not installed (deploy/install-deps.sh installs it)")
    async with ChannelHub(tmp_path) as hub:
        await asyncio.to_thread(_drive_a_shell, tmp_path, hub.dir, hub.box)


def test_hub_box_exec_it_in_tmux(hub: Hub, spoke: object, tmp_path: Path) -> None:
    """The same against real hub and spoke processes over wss and the Docker manager."""
    if shutil.which("tmux") is None:
        pytest.skip("!!! SKIPPING: tmux is not installed (deploy/install-deps.sh installs it)")
    box = hub.cli_json("box", "create", "--spoke", spoke.name, "--image", DOCKER_IMAGE)["id"]  # type: ignore[attr-defined]
    # Ctrl-C can only interrupt a program that does not ignore SIGINT: commands the in-box
    # supervisor starts must not inherit an ignored SIGINT (SigIgn bit 2 in /proc/self/status).
    status = hub.cli("box", "exec", box, "--", "grep", "SigIgn", "/proc/self/status").stdout
    assert status.strip() and not int(status.split()[-1], 16) & 0b10, status
    _drive_a_shell(tmp_path, hub.dir, box)
