"""``hub up``: the one-command start — a hub plus a local spoke on embedded defaults."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import click

from cli.common import data_dir_option, default_dir, fail

if TYPE_CHECKING:
    from client.http_client import HubClient


@click.command()
@data_dir_option("hub", "SPOKEHUB_HUB_DIR")
@click.option(
    "--spoke-dir",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="SPOKEHUB_SPOKE_DIR",
    default=lambda: default_dir("spoke"),
    help="State directory of the local spoke.",
)
@click.option("--port", default=8443, show_default=True, type=click.IntRange(1, 65535))
@click.option("--spoke-name", default="local", show_default=True)
def up(data_dir: Path, spoke_dir: Path, port: int, spoke_name: str) -> None:
    """Start a hub and a local spoke (building the sandbox image if missing) and say how to use them."""
    from rich.console import Console

    from spoke.boxes.image import DEFAULT_IMAGE, ensure_sandbox_image, image_present

    console = Console(stderr=True)
    if not image_present(DEFAULT_IMAGE):
        with console.status(
            f"building sandbox image {DEFAULT_IMAGE} (debootstrap, about a minute)…"
        ) as status:
            ensure_sandbox_image(
                DEFAULT_IMAGE,
                progress=lambda line: status.update(f"[bold]{DEFAULT_IMAGE}[/]: {line}"),
            )
        console.print(f"[green]✓[/] built {DEFAULT_IMAGE}")
    procs: list[subprocess.Popen[bytes]] = []

    def stop(*_: object) -> None:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    exe = [sys.executable, "-m"]
    hub = subprocess.Popen(
        [*exe, "cli.hub_cli", "serve", "--data-dir", str(data_dir), "--port", str(port)]
    )
    procs.append(hub)
    try:
        client = _wait_for_hub(data_dir, hub)
        state_file = spoke_dir / "spoke.json"
        enrolled = state_file.exists() and json.loads(state_file.read_text()).get("enrolled")
        if enrolled:
            spoke_cmd = [*exe, "cli.spoke_cli", "run", "--data-dir", str(spoke_dir)]
        else:
            if any(
                s["name"] == spoke_name and not s["revoked"]
                for s in client.request("GET", "/api/spokes")
            ):
                client.request("DELETE", f"/api/spokes/{spoke_name}")
            token = client.request("POST", "/api/tokens", {"name": spoke_name, "ttl": "10m"})[
                "token"
            ]
            spoke_cmd = [*exe, "cli.spoke_cli", "join", "--data-dir", str(spoke_dir), token]
        procs.append(subprocess.Popen(spoke_cmd))
        _wait_for_spoke(client, spoke_name, procs[-1])
        env_hint = (
            f"SPOKEHUB_HUB_DIR={data_dir} "
            if os.environ.get("SPOKEHUB_HUB_DIR") is None and data_dir != default_dir("hub")
            else ""
        )
        console.print(f"""
[bold green]spokehub is up[/]: hub at {client.url}, spoke [bold]{spoke_name}[/] connected.
Try, in another terminal:
  {env_hint}hub spoke list
  {env_hint}hub box create --spoke {spoke_name} --image {DEFAULT_IMAGE}
  {env_hint}hub box exec BOX_ID -- sh -c 'echo hello from $(hostname)'
  {env_hint}hub token create --name another-machine   # then 'spoke join TOKEN' there
Agents: put models in {data_dir / "hub.toml"} (see docs/agents.md), restart, then
  {env_hint}hub ws new --spoke {spoke_name} "what is in /etc/os-release?"
Press Ctrl-C to stop.""", soft_wrap=True)
        while all(p.poll() is None for p in procs):
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        stop()
        for proc in procs:
            proc.wait(timeout=20)
    if hub.returncode not in (0, -signal.SIGTERM, None):
        fail(f"hub exited with {hub.returncode}")


def _wait_for_hub(data_dir: Path, proc: subprocess.Popen[bytes]) -> HubClient:
    from client.http_client import HubClient
    from protocol.errors import RemoteError

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            fail(f"hub exited with code {proc.returncode} (is port in use?)")
        try:
            client = HubClient.from_data_dir(data_dir)
            client.request("GET", "/healthz")
            return client
        except (RemoteError, OSError):
            time.sleep(0.2)
    fail("hub did not become ready in 30s")
    raise AssertionError


def _wait_for_spoke(client: HubClient, name: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            fail(f"spoke exited with code {proc.returncode}")
        spokes = client.request("GET", "/api/spokes")
        if any(s["name"] == name and s["connected"] for s in spokes):
            return
        time.sleep(0.2)
    fail("spoke did not connect in 30s")
