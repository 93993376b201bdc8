"""``hub box cp``: one file into or out of a box, the work behind the click command.

Kept free of click (it is imported only to report an error) so that
:func:`cli.hub_cli.main` can run the plain forms of ``hub box cp`` without loading the click
tree and every command module (~90 ms of a copy's start, issue 14's bulk data figures), as it
does for ``hub box exec``; :func:`cli.box_commands.box_cp` (help, unusual argument forms)
calls the same :func:`copy`. Pinned by tests/test_box_cp.py (both ways, errors, docker cp's
rules for targets, through the fast path and through click) and tests/test_exec_fast_paths.py
(the fast path's parsing and imports).
"""

from __future__ import annotations

import contextlib
import json
import os
import posixpath
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cli.common import fail, guarded, hub_client

_BOX_REF = re.compile(r"(bx_[^/:]*):(.*)\Z", re.DOTALL)


def copy(data_dir: Path, src: str, dst: str, *, parents: bool, as_json: bool) -> None:
    """``hub box cp [-p] SRC DST``: exactly one of them is ``BOX:PATH``."""
    src_box, src_path = split_ref(src)
    dst_box, dst_path = split_ref(dst)
    if bool(src_box) == bool(dst_box):
        fail("exactly one of SRC and DST must name a box as BOX:PATH", 2)
    if dst_box:
        _upload(data_dir, as_json, parents, Path(src_path), dst_box, dst_path)
    else:
        assert src_box is not None
        _download(data_dir, as_json, parents, src_box, src_path, dst_path)


def split_ref(arg: str) -> tuple[str | None, str]:
    """``BOX:PATH`` → ``(BOX, PATH)``; anything else is a local path. Whatever starts with
    ``bx_`` before the first ':' (and has no '/') is meant as a box, so a mistyped id gets
    the hub's "not a box id" rather than "no such local file". ``BOX:`` is the box's
    working directory, which the spoke resolves (``.``)."""
    match = _BOX_REF.match(arg)
    if match:
        return match.group(1), match.group(2) or "."
    return None, arg


def _emit(data: dict[str, Any], as_json: bool, human: Callable[[], str]) -> None:
    """What :func:`cli.common.emit` prints (the JSON on stdout, or one line on stderr)."""
    if as_json:
        sys.stdout.write(json.dumps(data, indent=2, sort_keys=True) + "\n")
    else:
        sys.stderr.write(human() + "\n")
        sys.stderr.flush()


def _upload(data_dir: Path, as_json: bool, parents: bool, local: Path, box_id: str,
            path: str) -> None:
    if local.is_dir():
        fail(f"{local} is a directory: box cp copies one file", 2)
    try:
        fh = local.open("rb")
    except OSError as err:
        fail(f"cannot read {local}: {err.strerror or err}", 2)
    client = guarded(lambda: hub_client(data_dir))  # no hub here: one line, not a traceback
    with fh:
        info = os.fstat(fh.fileno())
        data = guarded(lambda: client.put_file(box_id, path, fh, info.st_size, info.st_mode & 0o777,
                                              parents=parents, into_dir_name=local.name))
    where = f"{box_id}:{data.get('path') or path}"
    _emit(data, as_json, lambda: f"copied {data['size']} bytes to {where}")


def _download(data_dir: Path, as_json: bool, parents: bool, box_id: str, path: str,
              dst: str) -> None:
    """Fetch into ``NAME.part`` beside the target, then rename: a failed copy leaves neither
    a partial file nor the directories ``-p`` made for it."""
    name = posixpath.basename(path.rstrip("/"))
    target, missing = _local_target(Path(dst), dst.endswith(("/", os.sep)), name, parents)
    client = guarded(lambda: hub_client(data_dir))  # no hub here: one line, not a traceback
    tmp = target.with_name(target.name + ".part")
    size = 0

    def fetch() -> None:
        nonlocal size
        for directory in missing:
            directory.mkdir()
        with tmp.open("wb") as fh:
            for chunk in client.get_file(box_id, path):
                fh.write(chunk)
                size += len(chunk)
        os.replace(tmp, target)

    import http.client  # only now: it is slow to import and most commands never need it

    try:
        guarded(fetch)
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        for directory in reversed(missing):
            with contextlib.suppress(OSError):
                directory.rmdir()
        if isinstance(err, OSError | http.client.HTTPException):
            fail(f"copying {box_id}:{path} to {target} failed: {_why(err)}", 1)
        raise
    _emit({"size": size, "path": str(target)}, as_json, lambda: f"copied {size} bytes to {target}")


def _local_target(dst: Path, as_dir: bool, name: str, parents: bool) -> tuple[Path, list[Path]]:
    """Where a download goes and which missing directories ``-p`` must make (outermost
    first), with docker cp's rules; a one-line usage error (exit 2) for everything else."""
    if as_dir or dst.is_dir():
        if not name or name in (".", ".."):
            fail("SRC must name a file when DST is a directory", 2)
        folder, target = dst, dst / name
    else:
        folder, target = dst.parent, dst
    missing: list[Path] = []
    probe = folder
    while not probe.is_dir():
        if probe.exists():
            fail(f"{probe} is not a directory", 2)
        if not parents:
            fail(f"local directory {folder} does not exist (use -p to create it)", 2)
        missing.insert(0, probe)
        probe = probe.parent
    if target.is_dir():
        fail(f"{target} is a directory", 2)
    return target, missing


def _why(err: BaseException) -> str:
    return (getattr(err, "strerror", None) or str(err) or type(err).__name__).rstrip(".")
