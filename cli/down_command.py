"""``hub down``: stop the hub and local spoke that ``hub up`` started, and say what is left.

The processes are found through the lock records ``hub serve`` and ``spoke run|join`` keep in
their data dirs (:mod:`cli.runlock`), so ``hub down`` works from any terminal, whether
``hub up`` still runs or not. Boxes outlive both processes on purpose (a hub restart must not
destroy anyone's work), so the last thing it prints is what is still there and how to remove
it; ``--rm-boxes`` removes the local spoke's boxes first, through the hub so its records stay
true, and then whatever Docker still holds for that spoke.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import click

from cli.common import data_dir_option, default_dir
from cli.runlock import HUB_LOCK, SPOKE_LOCK, Holder, holder


def say(line: str) -> None:
    click.echo(line, err=True)


def spoke_dir_option(fn: Any) -> Any:
    return click.option(
        "--spoke-dir",
        type=click.Path(file_okay=False, path_type=Path),
        envvar="SPOKEHUB_SPOKE_DIR",
        default=lambda: default_dir("spoke"),
        show_default="~/.local/share/spokehub/spoke",
        help="State directory of the local spoke (env SPOKEHUB_SPOKE_DIR).",
    )(fn)


def env_prefix(data_dir: Path, spoke_dir: Path | None = None) -> str:
    """What to put before a suggested command so it finds these data dirs."""
    parts = []
    if os.environ.get("SPOKEHUB_HUB_DIR") is None and data_dir != default_dir("hub"):
        parts.append(f"SPOKEHUB_HUB_DIR={data_dir} ")
    if (spoke_dir is not None and os.environ.get("SPOKEHUB_SPOKE_DIR") is None
            and spoke_dir != default_dir("spoke")):
        parts.append(f"SPOKEHUB_SPOKE_DIR={spoke_dir} ")
    return "".join(parts)


def local_spoke_name(spoke_dir: Path, running: Holder | None = None) -> str:
    if running is not None and running.name:
        return running.name
    try:
        return str(json.loads((spoke_dir / "spoke.json").read_text()).get("name") or "")
    except (OSError, ValueError):
        return ""


@click.command()
@data_dir_option("hub", "SPOKEHUB_HUB_DIR")
@spoke_dir_option
@click.option("--rm-boxes", is_flag=True,
              help="First remove the local spoke's boxes (through the hub, then with Docker).")
@click.option("--timeout", default=20.0, show_default=True, type=click.FloatRange(min=1),
              help="Seconds to wait for each process to stop.")
def down(data_dir: Path, spoke_dir: Path, rm_boxes: bool, timeout: float) -> None:
    """Stop the local hub and spoke (as started by 'hub up') and say what is left running."""
    hub = holder(data_dir, HUB_LOCK)
    spoke = holder(spoke_dir, SPOKE_LOCK)
    name = local_spoke_name(spoke_dir, spoke)
    others = _other_spokes(data_dir, name) if hub is not None else []
    through_hub = rm_boxes and bool(name) and hub is not None and spoke is not None
    if through_hub:
        _rm_boxes_through_hub(data_dir, name)
    if hub is None and spoke is None:
        say(f"nothing to stop: no hub runs on {data_dir} and no spoke on {spoke_dir}")
    stopped = True
    if spoke is not None:
        stopped &= stop_process(spoke, spoke_dir, SPOKE_LOCK, f"spoke {name}", timeout)
    if hub is not None:
        stopped &= stop_process(hub, data_dir, HUB_LOCK, f"hub at {hub.url}", timeout)
    if rm_boxes and name:
        rm_boxes_with_docker(name, "the hub did not know it" if through_hub else
                             "with Docker: the hub or spoke was not running")
    report_leftovers(name, others, env_prefix(data_dir, spoke_dir))
    sys.exit(0 if stopped else 1)


def stop_process(running: Holder, data_dir: Path, lock: str, what: str, timeout: float) -> bool:
    """SIGTERM the holder of ``data_dir/lock`` and wait, at most ``timeout``, for the lock to
    drop (it drops when the process ends, however it ends); True once it has."""
    if running.pid <= 0:  # never signal pid 0 (our own process group)
        say(f"error: cannot tell which process holds {data_dir / lock}; stop {what} by hand")
        return False
    try:
        os.kill(running.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    except PermissionError:
        say(f"error: not allowed to stop {what} (pid {running.pid}, another user's)")
        return False
    deadline = time.monotonic() + timeout
    while holder(data_dir, lock) is not None:
        if time.monotonic() > deadline:
            say(f"error: {what} (pid {running.pid}) did not stop within {timeout:.0f}s; "
                f"it is still running (kill -9 {running.pid} ends it)")
            return False
        time.sleep(0.1)
    say(f"stopped {what} (pid {running.pid})")
    return True


def _client(data_dir: Path) -> Any:
    from client.http_client import HubClient

    return HubClient.from_data_dir(data_dir)


def _other_spokes(data_dir: Path, local: str) -> list[str]:
    """Connected spokes of other machines: they keep running and reconnect later."""
    from protocol.errors import RemoteError

    try:
        rows = _client(data_dir).request("GET", "/api/spokes")
    except (RemoteError, OSError):
        return []
    return [r["name"] for r in rows if r["connected"] and r["name"] != local]


def _rm_boxes_through_hub(data_dir: Path, name: str) -> None:
    from protocol.errors import RemoteError

    try:
        client = _client(data_dir)
        boxes = client.request("GET", f"/api/boxes?spoke={name}")
    except (RemoteError, OSError) as err:
        say(f"could not list the boxes of spoke {name} through the hub: {err}")
        return
    for box in boxes:
        try:
            client.request("DELETE", f"/api/boxes/{box['id']}")
            say(f"removed box {box['id']} (through the hub)")
        except (RemoteError, OSError) as err:
            say(f"could not remove box {box['id']} through the hub: {err}")


def _labels(name: str) -> list[str]:
    return ["spokehub.managed=1", f"spokehub.spoke={name}"]


def _docker_boxes(name: str) -> tuple[Any, list[Any]]:
    import docker

    engine = docker.from_env()
    return engine, list(engine.containers.list(all=True, filters={"label": _labels(name)}))


def rm_boxes_with_docker(name: str, why: str) -> None:
    """Whatever Docker still holds for spoke ``name`` (boxes the hub did not know, or all of
    them when the hub could not remove them): containers and their workspace volumes."""
    import docker.errors

    try:
        engine, containers = _docker_boxes(name)
        for container in containers:
            box = container.labels.get("spokehub.box", container.name)
            container.remove(force=True)
            say(f"removed box {box} ({why})")
        for volume in engine.volumes.list(filters={"label": _labels(name)}):
            volume.remove(force=True)
        for network in engine.networks.list(filters={"label": _labels(name)}):
            network.remove()  # the spoke's box network (spoke/boxes/docker_network.py)
    except docker.errors.DockerException as err:
        say(f"could not remove the boxes of spoke {name} with Docker: {err}")


def report_leftovers(name: str, others: list[str], prefix: str) -> None:
    """What is still running after a stop, and how to remove it."""
    import docker.errors

    if others:
        say(f"left running: spokes on other machines ({', '.join(others)}); they reconnect "
            "when the hub is back")
    if not name:
        return
    try:
        _engine, containers = _docker_boxes(name)
    except docker.errors.DockerException as err:
        say(f"could not ask Docker which boxes of spoke {name} are left: {err}")
        return
    if not containers:
        say(f"no boxes left on spoke {name}")
        return
    say(f"left running: {len(containers)} box(es) of spoke {name} (they stay until removed):")
    for c in containers:
        image = c.attrs.get("Config", {}).get("Image", "")
        say(f"  {c.labels.get('spokehub.box', c.name)}  {c.status}  {image}")
    say(f"remove them with: {prefix}hub down --rm-boxes")
    say(f"  (or by hand: docker rm -f $(docker ps -aq --filter label=spokehub.spoke={name}); "
        f"docker volume rm $(docker volume ls -q --filter label=spokehub.spoke={name}))")
