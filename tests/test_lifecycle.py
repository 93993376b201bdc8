"""Process lifecycle of ``hub serve`` and ``spoke run|join`` (issue 15, items 4, 5, 6, 9, 11).

One process per data dir (a second one refuses with one line and disturbs nothing), a busy
port that leaves no data dir behind, a quiet stop with spokes told the hub is going away, and
a refused join that leaves the spoke's data dir as it was.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cluster import HUB, SPOKE, Hub, Spoke, free_port, wait_until
from tests.llm_server import Say
from tests.ws_helpers import ThreadedLLM, start_ws, wait_state


def _run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, timeout=timeout)


def _tree(path: Path) -> dict[str, bytes]:
    """Every file under ``path`` with its content: what "as it was" means for a data dir."""
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A port something else listens on, as another hub would."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


# ------------------------------------------------------------------ item 5: a busy port
def test_serve_on_a_busy_port_says_so_and_writes_nothing(tmp_path: Path, busy_port: int) -> None:
    data_dir = tmp_path / "new-hub"
    res = _run(HUB, "serve", "--data-dir", str(data_dir), "--port", str(busy_port))
    assert res.returncode != 0
    assert res.stderr == f"error: port {busy_port} on 127.0.0.1 is in use (another hub? `--port`)\n"
    assert res.stdout == ""
    assert not data_dir.exists(), "no admin.json, certificate or database for a hub that never ran"


# ------------------------------------------- item 4: one hub, one spoke per data dir
def test_second_serve_on_the_same_data_dir_refuses(hub: Hub) -> None:
    assert hub.proc is not None
    before = (hub.dir / "admin.json").read_bytes()
    res = _run(HUB, "serve", "--data-dir", str(hub.dir), "--port", str(free_port()))
    assert res.returncode != 0
    assert res.stderr.count("\n") == 1 and res.stderr.startswith("error: "), res.stderr
    assert f"pid {hub.proc.popen.pid}" in res.stderr and hub.url in res.stderr, res.stderr
    assert (hub.dir / "admin.json").read_bytes() == before
    assert hub.client().request("GET", "/healthz")["ok"]


def test_second_spoke_on_the_same_data_dir_refuses(hub: Hub, spoke: Spoke) -> None:
    assert spoke.proc is not None
    pid = spoke.proc.popen.pid
    before = _tree(spoke.dir)
    token = hub.token(spoke.name)
    for args in (["run", "--data-dir", str(spoke.dir)], ["join", "--data-dir", str(spoke.dir), token]):
        res = _run(SPOKE, *args)
        assert res.returncode == 2, (args, res.stderr)
        assert res.stderr.count("\n") == 1 and f"pid {pid}" in res.stderr, res.stderr
        assert "Traceback" not in res.stderr
    assert _tree(spoke.dir) == before
    assert hub.connected(spoke.name) and spoke.proc.alive()
    assert spoke.proc.output().count(f"spoke {spoke.name} connected to") == 1, "never knocked off"
    states = {t["id"]: t["state"] for t in hub.client().request("GET", "/api/tokens")}
    assert "valid" in states.values(), "the refused join did not spend its token"


# ------------------------------------------------------------- item 6: a quiet stop
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_stopping_a_hub_with_spokes_is_quiet(tmp_path: Path, hub: Hub, spokes: list[Spoke],
                                             sig: int) -> None:
    for _ in range(2):
        s = Spoke(tmp_path, hub)
        spokes.append(s)
        s.join()
    assert hub.proc is not None
    assert hub.proc.stop(sig) == 0
    log = hub.proc.output()
    assert "Traceback" not in log and " ERROR " not in log, log[-4000:]
    # Every link handler finished its bookkeeping before the store closed.
    with sqlite3.connect(hub.dir / "hub.db") as db:
        rows = db.execute("SELECT name, connected, disconnect_reason FROM spokes").fetchall()
    assert sorted(rows) == sorted((s.name, 0, "hub shutting down") for s in spokes), rows
    for s in spokes:
        assert s.proc is not None
        wait_until(lambda s=s: "the hub is shutting down" in s.proc.output(),  # type: ignore[misc]
                   what=f"{s.name} to log the hub going away")
        assert s.proc.alive() and "Traceback" not in s.proc.output()
    hub.start()  # same data dir and port: the spokes come back by themselves
    for s in spokes:
        s.wait_connected()
    for s in spokes:
        assert s.proc is not None
        out = s.proc.output()
        assert out.count("the hub is shutting down") == 1 and "Traceback" not in out, out


# ------------------------------------------------- item 11: a refused join undoes itself
def test_refused_join_leaves_the_data_dir_as_it_was(tmp_path: Path, hub: Hub,
                                                    spokes: list[Spoke]) -> None:
    first = Spoke(tmp_path, hub)
    spokes.append(first)
    used = hub.token(first.name)
    first.join(used)
    revoked = hub.cli_json("token", "create", "--name", "rv")
    hub.cli("token", "revoke", revoked["id"], check=True)
    expired = hub.token("ex", ttl="1")
    wait_until(lambda: all(t["state"] != "valid" for t in hub.client().request("GET", "/api/tokens")
                           if t["name"] == "ex"), what="the token to expire")
    cases = {"used": used, "revoked": revoked["token"], "expired": expired}
    for why, token in cases.items():
        fresh = tmp_path / f"fresh-{why}"
        res = _run(SPOKE, "join", "--data-dir", str(fresh), token)
        assert res.returncode == 3, (why, res.stderr)
        assert why in res.stderr and "Traceback" not in res.stderr, res.stderr
        assert not fresh.exists(), (why, sorted(p.name for p in fresh.rglob("*")))
    # A directory that was there before keeps exactly what it had (the operator's own files).
    kept = tmp_path / "kept"
    kept.mkdir()
    (kept / "README").write_text("mine\n")
    (kept / "options.json").write_text(json.dumps({"labels": ["gpu"]}))
    before = _tree(kept)
    res = _run(SPOKE, "join", "--data-dir", str(kept), "--label", "other", used)
    assert res.returncode == 3, res.stderr
    assert _tree(kept) == before


# ------------------------------------------------ item 9: no HTTP client chatter
def test_model_calls_do_not_log_each_http_request(model_hub: Hub, model_spoke: Spoke,
                                                  llm: ThreadedLLM) -> None:
    marker = llm.script("quiet", [Say("hello")])
    ws_id = start_ws(model_hub, f"{marker} say hello", spoke=model_spoke.name)
    wait_state(model_hub, ws_id, "idle")
    assert llm.requests(), "the model was called through the relay"
    assert model_spoke.proc is not None
    assert "HTTP Request:" not in model_spoke.proc.output(), model_spoke.proc.output()[-2000:]


def test_http_client_lines_are_quiet_by_default_and_shown_at_debug() -> None:
    code = (
        "import logging, sys\n"
        "from cli.common import setup_logging\n"
        "setup_logging(sys.argv[1])\n"
        "names = ['httpx', 'httpx2', 'httpcore', 'httpcore2.http11']\n"
        "print(all(logging.getLogger(n).isEnabledFor(logging.INFO) for n in names))\n"
    )
    env = {**os.environ}
    quiet = subprocess.run([sys.executable, "-c", code, "INFO"], capture_output=True,
                           text=True, env=env, cwd=Path(__file__).parent.parent)
    loud = subprocess.run([sys.executable, "-c", code, "DEBUG"], capture_output=True,
                          text=True, env=env, cwd=Path(__file__).parent.parent)
    assert quiet.stdout.strip() == "False", quiet.stderr
    assert loud.stdout.strip() == "True", loud.stderr
