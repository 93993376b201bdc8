"""``hub box …``: boxes on spokes, with exec output streamed as it comes.

``hub box exec`` usually never gets here: :func:`cli.hub_cli.main` runs it without loading
click. This command is the general path (help, unusual argument forms) and does the same
through :func:`cli.common.stream_exec`."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from cli.box_cp import copy
from cli.common import aliased_group, data_dir_option, emit, fail, json_option, stream_exec, table
from cli.common import guarded as _guard
from cli.common import hub_client as _client

hub_dir = data_dir_option("hub", "SPOKEHUB_HUB_DIR")


@click.group(cls=aliased_group())
def box() -> None:
    """Sandboxed containers ("boxes") on spokes: hardened, no network unless asked.

    \b
    Example:  BOX=$(hub box create --spoke local --image spokehub-sandbox:bookworm)
              hub box exec $BOX -- uname -a
    """


@box.command("create")
@hub_dir
@json_option
@click.option("--spoke", required=True, help="Spoke to create the box on.")
@click.option("--image", required=True, help="Image the spoke allows (spoke join --allow-image).")
@click.option("--network", is_flag=True, help="Give the box network access (default: none).")
@click.option("--memory", default=None, help="Memory limit, e.g. 512m, 2g.")
@click.option("--cpus", type=click.FloatRange(min=0.01), default=None,
              help="CPU limit, e.g. 0.5 (at most the spoke's ceiling).")
@click.option("--env", "env", multiple=True, metavar="K=V", help="Environment variable (repeatable).")
@click.option("--user", default=None, metavar="USER",
              help="uid[:gid] or name to run as (default: the image's non-root USER, else "
                   "1000:1000; root only where the spoke allows it).")
@click.option("--workspace", default=None, metavar="SIZE",
              help="Size limit of /workspace, e.g. 5g (default 1g; at most the spoke's ceiling).")
def box_create(
    data_dir: Path,
    as_json: bool,
    spoke: str,
    image: str,
    network: bool,
    memory: str | None,
    cpus: float | None,
    env: tuple[str, ...],
    user: str | None,
    workspace: str | None,
) -> None:
    """Create a box on a spoke and print its id.

    \b
    Example:  hub box create --spoke local --image spokehub-sandbox:bookworm --memory 1g
    """
    env_map: dict[str, str] = {}
    for item in env:
        key, sep, value = item.partition("=")
        if not sep or not key:
            fail(f"--env takes K=V, got {item!r}", 2)
        env_map[key] = value
    body = {
        "spoke": spoke,
        "image": image,
        "network": network,
        "memory": memory,
        "cpus": cpus,
        "env": env_map,
        "user": user,
        "workspace": workspace,
    }
    data = _guard(lambda: _client(data_dir).request("POST", "/api/boxes", body))
    emit(data, as_json, lambda d: click.echo(d["id"]))


@box.command("ls")
@hub_dir
@json_option
@click.option("--spoke", default=None, help="Only this spoke's boxes.")
@click.option("--all", "everything", is_flag=True,
              help="Ask each connected spoke what really exists, and show where it and the "
                   "hub's records disagree.")
def box_ls(data_dir: Path, as_json: bool, spoke: str | None, everything: bool) -> None:
    """The hub's live boxes; with --all, merged with what each connected spoke reports."""
    query = [f"spoke={spoke}"] if spoke else []
    if everything:
        query.append("all=1")
    path = "/api/boxes" + ("?" + "&".join(query) if query else "")
    data = _guard(lambda: _client(data_dir).request("GET", path))
    columns = ["id", "spoke", "image", "state", "created_at"]
    if everything:
        columns = ["id", "spoke", "image", "state", "on_spoke", "note"]
    emit(data, as_json, lambda d: table(d, columns))


@box.command("rm")
@hub_dir
@json_option
@click.argument("box_id")
def box_rm(data_dir: Path, as_json: bool, box_id: str) -> None:
    """Remove box BOX_ID (its container and workspace volume) from its spoke."""
    data = _guard(lambda: _client(data_dir).request("DELETE", f"/api/boxes/{box_id}"))
    emit(data, as_json, lambda d: click.echo(box_id))


@box.command("pause")
@hub_dir
@json_option
@click.argument("box_id")
def box_pause(data_dir: Path, as_json: bool, box_id: str) -> None:
    """Freeze every process in box BOX_ID (memory kept); it refuses work until resumed."""
    data = _guard(lambda: _client(data_dir).request("POST", f"/api/boxes/{box_id}/pause"))
    emit(data, as_json, lambda d: click.echo(f"{box_id} paused"))


