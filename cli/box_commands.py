"""``hub box …``: boxes on spokes, with exec output streamed as it comes.

``hub box exec`` usually never gets here: :func:`cli.hub_cli.main` runs it without loading
click. This command is the general path (help, unusual argument forms) and does the same
through :func:`cli.common.stream_exec`."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from cli.common import data_dir_option, emit, fail, json_option, stream_exec, table
from cli.common import guarded as _guard
from cli.common import hub_client as _client

hub_dir = data_dir_option("hub", "SPOKEHUB_HUB_DIR")






@click.group()
def box() -> None:
    """Sandboxed containers on spokes."""


@box.command("create")
@hub_dir
@json_option
@click.option("--spoke", required=True, help="Spoke to create the box on.")
@click.option("--image", required=True)
@click.option("--network", is_flag=True, help="Give the box network access (default: none).")
@click.option("--memory", default=None, help="Memory limit, e.g. 512m, 2g.")
@click.option("--cpus", type=click.FloatRange(min=0.01), default=None)
@click.option("--env", "env", multiple=True, metavar="K=V")
def box_create(
    data_dir: Path,
    as_json: bool,
    spoke: str,
    image: str,
    network: bool,
    memory: str | None,
    cpus: float | None,
    env: tuple[str, ...],
) -> None:
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
    }
    data = _guard(lambda: _client(data_dir).request("POST", "/api/boxes", body))
    emit(data, as_json, lambda d: click.echo(d["id"]))


@box.command("ls")
@hub_dir
@json_option
@click.option("--spoke", default=None)
def box_ls(data_dir: Path, as_json: bool, spoke: str | None) -> None:
    path = "/api/boxes" + (f"?spoke={spoke}" if spoke else "")
    data = _guard(lambda: _client(data_dir).request("GET", path))
    emit(data, as_json, lambda d: table(d, ["id", "spoke", "image", "state", "created_at"]))


@box.command("rm")
@hub_dir
@json_option
@click.argument("box_id")
def box_rm(data_dir: Path, as_json: bool, box_id: str) -> None:
    data = _guard(lambda: _client(data_dir).request("DELETE", f"/api/boxes/{box_id}"))
    emit(data, as_json, lambda d: click.echo(box_id))


@box.command("logs")
@hub_dir
@click.option("--tail", default=200, show_default=True, type=click.IntRange(1, 100_000))
@click.argument("box_id")
def box_logs(data_dir: Path, tail: int, box_id: str) -> None:
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
@click.option("--env", "env", multiple=True, metavar="K=V")
@click.option("--workdir", default=None)
@click.argument("box_id")
@click.argument("cmd", nargs=-1, required=True, type=click.UNPROCESSED)
def box_exec(
    data_dir: Path,
    timeout: float | None,
    env: tuple[str, ...],
    workdir: str | None,
    box_id: str,
    cmd: tuple[str, ...],
) -> None:
    """Run CMD in the box, streaming its output; exits with its exit code."""
    env_map = dict(item.partition("=")[::2] for item in env)
    sys.exit(stream_exec(data_dir, box_id, list(cmd), timeout, env_map, workdir))


@box.command("cp")
@hub_dir
@json_option
@click.argument("src")
@click.argument("dst")
def box_cp(data_dir: Path, as_json: bool, src: str, dst: str) -> None:
    """Copy a file into (DST is ID:/path) or out of (SRC is ID:/path) a box."""
    src_box, src_path = _split(src)
    dst_box, dst_path = _split(dst)
    if bool(src_box) == bool(dst_box):
        fail("exactly one of SRC and DST must name a box as ID:/path", 2)
    client = _client(data_dir)
    if dst_box:
        local = Path(src_path)
        if not local.is_file():
            fail(f"{local} is not a file", 2)
        mode = local.stat().st_mode & 0o777
        with local.open("rb") as fh:
            data = _guard(
                lambda: client.put_file(dst_box, dst_path, fh, local.stat().st_size, mode)
            )
        emit(data, as_json, lambda d: click.echo(f"copied {d['size']} bytes to {dst}", err=True))
        return
    target = Path(dst_path)
    if target.is_dir():
        target = target / Path(src_path).name
    tmp = target.with_name(target.name + ".part")
    size = 0

    def fetch() -> None:
        nonlocal size
        with tmp.open("wb") as fh:
            for chunk in client.get_file(src_box, src_path):
                fh.write(chunk)
                size += len(chunk)

    try:
        _guard(fetch)
    except SystemExit:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, target)
    emit(
        {"size": size, "path": str(target)},
        as_json,
        lambda d: click.echo(f"copied {size} bytes to {target}", err=True),
    )


def _split(arg: str) -> tuple[str | None, str]:
    head, sep, tail = arg.partition(":")
    if sep and head.startswith("bx_") and tail.startswith("/"):
        return head, tail
    return None, arg
