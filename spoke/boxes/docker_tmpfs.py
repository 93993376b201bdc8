"""Files on a box's tmpfs mounts (``/tmp``, ``/run``), copied through a command in the box.

Docker's archive API does not see tmpfs mounts: reading a file a command wrote under ``/tmp``
answered "no such file" (issue 8 item 8), and a write landed under the mount, invisible. So
for paths on a tmpfs the Docker manager runs small POSIX ``sh`` scripts in the box instead,
as the box's user (the default user of an exec), which is also who owns what they write:

- :func:`kinds` — one exec answering "dir", "file" or missing for each path an upload's plan
  asks about (:func:`spoke.boxes.base.plan_put`);
- :func:`put` — an exec whose stdin is streamed from the upload: ``cat`` into a temporary
  name beside the target, checked to be exactly the declared size, then ``chmod`` and ``mv``
  into place (a failed upload leaves nothing behind);
- :func:`get` — an exec of ``cat`` whose output is the download, after checks (missing,
  directory, too big) that answer with an exit status, never with a false "not found".

These need the box to be running (its tmpfs lives only while it does): otherwise the error
says so and where to write instead. Pinned by tests/boxes/test_conformance_files.py
(``test_tmpfs_files``) against both managers, and tests/test_box_hardening.py end to end.
"""

from __future__ import annotations

import posixpath
import secrets
import socket
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterator
from concurrent.futures import Executor
from typing import Any

import docker.errors
from docker.utils.socket import STDERR, frames_iter

from spoke.boxes import docker_util as du
from spoke.boxes.base import BoxError, BoxInvalid, BoxNotFound, ExecHandle, PutPlan, exactly
from spoke.boxes.docker_exec import exec_inspect, start_exec
from spoke.boxes.transfer import feed_thread

ExecFn = Callable[..., Awaitable[ExecHandle]]  # the manager's exec(box_id, cmd, ...)
MAX_STDERR = 4096

KINDS_SCRIPT = ('for p in "$@"; do if [ -d "$p" ]; then echo d; elif [ -e "$p" ]; then echo f;'
                ' else echo -; fi; done')
# $1 temporary name, $2 target, $3 size, $4 octal mode, then directories to make (outermost
# first). Exit 31: mkdir failed, 32: writing failed, 33: wrong size, 34: chmod/mv failed.
PUT_SCRIPT = r"""
t=$1; f=$2; n=$3; m=$4; shift 4
umask 022
for d in "$@"; do mkdir -- "$d" || exit 31; done
umask 077
cat > "$t" || { rm -f -- "$t"; exit 32; }
got=$(($(wc -c < "$t")))
[ "$got" = "$n" ] || { rm -f -- "$t"; exit 33; }
chmod "$m" "$t" && mv -f -- "$t" "$f" || { rm -f -- "$t"; exit 34; }
"""
# $1 file, $2 max bytes. Exit 21: a directory, 22: missing, 23: not a regular file,
# 24: unreadable, 25: bigger than $2 (its size on stderr); otherwise cat's own status.
GET_SCRIPT = r"""
f=$1; max=$2
if [ -d "$f" ]; then exit 21; fi
if [ ! -e "$f" ]; then exit 22; fi
if [ ! -f "$f" ]; then exit 23; fi
if [ ! -r "$f" ]; then exit 24; fi
n=$(($(wc -c < "$f"))) || exit 24
if [ "$n" -gt "$max" ]; then echo "$n" >&2; exit 25; fi
exec cat -- "$f"
"""


def not_running(what: str, err: BoxError) -> BoxError:
    """The error for a tmpfs copy in a box that is not running: why, and where to write."""
    if err.code != "unavailable":
        return err
    return BoxError(f"{what}: {err.message}; /tmp and /run are tmpfs mounts that exist only "
                    "while the box runs (files meant to outlive it belong under /workspace)",
                    "unavailable")


async def _run(exec_fn: ExecFn, box_id: str, cmd: list[str], what: str
               ) -> tuple[bytes, bytes, int]:
    try:
        handle = await exec_fn(box_id, cmd)
    except BoxError as err:
        raise not_running(what, err) from None
    out: list[bytes] = []
    err_out: list[bytes] = []
    async for stream, data in handle.chunks():
        (out if stream == "stdout" else err_out).append(data)
    result = await handle.wait()
    return b"".join(out), b"".join(err_out)[:MAX_STDERR], result.exit_code


async def kinds(exec_fn: ExecFn, box_id: str, where: str,
                paths: list[str]) -> dict[str, str | None]:
    """"dir", "file" or None (missing) for each of ``paths`` (following symlinks), in one
    exec: what an upload's plan asks about a tmpfs target and its parents."""
    out, err, code = await _run(exec_fn, box_id, ["/bin/sh", "-c", KINDS_SCRIPT, "sh", *paths],
                                f"looking up {paths[0]} in {where}")
    answers = out.decode(errors="replace").split()
    if code != 0 or len(answers) != len(paths):
        raise BoxError(f"looking up {paths[0]} in {where} failed: "
                       f"{du.one_line(err.decode(errors='replace')) or f'exit {code}'}",
                       "internal")
    names = {"d": "dir", "f": "file"}
    return {p: names.get(a) for p, a in zip(paths, answers, strict=True)}


