"""Work that survives (issue 9): a spoke killed mid-workstream, a spoke stopping cleanly
mid-exec and mid-workstream, a connection cut or stalled mid-exec (a TCP proxy between spoke
and hub), and ``hub ws new`` across a move. Real hub and spoke processes, real Docker, the
scripted LLM as the only stand-in.
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from protocol.tokens import JoinToken
from tests.cluster import HUB, Hub, Spoke, wait_until
from tests.llm_server import Call, Echo, Hang
from tests.tcp_proxy import TcpProxy
from tests.ws_helpers import ThreadedLLM, start_ws, wait_state, write_hub_models, ws_events, ws_row

IMAGE = "spokehub-sandbox:bookworm"
LINES = "for i in $(seq 1 40); do echo line $i; sleep 0.1; done"


def _sleeping(box_id: str, marker: str) -> bool:
    (container,) = docker.from_env().containers.list(filters={"label": f"spokehub.box={box_id}"})
    top = container.top(ps_args="-eo pid,args")
    return any(marker in " ".join(map(str, row)) for row in top.get("Processes") or [])


@pytest.fixture
def proxied(tmp_path: Path, hub: Hub, spokes: list[Spoke]) -> Iterator[tuple[Spoke, TcpProxy]]:
    """A spoke whose connection to the hub goes through a TCP proxy (its token names the
    proxy; TLS passes through untouched, so the certificate pin still holds)."""
    proxy = TcpProxy(hub.port)
    token = JoinToken.decode(hub.token("far"))
    via = JoinToken(f"https://127.0.0.1:{proxy.port}", token.pin, token.token_id, token.secret,
                    token.name)
    spoke = Spoke(tmp_path, hub, name="far")
    spokes.append(spoke)
    spoke.join(via.encode())
    yield spoke, proxy
    proxy.close()


def _exec_lines(hub: Hub, box_id: str) -> subprocess.Popen[str]:
    return subprocess.Popen([HUB, "box", "exec", box_id, "--", "sh", "-c", LINES],
                            env={"SPOKEHUB_HUB_DIR": str(hub.dir), "PATH": str(Path(HUB).parent)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_an_exec_survives_a_cut_connection(hub: Hub, proxied: tuple[Spoke, TcpProxy]) -> None:
    """The connection is reset and refused for a few seconds mid-exec: the spoke keeps the
    command and its output, the hub re-attaches when the spoke is back, and the caller sees
    the whole output exactly once."""
    spoke, proxy = proxied
    box_id = hub.client().request("POST", "/api/boxes", {"spoke": spoke.name, "image": IMAGE})["id"]
    cli = _exec_lines(hub, box_id)
    wait_until(lambda: _sleeping(box_id, "seq 1 40"), what="the command to run")
    time.sleep(0.8)
    proxy.cut()
    wait_until(lambda: not hub.connected(spoke.name), what="the hub to see the link gone")
    time.sleep(2.0)
    proxy.resume()
    out, err = cli.communicate(timeout=120)
    assert cli.returncode == 0, err
    assert out == "".join(f"line {i}\n" for i in range(1, 41)), out
    assert proxy.connections >= 2, "it really reconnected"


def test_an_exec_rides_out_a_stalled_connection(hub: Hub, proxied: tuple[Spoke, TcpProxy]) -> None:
    """Bytes held for a few seconds (shorter than the stale cut-off): nothing reconnects,
    nothing is lost."""
    spoke, proxy = proxied
    box_id = hub.client().request("POST", "/api/boxes", {"spoke": spoke.name, "image": IMAGE})["id"]
    cli = _exec_lines(hub, box_id)
    wait_until(lambda: _sleeping(box_id, "seq 1 40"), what="the command to run")
    proxy.pause()
    time.sleep(3.0)
    proxy.resume()
    out, err = cli.communicate(timeout=120)
    assert cli.returncode == 0 and out.count("\n") == 40 and out.endswith("line 40\n"), err
    assert proxy.connections == 1


@pytest.fixture
def grace_hub(tmp_path: Path, sandbox_image: str, llm: ThreadedLLM) -> Iterator[Hub]:
    """A model hub whose lost spokes' work moves after 3 s (default 15 s)."""
    h = Hub(tmp_path)
    h.extra = ["--resume-grace", "3s"]
    write_hub_models(h.dir, llm)
    h.start()
    yield h
    h.stop()


