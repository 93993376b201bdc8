"""``hub up``: the one-command start — a hub plus a local spoke on embedded defaults.

It is the first thing a new user runs, so it must never make things worse: a second ``hub up``
on the same data dirs says what already runs there (and how to use and stop it) and starts
nothing; a busy port is one line, not a traceback; and Ctrl-C (or ``hub down`` from another
terminal) stops both processes quietly and says what is left running, since boxes outlive it.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import click

from cli.common import data_dir_option, fail
from cli.down_command import env_prefix, local_spoke_name, report_leftovers, say, spoke_dir_option
from cli.runlock import HUB_LOCK, SPOKE_LOCK, holder

if TYPE_CHECKING:
    from client.http_client import HubClient

STOP_TIMEOUT_S = 20.0


@click.command()
@data_dir_option("hub", "SPOKEHUB_HUB_DIR")
@spoke_dir_option
@click.option("--port", default=8443, show_default=True, type=click.IntRange(1, 65535),
              help="Port of the hub (127.0.0.1 only).")
@click.option("--spoke-name", default="local", show_default=True,
              help="Name the local spoke enrolls as (the first time).")
@click.option("-v", "--verbose", is_flag=True,
              help="Debug logging from the hub and spoke (HTTP requests, protocol frames).")
def up(data_dir: Path, spoke_dir: Path, port: int, spoke_name: str, verbose: bool) -> None:
    """Start a hub and a local spoke (building the sandbox image if missing) and say how to use them."""
    prefix = env_prefix(data_dir, spoke_dir)
    _refuse_if_running(data_dir, spoke_dir, prefix)
    _check_port(port)
    # SIGTERM (e.g. from a service manager) stops us the way Ctrl-C does.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    procs: list[subprocess.Popen[bytes]] = []
    code = 0
    try:
        from spoke.boxes.image import DEFAULT_IMAGE

        build_sandbox_image(DEFAULT_IMAGE)
        code = _run(data_dir, spoke_dir, port, spoke_name, verbose, prefix, procs)
    except KeyboardInterrupt:
        code = 0 if procs else 130  # stopping a running cluster is the normal way out
    finally:
        _stop(procs)
    if procs:
        say("stopped the hub and spoke " + (local_spoke_name(spoke_dir) or spoke_name))
        report_leftovers(local_spoke_name(spoke_dir) or spoke_name, [], prefix)
    sys.exit(code)


def _refuse_if_running(data_dir: Path, spoke_dir: Path, prefix: str) -> None:
    """Never disturb a running cluster: a second hub would fight for the data dir and a second
    spoke with the same identity would knock the first one's connection off."""
    hub = holder(data_dir, HUB_LOCK)
    spoke = holder(spoke_dir, SPOKE_LOCK)
    if hub is None and spoke is None:
        return
    say("spokehub is already running on these data dirs; this `hub up` started nothing:")
    if hub is not None:
        say(f"  hub at {hub.url} (pid {hub.pid}, data dir {data_dir})")
    if spoke is not None:
        say(f"  spoke {spoke.name} (pid {spoke.pid}, data dir {spoke_dir})")
    if hub is not None:
        say(f"use it from any terminal:  {prefix}hub spoke list")
    say(f"stop it:  {prefix}hub down   (or Ctrl-C where it runs)")
    sys.exit(1)


def _check_port(port: int) -> None:
    from hub.app import ListenError, bind_listener

    try:
        bind_listener("127.0.0.1", port).close()
    except ListenError as err:
        fail(str(err))


def build_sandbox_image(image: str) -> None:
    """Build ``image`` if missing, showing progress: a live status line in a terminal, and
    every progress line as plain text otherwise (``make up > log``, CI), so a log shows the
    build moving instead of a minute of silence."""
    from rich.console import Console

    from spoke.boxes.image import SandboxImageError, ensure_sandbox_image, image_present

    console = Console(stderr=True)
    try:
        if image_present(image):
            return
        what = f"building sandbox image {image} (debootstrap, about a minute)…"
        if console.is_terminal:
            with console.status(what) as status:
                ensure_sandbox_image(
                    image, progress=lambda line: status.update(f"[bold]{image}[/]: {line}")
                )
        else:
            say(what)
            ensure_sandbox_image(image, progress=lambda line: say(f"{image}: {line}"))
    except SandboxImageError as err:
        fail(str(err))
    console.print(f"[green]✓[/] built {image}")


