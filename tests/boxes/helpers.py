"""Small helpers shared by the box tests."""

from __future__ import annotations

import random
import secrets
from typing import Any

from spoke.boxes.base import BoxManager, ExecResult

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