def test_a_killed_spoke_s_workstream_finishes_on_another_and_leaks_no_box(
        tmp_path: Path, grace_hub: Hub, spokes: list[Spoke], llm: ThreadedLLM) -> None:
    hub = grace_hub
    first = Spoke(tmp_path, hub, name="first")
    spokes.append(first)
    first.join()
    marker = llm.script("kill9", [Call("bash", {"command": "echo should-not-run"}),
                                  Echo("after the move: {last_tool_result}")])
    ws_id = start_ws(hub, f"{marker} go")
    row = wait_state(hub, ws_id, "attention")
    old_box = row["box_id"]
    second = Spoke(tmp_path, hub, name="second")
    spokes.append(second)
    second.join()
    assert first.proc is not None
    first.proc.stop(signal.SIGKILL)
    started = time.monotonic()
    wait_until(lambda: (hub.spoke_row("first") or {}).get("state") == "lost", timeout=30,
               what="the hub to call the killed spoke lost")
    print(f"lost after {time.monotonic() - started:.1f}s")
    done = wait_state(hub, ws_id, "idle", timeout=90)
    assert done["spoke"] == "second" and done["box_id"] != old_box
    answer = [e for e in ws_events(hub, ws_id) if e["kind"] == "assistant_message"][-1]
    assert "after the move:" in answer["data"]["text"] and "interrupted" in answer["data"]["text"]
    # The killed spoke comes back: the box it held for the moved workstream is reaped.
    assert docker.from_env().containers.list(all=True, filters={"label": f"spokehub.box={old_box}"})
    first.run()
    wait_until(lambda: not docker.from_env().containers.list(
        all=True, filters={"label": f"spokehub.box={old_box}"}), what="the old box to be reaped")


def test_a_clean_stop_hands_back_its_workstream_and_finishes_its_exec(
        tmp_path: Path, grace_hub: Hub, spokes: list[Spoke], llm: ThreadedLLM) -> None:
    hub = grace_hub
    leaving = Spoke(tmp_path, hub, name="leaving")
    spokes.append(leaving)
    leaving.join()
    marker = llm.script("leave", [Hang("thinking…"), Echo("resumed elsewhere")])
    ws_id = start_ws(hub, f"{marker} go")
    wait_until(lambda: llm.hanging == 1, what="the model to be mid-answer")
    staying = Spoke(tmp_path, hub, name="staying")
    spokes.append(staying)
    staying.join()
    box_id = hub.client().request("POST", "/api/boxes", {"spoke": "leaving", "image": IMAGE})["id"]
    cli = subprocess.Popen([HUB, "box", "exec", box_id, "--", "sh", "-c", "sleep 2; echo finished"],
                           env={"SPOKEHUB_HUB_DIR": str(hub.dir), "PATH": str(Path(HUB).parent)},
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_until(lambda: _sleeping(box_id, "sleep 2"), what="the exec to start")
    assert leaving.proc is not None
    leaving.proc.popen.send_signal(signal.SIGTERM)
    out, err = cli.communicate(timeout=60)
    assert cli.returncode == 0 and out == "finished\n", err  # drained, not killed
    assert leaving.proc.wait(60) == 0
    row = wait_state(hub, ws_id, "idle", timeout=60)
    assert row["spoke"] == "staying"
    assert (hub.spoke_row("leaving") or {}).get("state") == "left"
    llm.release()


def test_hub_ws_new_waits_across_a_move_or_ends_with_the_reason(
        tmp_path: Path, grace_hub: Hub, spokes: list[Spoke], llm: ThreadedLLM) -> None:
    hub = grace_hub
    env = {"SPOKEHUB_HUB_DIR": str(hub.dir), "PATH": str(Path(HUB).parent)}
    doomed = Spoke(tmp_path, hub, name="doomed")
    spokes.append(doomed)
    doomed.join()
    marker = llm.script("wait", [Hang("…"), Echo("answered after the move")])
    waiting = subprocess.Popen([HUB, "ws", "new", f"{marker} go"], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_until(lambda: llm.hanging == 1, what="the model to be mid-answer")
    other = Spoke(tmp_path, hub, name="other")
    spokes.append(other)
    other.join()
    assert doomed.proc is not None
    doomed.proc.stop(signal.SIGKILL)
    llm.release()
    out, err = waiting.communicate(timeout=120)
    assert waiting.returncode == 0 and "answered after the move" in out, (out, err)

    marker = llm.script("give-up", [Hang("…")])
    other_ws = subprocess.Popen([HUB, "ws", "new", "--on-loss", "interrupt", f"{marker} go"],
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_until(lambda: llm.hanging == 1, what="the model to be mid-answer again")
    assert other.proc is not None
    other.proc.stop(signal.SIGKILL)
    out, err = other_ws.communicate(timeout=120)
    assert other_ws.returncode != 0
    assert "spoke other was lost: the turn was interrupted" in err, (out, err)
    llm.release()
    ws_ids = [w["id"] for w in hub.client().request("GET", "/api/ws")]
    assert any(ws_row(hub, w)["on_loss"] == "interrupt" for w in ws_ids)
