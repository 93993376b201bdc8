"""Copying single files in and out of Docker boxes with the archive API, streamed.

The archive API sees the image filesystem and volumes (so ``/workspace``) but not tmpfs
mounts such as ``/tmp``: those go through a command in the box instead
(:mod:`spoke.boxes.docker_tmpfs`); the manager picks.

Nothing is held whole (issue 8 item 6): an upload is a tar made on the fly — a header,
the data as it arrives from the hub, the padding — sent to ``PUT …/archive`` from a worker
thread (:func:`spoke.boxes.transfer.feed_thread`); a download's archive is untarred as it
streams and handed on chunk by chunk (:func:`spoke.boxes.transfer.stream_from_thread`).
An upload that fails part-way (too short, too long, the workspace full, the caller gone)
leaves what was written so far at the path, as ``docker cp`` does; the call fails.

Files put into a box are owned by the box's user (resolved from the box's own
``/etc/passwd`` when the user is a name) so commands can edit what the hub uploaded;
Docker's ``copyUIDGID`` cannot do this for numeric ``uid:gid`` users. Where an upload
goes (into a directory, with missing parents) is decided by :func:`base.plan_put`, shared
with the fake manager; this module only looks paths up and moves the archive.
"""

from __future__ import annotations

import posixpath
import tarfile
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterator
from concurrent.futures import Executor
from typing import Any

import docker.errors
import docker.utils

from spoke.boxes import docker_util as du
from spoke.boxes.base import BoxError, BoxInvalid, BoxNotFound, PutPlan, exactly
from spoke.boxes.docker_raw_api import engine_for
from spoke.boxes.transfer import PushToLoop, feed_thread, stream_from_thread

Call = Callable[..., Awaitable[Any]]  # runs a blocking callable in the manager's executor
MAX_SYMLINK_HOPS = 8
READ_CHUNK = 256 * 1024  # bytes read from the archive stream at a time (one link chunk)


async def put_stream(call: Call, pool: Executor, api: Any, container_id: str, where: str,
                     plan: PutPlan, chunks: AsyncIterator[bytes], size: int, mode: int,
                     owner: tuple[int, int]) -> None:
    """Write exactly ``size`` bytes of ``chunks`` at ``plan.path`` and create
    ``plan.make_dirs`` (mode 0755), all in one archive extracted at ``plan.base`` and owned
    by ``owner``, the box's user; the archive is generated as the data arrives.
    Pinned by tests/boxes/test_conformance_files.py and tests/test_box_hardening.py (RSS)."""
    dirs = [posixpath.relpath(d, plan.base) for d in plan.make_dirs]
    head = du.tar_head(posixpath.relpath(plan.path, plan.base), size, mode, *owner, dirs=dirs)
    tail = du.tar_tail(size)

    def send(data: Iterator[bytes]) -> None:
        def pieces() -> Iterator[bytes]:
            yield head
            yield from data
            yield tail

        engine = engine_for(api)
        if engine is not None:
            engine.put_archive_stream(container_id, plan.base, pieces(),
                                      len(head) + size + len(tail))
        else:  # TCP/TLS/ssh engines: the SDK sends the generator chunked
            api.put_archive(container_id, plan.base, pieces())

    try:
        await feed_thread(pool, exactly(chunks, size), send)
    except BoxError:
        raise
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


async def resolve_owner(call: Call, pool: Executor, api: Any, container_id: str,
                        user: str) -> tuple[int, int]:
    """uid/gid of the box's user (Docker's ``Config.User``: ``name|uid[:group|gid]``), as
    Docker resolves it (:func:`docker_util.resolve_ids`); the box's own tables are read only
    when a name needs them. Unknown names count as root (0, 0), the archive API's default."""
    name, group = du.parse_user(user)
    passwd = groups = ""
    if not name.isdigit() or not group or not group.isdigit():
        passwd = await _read_text(call, pool, api, container_id, "/etc/passwd")
    if group and not group.isdigit():
        groups = await _read_text(call, pool, api, container_id, "/etc/group")
    return du.resolve_ids(user, passwd, groups) or (0, 0)


