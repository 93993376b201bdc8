"""Small helpers shared by the box tests."""

from __future__ import annotations

import random
import secrets
from typing import Any

from spoke.boxes.base import BoxManager, ExecResult, one_chunk, read_all

# Lists every process's command line inside the box (no `ps` needed).
LIST_PROCS = "for f in /proc/[0-9]*/cmdline; do tr '\\0' ' ' < \"$f\" 2>/dev/null; echo; done"


def new_box_id() -> str:
    return "bx_" + secrets.token_hex(8)


def unique_sleep() -> str:
    """A `sleep` argument no other test (or process) is using, so "is it gone?" is exact."""
    return str(random.randint(310_000, 399_999))


async def run(
    manager: BoxManager, box_id: str, cmd: list[str], **kwargs: Any
) -> tuple[bytes, bytes, ExecResult]:
    handle = await manager.exec(box_id, cmd, **kwargs)
    out: list[bytes] = []
    err: list[bytes] = []
    async for stream, data in handle.chunks():
        (out if stream == "stdout" else err).append(data)
    return b"".join(out), b"".join(err), await handle.wait()


async def process_list(manager: BoxManager, box_id: str) -> str:
    out, _err, res = await run(manager, box_id, ["sh", "-c", LIST_PROCS])
    assert res.exit_code == 0
    return out.decode(errors="replace")


def container_count(client: Any, box_id: str) -> int:
    return len(client.api.containers(all=True, filters={"label": f"spokehub.box={box_id}"}))


async def put(manager: BoxManager, box_id: str, path: str, data: bytes, mode: int = 0o644,
              **kwargs: Any) -> str:
    """``put_file`` of in-memory ``data`` (the manager takes a chunk stream and its size)."""
    return await manager.put_file(box_id, path, one_chunk(data), len(data), mode, **kwargs)


async def get(manager: BoxManager, box_id: str, path: str, max_bytes: int) -> bytes:
    """``get_file`` joined into bytes."""
    return await read_all(manager.get_file(box_id, path, max_bytes))


NO_USER_IMAGE = "spokehub-test-nouser:latest"  # the sandbox image's files, without a USER
NOBODY_IMAGE = "spokehub-test-nobody:latest"  # the sandbox image with USER nobody


def ensure_test_images(base: str) -> None:
    """Images for the box-user tests (issue 8 item 2), made locally from ``base`` once:
    one with no ``USER`` at all (``docker export`` + ``import``: a commit cannot clear it)
    and one whose ``USER`` is the non-root name ``nobody``."""
    import docker

    client = docker.from_env()
    api = client.api
    try:
        have = {tag for image in client.images.list() for tag in image.tags}
        if NO_USER_IMAGE in have and NOBODY_IMAGE in have:
            return
        made = api.create_container(base, command=["true"])["Id"]
        try:
            if NO_USER_IMAGE not in have:
                repo, tag = NO_USER_IMAGE.split(":")
                api.import_image_from_stream(api.export(made), repository=repo, tag=tag,
                                             changes=["WORKDIR /workspace", 'CMD ["/bin/sh"]'])
            if NOBODY_IMAGE not in have:
                repo, tag = NOBODY_IMAGE.split(":")
                api.commit(made, repository=repo, tag=tag, changes=["USER nobody"])
        finally:
            api.remove_container(made, force=True)
    finally:
        client.close()
