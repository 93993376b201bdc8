"""Copying single files in and out of Docker boxes with the archive API.

The archive API sees the image filesystem and volumes (so ``/workspace``) but not tmpfs
mounts such as ``/tmp``: a file put "into /tmp" would land underneath the mount, invisible
to commands, and on our read-only root it fails anyway. Use ``/workspace``.

Files put into a box are owned by the box's user (resolved from the box's own
``/etc/passwd`` when the user is a name) so commands can edit what the hub uploaded;
Docker's ``copyUIDGID`` cannot do this for numeric ``uid:gid`` users. Where an upload
goes (into a directory, with missing parents) is decided by :func:`base.plan_put`, shared
with the fake manager; this module only looks paths up and writes the archive.
"""

from __future__ import annotations

import contextlib
import posixpath
from collections.abc import Awaitable, Callable
from typing import Any

import docker.errors
import docker.utils

from spoke.boxes import docker_util as du
from spoke.boxes.base import BoxError, BoxInvalid, BoxNotFound, PutPlan

Call = Callable[..., Awaitable[Any]]  # runs a blocking callable in the manager's executor
ARCHIVE_OVERHEAD = 64 * 1024  # tar headers and padding allowed on top of max_bytes
MAX_SYMLINK_HOPS = 8


async def put_file(call: Call, api: Any, container_id: str, where: str, plan: PutPlan,
                   data: bytes, mode: int, owner: tuple[int, int]) -> None:
    """Write ``data`` at ``plan.path`` and create ``plan.make_dirs`` (mode 0755), all in one
    archive extracted at ``plan.base`` and owned by ``owner``, the box's user."""
    dirs = [posixpath.relpath(d, plan.base) for d in plan.make_dirs]
    blob = du.single_file_tar(posixpath.relpath(plan.path, plan.base), data, mode, *owner,
                              dirs=dirs)
    try:
        await call(api.put_archive, container_id, plan.base, blob)
    except docker.errors.NotFound:  # removed since it was planned
        raise BoxInvalid(f"cannot write {plan.path} in {where}: directory {plan.base} "
                         "does not exist") from None
    except Exception as exc:
        raise du.map_docker_error(exc, f"writing {plan.path} in {where}") from exc


async def kind_of(call: Call, api: Any, container_id: str, path: str) -> str | None:
    """"dir", "file" or None (missing) at ``path``, following symlinks like the archive
    API does for a destination. A HEAD on the archive endpoint: no tar is ever made."""
    current = path
    for _hop in range(MAX_SYMLINK_HOPS):
        stat = await call(_head_stat, api, container_id, current)
        if stat is None:
            return None
        kind = du.stat_kind(stat)
        if kind != "symlink":
            return kind
        current = posixpath.normpath(posixpath.join(posixpath.dirname(current),
                                                    str(stat.get("linkTarget", ""))))
    raise BoxInvalid(f"{path}: too many levels of symbolic links")


def _head_stat(api: Any, container_id: str, path: str) -> dict[str, Any] | None:
    """Docker's stat of ``path`` (in a worker thread). The SDK has no call for the HEAD,
    so this uses the client's URL helper. 404 is "missing"; so is 500, Docker's answer
    when a component of the path is a file (the caller then finds that file itself)."""
    try:
        res = api.head(api._url("/containers/{0}/archive", container_id),
                       params={"path": path})
    except Exception as exc:
        raise du.map_docker_error(exc, f"looking up {path}") from exc
    header = res.headers.get("X-Docker-Container-Path-Stat")
    if res.status_code in (404, 500) or (res.status_code == 200 and not header):
        return None
    if res.status_code != 200:
        raise BoxError(f"looking up {path}: Docker answered {res.status_code}", "internal")
    stat: dict[str, Any] = docker.utils.decode_json_header(header)
    return stat


async def resolve_owner(call: Call, api: Any, container_id: str, user: str) -> tuple[int, int]:
    """uid/gid of the box's user (Docker's ``Config.User``: ``name|uid[:group|gid]``)."""
    name, group = du.parse_user(user)
    uid = int(name) if name.isdigit() else None
    gid = int(group) if group.isdigit() else None
    if uid is None:
        found = du.lookup_id(await _read_text(call, api, container_id, "/etc/passwd"), name)
        uid, primary_gid = found if found else (0, 0)
        if not group:
            gid = primary_gid
    if gid is None and group:
        found_group = du.lookup_id(await _read_text(call, api, container_id, "/etc/group"),
                                   group)
        gid = found_group[0] if found_group else 0
    return uid, uid if gid is None else gid


async def _read_text(call: Call, api: Any, container_id: str, path: str) -> str:
    try:
        return (await read_file(call, api, container_id, "box", path, 1 << 20)).decode(
            errors="replace")
    except BoxError:
        return ""


async def read_file(call: Call, api: Any, container_id: str, where: str, path: str,
                    max_bytes: int) -> bytes:
    """Return the content of regular file ``path``, following symlinks like a reader in
    the box would. BoxNotFound if missing, BoxInvalid for directories and oversize files."""
    current = path
    for _hop in range(MAX_SYMLINK_HOPS):
        try:
            stream, stat = await call(api.get_archive, container_id, current)
        except docker.errors.NotFound:
            raise BoxNotFound(f"no such file {path} in {where}") from None
        except Exception as exc:
            raise du.map_docker_error(exc, f"reading {path} in {where}") from exc
        kind = du.stat_kind(stat)
        if kind != "file" or int(stat.get("size", 0)) > max_bytes:
            with contextlib.suppress(Exception):
                stream.close()
        if kind == "symlink" and stat.get("linkTarget"):
            target = str(stat["linkTarget"])
            current = posixpath.normpath(posixpath.join(posixpath.dirname(current), target))
            continue
        if kind == "dir":
            raise BoxInvalid(f"{path} in {where} is a directory, not a file")
        size = int(stat.get("size", 0))
        if size > max_bytes:
            raise BoxInvalid(f"{path} in {where} is {size} bytes, more than the "
                             f"{max_bytes}-byte limit")
        try:
            blob = await call(_collect, stream, max_bytes + ARCHIVE_OVERHEAD)
        except Exception as exc:
            raise du.map_docker_error(exc, f"reading {path} in {where}") from exc
        content = du.file_from_tar(blob, path) if blob is not None else None
        if content is None or len(content) > max_bytes:
            raise BoxInvalid(f"{path} in {where} grew past the {max_bytes}-byte limit")
        return content
    raise BoxInvalid(f"{path} in {where}: too many levels of symbolic links")


def _collect(stream: Any, limit: int) -> bytes | None:
    """Read an archive stream fully (in a worker thread), or None past ``limit`` bytes."""
    parts: list[bytes] = []
    total = 0
    try:
        for chunk in stream:
            total += len(chunk)
            if total > limit:
                return None
            parts.append(chunk)
    finally:
        with contextlib.suppress(Exception):
            stream.close()
    return b"".join(parts)