async def _read_text(call: Call, pool: Executor, api: Any, container_id: str,
                     path: str) -> str:
    parts: list[bytes] = []
    try:
        async for chunk in read_stream(call, pool, api, container_id, "box", path, 1 << 20):
            parts.append(chunk)
    except BoxError:
        return ""
    return b"".join(parts).decode(errors="replace")


def _open_archive(api: Any, container_id: str, path: str) -> tuple[Any, dict[str, Any]]:
    """``GET …/archive`` (in a worker thread) with the body left unread: the response (to
    read from and close) and Docker's stat of ``path``."""
    # identity: the engine would gzip the archive for requests' default Accept-Encoding,
    # costing it CPU for nothing on a local socket.
    res = api._get(api._url("/containers/{0}/archive", container_id), params={"path": path},
                   stream=True, headers={"Accept-Encoding": "identity"})
    res.raw.decode_content = True  # should it gzip anyway
    try:
        api._raise_for_status(res)
        header = res.headers.get("X-Docker-Container-Path-Stat")
        stat: dict[str, Any] = docker.utils.decode_json_header(header) if header else {}
    except BaseException:
        res.close()
        raise
    return res, stat


async def read_stream(call: Call, pool: Executor, api: Any, container_id: str, where: str,
                      path: str, max_bytes: int) -> AsyncGenerator[bytes, None]:
    """The content of regular file ``path``, chunk by chunk as the archive streams,
    following symlinks like a reader in the box would. BoxNotFound if missing, BoxInvalid
    for directories and files over ``max_bytes`` (checked before the first byte, and again
    while reading in case the file grows). Pinned by tests/boxes/test_conformance_files.py."""
    current = path
    for _hop in range(MAX_SYMLINK_HOPS):
        try:
            res, stat = await call(_open_archive, api, container_id, current)
        except docker.errors.NotFound:
            raise BoxNotFound(f"no such file {path} in {where}") from None
        except Exception as exc:
            raise du.map_docker_error(exc, f"reading {path} in {where}") from exc
        kind, size = du.stat_kind(stat), int(stat.get("size", 0))
        if kind != "file" or size > max_bytes:
            res.close()
        if kind == "symlink" and stat.get("linkTarget"):
            target = str(stat["linkTarget"])
            current = posixpath.normpath(posixpath.join(posixpath.dirname(current), target))
            continue
        if kind == "dir":
            raise BoxInvalid(f"{path} in {where} is a directory, not a file")
        if size > max_bytes:
            raise BoxInvalid(f"{path} in {where} is {size} bytes, more than the "
                             f"{max_bytes}-byte limit")

        def produce(channel: PushToLoop, res: Any = res) -> None:
            try:
                _untar_one(res.raw, channel, f"{path} in {where}", max_bytes)
            finally:
                res.close()

        try:
            async for chunk in stream_from_thread(pool, produce):
                yield chunk
        except BoxError:
            raise
        except Exception as exc:
            raise du.map_docker_error(exc, f"reading {path} in {where}") from exc
        return
    raise BoxInvalid(f"{path} in {where}: too many levels of symbolic links")


def _untar_one(raw: Any, channel: PushToLoop, what: str, max_bytes: int) -> None:
    """Worker thread: read the archive of one file from ``raw`` (tarfile in stream mode, so
    only a block is buffered) and put its content into ``channel``."""
    # bufsize: a stream-mode tarfile reads its source in pieces of this size (10 KiB by
    # default: ~26 urllib3 reads, each with its own Python overhead, per 256 KiB chunk).
    with tarfile.open(fileobj=raw, mode="r|", bufsize=READ_CHUNK) as tar:
        for member in tar:
            if member.isfile():
                fh = tar.extractfile(member)
                assert fh is not None
                total = 0
                while piece := fh.read(READ_CHUNK):
                    total += len(piece)
                    if total > max_bytes:
                        raise BoxInvalid(f"{what} grew past the {max_bytes}-byte limit")
                    if not channel.put(piece):
                        return  # the reader went away
                return
            if member.isdir():
                raise BoxInvalid(f"{what} is a directory, not a file")
    raise BoxInvalid(f"{what} is not a regular file")
