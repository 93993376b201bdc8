"""Docker-only: the stock of pre-formatted workspace images (spoke/boxes/workspace_stock.py)
and the one-ioctl loop attach (spoke/boxes/loop_device.py), issue 14 follow-up.

A create of the default size takes a stock image instead of formatting one; the box gets
what a fresh image gives (exact size, empty, root owned by its user); an image is never
handed to two boxes; the stock refills, and nothing of it outlives the manager (close) or a
crash (reap of partial images).
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from spoke.boxes.base import DEFAULT_WORKSPACE_BYTES, BoxSpec
from spoke.boxes.docker_boxes import DockerBoxManager
from spoke.boxes.workspace_stock import PARTIAL_PREFIX
from tests.boxes.helpers import new_box_id, run
from tests.boxes.test_docker_workspace import loops_of

pytestmark = pytest.mark.timeout(180)
MIB = 1024 * 1024


async def stocked(mgr: DockerBoxManager, n: int) -> dict[int, Path]:
    """Wait until ``mgr``'s stock holds ``n`` ready images; their inodes (a rename keeps
    the inode, so a box's image shows which stock image it was)."""
    await mgr.workspaces.stock.settled()
    assert len(mgr.workspaces.stock.ready()) == n
    return {p.stat().st_ino: p for p in mgr.workspaces.stock.ready()}


@pytest.fixture
async def stock_dir(tmp_path: Path) -> Path:
    return tmp_path / "workspaces"


@pytest.fixture
async def mgr(box_image: str, stock_dir: Path) -> AsyncIterator[DockerBoxManager]:
    manager = DockerBoxManager(f"test-{uuid.uuid4().hex[:12]}", workspace_dir=stock_dir)
    reason = await manager.workspace_limit_unavailable()
    if reason:
        await manager.close()
        pytest.skip(f"!!! workspace limits unavailable on this machine: {reason}")
    yield manager
    try:
        await manager.reap(keep=set())
    finally:
        await manager.close()


async def test_a_default_create_takes_a_stock_image_and_the_stock_refills(
        mgr: DockerBoxManager, box_image: str) -> None:
    first = new_box_id()
    await mgr.create(first, BoxSpec(image=box_image))  # formats its own, starts the stock
    ready = await stocked(mgr, 2)
    box_id = new_box_id()
    await mgr.create(box_id, BoxSpec(image=box_image))
    image = mgr.workspaces.image(box_id)
    assert image.stat().st_ino in ready and image.stat().st_size == DEFAULT_WORKSPACE_BYTES
    assert image.stat().st_ino not in {p.stat().st_ino for p in mgr.workspaces.stock.ready()}
    # What a fresh image gives: the exact size, empty, root owned by the box's user.
    out, _, _ = await run(mgr, box_id, ["sh", "-c", "df -B1 --output=size /workspace | tail -1;"
                                        " ls -A /workspace; stat -c %u /workspace"])
    size, owner = out.split()
    assert 900 * MIB < int(size) <= 1024 * MIB and owner == b"1000"
    assert (await run(mgr, box_id, ["sh", "-c", "echo hi > /workspace/f && cat /workspace/f"])
            )[0] == b"hi\n"
    await stocked(mgr, 2)  # refilled


async def test_concurrent_creates_never_share_an_image(mgr: DockerBoxManager,
                                                       box_image: str) -> None:
    await mgr.create(new_box_id(), BoxSpec(image=box_image))
    await stocked(mgr, 2)
    ids = [new_box_id() for _ in range(4)]  # more than the stock holds
    await asyncio.gather(*(mgr.create(b, BoxSpec(image=box_image)) for b in ids))
    inodes = [mgr.workspaces.image(b).stat().st_ino for b in ids]
    assert len(set(inodes)) == len(ids)
    assert not set(inodes) & {p.stat().st_ino for p in mgr.workspaces.stock.ready()}
    for b in ids:  # each box sees only its own files
        await run(mgr, b, ["sh", "-c", f"echo {b} > /workspace/who"])
    for b in ids:
        assert (await run(mgr, b, ["cat", "/workspace/who"]))[0] == f"{b}\n".encode()