@box.command("resume")
@hub_dir
@json_option
@click.argument("box_id")
def box_resume(data_dir: Path, as_json: bool, box_id: str) -> None:
    """Thaw box BOX_ID after `hub box pause`."""
    data = _guard(lambda: _client(data_dir).request("POST", f"/api/boxes/{box_id}/resume"))
    emit(data, as_json, lambda d: click.echo(f"{box_id} running"))


@box.command("logs")
@hub_dir
@click.option("--tail", default=200, show_default=True, type=click.IntRange(1, 100_000),
              help="How many of the last lines to print.")
@click.argument("box_id")
def box_logs(data_dir: Path, tail: int, box_id: str) -> None:
    """The box's main process output (what `docker logs` shows)."""
    data = _guard(lambda: _client(data_dir).get_bytes(f"/api/boxes/{box_id}/logs?tail={tail}"))
    sys.stdout.buffer.write(data)


@box.command("exec", context_settings={"ignore_unknown_options": True})
@hub_dir
@click.option(
    "--timeout",
    type=click.FloatRange(min=0.001),
    default=None,
    help="Kill the command after N seconds.",
)
@click.option("--env", "env", multiple=True, metavar="K=V",
              help="Environment variable for the command (repeatable).")
@click.option("--workdir", default=None, help="Directory to run in (default: the box's workdir).")
@click.option("-i", "--interactive", is_flag=True, help="Send our stdin to the command (with -t: "
              "keystrokes on a terminal).")
@click.option("-t", "--tty", is_flag=True, help="Run it on a terminal (PTY) in the box, this "
              "terminal in raw mode, like docker exec -it.")
@click.argument("box_id")
@click.argument("cmd", nargs=-1, required=True, type=click.UNPROCESSED)
def box_exec(
    data_dir: Path,
    timeout: float | None,
    env: tuple[str, ...],
    workdir: str | None,
    interactive: bool,
    tty: bool,
    box_id: str,
    cmd: tuple[str, ...],
) -> None:
    """Run CMD in the box, streaming its output; exits with its exit code.

    \b
    Example:  hub box exec --timeout 60 $BOX -- sh -c 'make test'
              hub box exec -it $BOX -- bash     (a terminal, like docker exec -it)
    """
    env_map = dict(item.partition("=")[::2] for item in env)
    if interactive or tty:  # a PTY session through the hub (client/pty_client.py)
        if timeout is not None:
            fail("--timeout applies to plain exec, not to -i/-t sessions")
        from client.pty_client import run_terminal

        sys.exit(_guard(lambda: run_terminal(_client(data_dir), box_id, list(cmd),
                                             interactive=interactive, tty=tty, env=env_map,
                                             workdir=workdir)))
    sys.exit(stream_exec(data_dir, box_id, list(cmd), timeout, env_map, workdir))


@box.command("port")
@hub_dir
@json_option
@click.option("--ttl", default="1h", show_default=True, help="How long the link works (at most 7d).")
@click.option("--revoke", is_flag=True, help="Instead: revoke every preview link of the box.")
@click.argument("box_id")
@click.argument("port", type=click.IntRange(1, 65535), required=False)
def box_port(data_dir: Path, as_json: bool, ttl: str, revoke: bool, box_id: str,
             port: int | None) -> None:
    """Print a signed link on the hub to PORT inside the box (HTTP and WebSocket).

    \b
    Example:  hub box port $BOX 8000 --ttl 30m
    """
    if revoke:
        emit(_guard(lambda: _client(data_dir).request("DELETE", f"/api/boxes/{box_id}/ports")),
             as_json, lambda r: click.echo(f"revoked every preview link of {r['box']}"))
        return
    if port is None:
        fail("PORT is required (1-65535)", 2)
    link = _guard(lambda: _client(data_dir).request("POST", f"/api/boxes/{box_id}/ports",
                                                    {"port": port, "ttl": ttl}))
    emit(link, as_json, lambda r: click.echo(r["url"]))


@box.command("cp")
@hub_dir
@json_option
@click.option("-p", "--parents", is_flag=True,
              help="Create missing parent directories of DST (in the box or here).")
@click.argument("src")
@click.argument("dst")
def box_cp(data_dir: Path, as_json: bool, parents: bool, src: str, dst: str) -> None:
    """Copy one file into (DST is BOX:PATH) or out of (SRC is BOX:PATH) a box.

    PATH is absolute or relative to the box's working directory (/workspace in the sandbox
    image); BOX: alone is that directory. As in docker cp, a DST that is a directory, or
    ends in '/', receives the file under its own name. Write a local path containing ':'
    as ./like:this."""
    copy(data_dir, src, dst, parents=parents, as_json=as_json)