def plan_paths(full: str, into_dir_name: str | None) -> list[str]:
    """Every path :func:`plan_put` may ask about for target ``full``: it, the file inside
    it, and its ancestors (not ``/``)."""
    paths = [full]
    if into_dir_name is not None:
        paths.append(posixpath.join(full, into_dir_name))
    current = posixpath.dirname(full)
    while current != "/":
        paths.append(current)
        current = posixpath.dirname(current)
    return paths


async def put(pool: Executor, api: Any, container_id: str, box_id: str, where: str,
              plan: PutPlan, chunks: AsyncIterator[bytes], size: int, mode: int) -> None:
    """Stream exactly ``size`` bytes of ``chunks`` into ``plan.path`` on a tmpfs, through
    the stdin of :data:`PUT_SCRIPT` (see the module docstring)."""
    temp = posixpath.join(posixpath.dirname(plan.path),
                          f".{posixpath.basename(plan.path)[:64]}.spokehub-{secrets.token_hex(6)}")
    cmd = ["/bin/sh", "-c", PUT_SCRIPT, "sh", temp, plan.path, str(size), f"{mode & 0o7777:o}",
           *plan.make_dirs]
    what = f"writing {plan.path} in {where}"
    try:
        code, err = await feed_thread(pool, exactly(chunks, size),
                                      lambda data: _copy_in(api, container_id, cmd, data))
    except BoxError:
        raise
    except docker.errors.APIError as exc:
        mapped = du.map_docker_error(exc, what)
        if exc.status_code == 409:  # "container … is not running"
            mapped = BoxError(f"{what}: box {box_id} is not running", "unavailable")
        raise not_running(what, mapped) from exc
    except Exception as exc:
        raise du.map_docker_error(exc, what) from exc
    if code != 0:
        raise _put_error(what, code, err)


def _put_error(what: str, code: int, err: bytes) -> BoxError:
    text = du.one_line(err.decode(errors="replace"))
    lowered = text.lower()
    if "no space left" in lowered:
        return BoxError(f"{what}: no space left on device (the tmpfs is full)", "denied")
    if "permission denied" in lowered or "read-only" in lowered:
        return BoxError(f"{what}: permission denied for the box's user ({text})", "denied")
    if code == 33:
        return BoxInvalid(f"{what}: the upload ended early")
    return BoxError(f"{what} failed: {text or f'exit {code}'}", "internal")


def _copy_in(api: Any, container_id: str, cmd: list[str],
             data: Iterator[bytes]) -> tuple[int, bytes]:
    """Worker thread: run ``cmd`` with ``data`` as its stdin; return (exit status, stderr).
    If ``data`` fails, the stdin is cut short: the script then removes its temporary file."""
    exec_id, sock = start_exec(api, container_id, cmd, env=None, workdir=None, stdin=True)
    raw = getattr(sock, "_sock", sock)
    err = b""
    try:
        try:
            for piece in data:
                raw.sendall(piece)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the command stopped reading (a full tmpfs): its stderr says why
        raw.shutdown(socket.SHUT_WR)
        for stream_id, chunk in frames_iter(sock, False):
            if stream_id == STDERR and len(err) < MAX_STDERR:
                err += chunk
    finally:
        raw.close()
    delay = 0.002
    while True:
        info = exec_inspect(api, exec_id)
        if not info.get("Running"):
            return int(info.get("ExitCode") or 0), err
        time.sleep(delay)
        delay = min(delay * 2, 0.1)


async def get(exec_fn: ExecFn, box_id: str, where: str, path: str,
              max_bytes: int) -> AsyncGenerator[bytes, None]:
    """The content of ``path`` on a tmpfs, streamed from ``cat`` in the box (the exec's
    output is pulled, so this is bounded like any exec). Errors come before the first chunk."""
    what = f"reading {path} in {where}"
    try:
        handle = await exec_fn(box_id, ["/bin/sh", "-c", GET_SCRIPT, "sh", path, str(max_bytes)])
    except BoxError as err:
        raise not_running(what, err) from None
    sent = 0
    errtext = b""
    try:
        async for stream, data in handle.chunks():
            if stream == "stderr":
                errtext = (errtext + data)[:MAX_STDERR]
                continue
            sent += len(data)
            if sent > max_bytes:
                raise BoxInvalid(f"{path} in {where} grew past the {max_bytes}-byte limit")
            yield data
        code = (await handle.wait()).exit_code
    finally:
        await handle.kill()  # a no-op once it has ended; else the reader gave up
    if code == 0:
        return
    if code == 21:
        raise BoxInvalid(f"{path} in {where} is a directory, not a file")
    if code == 22:
        raise BoxNotFound(f"no such file {path} in {where}")
    if code == 23:
        raise BoxInvalid(f"{path} in {where} is not a regular file")
    if code == 24:
        raise BoxError(f"{what}: permission denied for the box's user", "denied")
    if code == 25:
        size = du.one_line(errtext.decode(errors="replace"))
        raise BoxInvalid(f"{path} in {where} is {size} bytes, more than the "
                         f"{max_bytes}-byte limit")
    raise BoxError(f"{what} failed: {du.one_line(errtext.decode(errors='replace')) or code}",
                   "internal")