def _run(data_dir: Path, spoke_dir: Path, port: int, spoke_name: str, verbose: bool,
         prefix: str, procs: list[subprocess.Popen[bytes]]) -> int:
    """Start both processes, print how to use them, and wait; the exit status of ``hub up``."""

    exe = [sys.executable, "-m"]
    log = ["--log-level", "DEBUG"] if verbose else []
    hub = subprocess.Popen(
        [*exe, "cli.hub_cli", "serve", "--data-dir", str(data_dir), "--port", str(port), *log]
    )
    procs.append(hub)
    client = _wait_for_hub(data_dir, hub)
    state_file = spoke_dir / "spoke.json"
    enrolled = state_file.exists() and json.loads(state_file.read_text()).get("enrolled")
    if enrolled:
        spoke_cmd = [*exe, "cli.spoke_cli", "run", "--data-dir", str(spoke_dir), *log]
    else:
        if any(
            s["name"] == spoke_name and not s["revoked"]
            for s in client.request("GET", "/api/spokes")
        ):
            client.request("DELETE", f"/api/spokes/{spoke_name}")
        token = client.request("POST", "/api/tokens", {"name": spoke_name, "ttl": "10m"})["token"]
        spoke_cmd = [*exe, "cli.spoke_cli", "join", "--data-dir", str(spoke_dir), *log, token]
    spoke = subprocess.Popen(spoke_cmd)
    procs.insert(0, spoke)  # stopped first, so it leaves the hub cleanly
    name = _wait_for_spoke(client, spoke_dir, spoke_name, spoke)
    click.echo(usage_text(client.url, name, data_dir, prefix), err=True)
    while all(p.poll() is None for p in procs):
        time.sleep(0.5)
    # One of them ended without us: `hub down` from another terminal (a clean exit, or the
    # SIGTERM it sent), or a crash, which is an error.
    for proc, what in ((spoke, "spoke"), (hub, "hub")):
        if proc.poll() is not None and proc.returncode not in (0, -signal.SIGTERM):
            say(f"error: the {what} exited with status {proc.returncode} (its message is above)")
            return 1
    return 0


def _tilde(path: Path) -> str:
    home = Path.home()
    return "~/" + str(path.relative_to(home)) if path.is_relative_to(home) else str(path)


def usage_text(url: str, spoke: str, data_dir: Path, prefix: str) -> str:
    """What ``hub up`` prints once the cluster runs (README.md shows it; tests/test_readme.py
    holds the two together). Every command in it works when pasted."""
    from spoke.boxes.image import DEFAULT_IMAGE

    lines = [f"spokehub is up: hub at {url}, spoke {spoke} connected."]
    scripts = Path(sys.executable).parent
    if shutil.which("hub") != str(scripts / "hub"):
        shown = "$PWD/.venv/bin" if scripts == Path.cwd() / ".venv" / "bin" else str(scripts)
        lines += ["The hub and spoke commands are not on your PATH yet; in another terminal:",
                  f'  export PATH="{shown}:$PATH"']
    lines += [
        f"Web: open {url}/ and sign in as admin, with the password the hub printed at its",
        f"  first start (`{prefix}hub admin set-password` sets another; the certificate is self-signed).",
        "Try, in another terminal:",
        f"  {prefix}hub spoke list",
        f"  BOX=$({prefix}hub box create --spoke {spoke} --image {DEFAULT_IMAGE})",
        f"  {prefix}hub box exec $BOX -- sh -c 'echo hello from $(hostname)'",
        f"  {prefix}hub token create --name laptop   # then, on the laptop: spoke join TOKEN",
        f"Agents: put models in {_tilde(data_dir / 'hub.toml')} (see docs/agents.md), restart, then",
        f'  {prefix}hub ws new --spoke {spoke} "what is in /etc/os-release?"',
        f"Stop: Ctrl-C here, or `{prefix}hub down` in another terminal (boxes stay until",
        f"`{prefix}hub down --rm-boxes`).",
    ]
    return "\n" + "\n".join(lines)


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    """SIGTERM what still runs (spoke first) and wait, bounded; a second Ctrl-C kills."""
    try:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(STOP_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    say(f"pid {proc.pid} did not stop within {STOP_TIMEOUT_S:.0f}s: killing it")
                    proc.kill()
                    proc.wait()
    except KeyboardInterrupt:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def _wait_for_hub(data_dir: Path, proc: subprocess.Popen[bytes]) -> HubClient:
    """Ready once *our* hub holds the data dir's lock and answers /healthz (never a client of
    some other hub that happens to answer at the URL in an old admin.json)."""
    from client.http_client import HubClient
    from protocol.errors import RemoteError

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            fail(f"the hub did not start (exit status {proc.returncode}; its message is above)")
        running = holder(data_dir, HUB_LOCK)
        if running is not None and running.pid == proc.pid:
            try:
                client = HubClient.from_data_dir(data_dir)
                client.request("GET", "/healthz")
                return client
            except (RemoteError, OSError):
                pass
        time.sleep(0.2)
    fail("the hub did not become ready in 30s")
    raise AssertionError


def _wait_for_spoke(client: HubClient, spoke_dir: Path, name: str,
                    proc: subprocess.Popen[bytes]) -> str:
    """The spoke's name once it is connected (an enrolled spoke keeps its own name)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            fail(f"the spoke exited with status {proc.returncode} (its message is above)")
        name = local_spoke_name(spoke_dir) or name
        spokes = client.request("GET", "/api/spokes")
        if any(s["name"] == name and s["connected"] for s in spokes):
            return name
        time.sleep(0.2)
    fail("the spoke did not connect in 30s")
    raise AssertionError