async def test_another_size_formats_its_own(mgr: DockerBoxManager, box_image: str) -> None:
    await mgr.create(new_box_id(), BoxSpec(image=box_image))
    ready = await stocked(mgr, 2)
    box_id = new_box_id()
    await mgr.create(box_id, BoxSpec(image=box_image, workspace_bytes=32 * MIB))
    assert mgr.workspaces.image(box_id).stat().st_size == 32 * MIB
    assert mgr.workspaces.image(box_id).stat().st_ino not in ready


async def test_a_new_process_uses_a_stock_left_behind(mgr: DockerBoxManager, box_image: str,
                                                      stock_dir: Path) -> None:
    await mgr.create(new_box_id(), BoxSpec(image=box_image))
    ready = await stocked(mgr, 2)
    other = DockerBoxManager(mgr.spoke_name, workspace_dir=stock_dir)  # a restarted spoke
    try:
        box_id = new_box_id()
        await other.create(box_id, BoxSpec(image=box_image))
        assert other.workspaces.image(box_id).stat().st_ino in ready
        assert await other.destroy(box_id)
    finally:
        await other.close()


async def test_close_and_reap_leave_nothing(box_image: str, stock_dir: Path) -> None:
    mgr = DockerBoxManager(f"test-{uuid.uuid4().hex[:12]}", workspace_dir=stock_dir)
    if await mgr.workspace_limit_unavailable():
        pytest.skip("!!! workspace limits unavailable on this machine")
    try:
        box_id = new_box_id()
        await mgr.create(box_id, BoxSpec(image=box_image))
        await stocked(mgr, 2)
        # A crash mid-format leaves a partial image: the reap deletes it when its process is
        # gone, and keeps one a live process is still formatting.
        dead = stock_dir / f"{PARTIAL_PREFIX}999999999-abc.tmp"
        alive = stock_dir / f"{PARTIAL_PREFIX}{os.getpid()}-abc.tmp"
        dead.write_bytes(b""), alive.write_bytes(b"")
        await mgr.reap(keep={box_id})
        assert not dead.exists() and alive.exists()
        alive.unlink()
        await mgr.reap(keep=set())
    finally:
        await mgr.close()
    assert not await asyncio.to_thread(stock_dir.exists)  # the stock went with the manager; nothing else was left


async def test_without_loop_configure_losetup_attaches(mgr: DockerBoxManager,
                                                       box_image: str) -> None:
    mgr.workspaces._configure_off = True  # a kernel before 5.8
    box_id = new_box_id()
    await mgr.create(box_id, BoxSpec(image=box_image, workspace_bytes=32 * MIB))
    image = mgr.workspaces.image(box_id)
    assert len(loops_of(image)) == 1  # held by the mount
    assert (await run(mgr, box_id, ["sh", "-c", "echo ok > /workspace/f && cat /workspace/f"])
            )[0] == b"ok\n"
    assert await mgr.destroy(box_id)
    assert not loops_of(image) and not image.exists()


async def test_the_reap_leaves_a_workspace_being_made_alone(mgr: DockerBoxManager,
                                                            box_image: str) -> None:
    """A reap (the spoke's connect) while a create (a warm-pool refill) has made the volume
    but not yet the container: removing the volume made Docker give the box an unlabelled,
    unlimited volume of that name (seen in tests/boxes/test_warm_pool.py)."""
    box_id = new_box_id()
    spec = BoxSpec(image=box_image, workspace_bytes=32 * MIB)
    async with mgr.workspaces.box_lock(box_id):
        volume, _ = await mgr.volumes.make(box_id, spec, 1000, 1000)
        await mgr.reap(keep=set())
        api = await mgr._api()
        assert api.inspect_volume(volume)["Labels"]
        assert mgr.workspaces.image(box_id).exists()
    await mgr.reap(keep=set())  # no longer being made, no container: it goes
    assert not mgr.workspaces.image(box_id).exists()
    assert not api.volumes(filters={"name": volume})["Volumes"]
