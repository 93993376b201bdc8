"""Docker-only: the size-limited ``/workspace`` (issue 8 item 7) and what it leaves behind.

Before the fix a box wrote 1.1 GiB into an unlimited named volume and the host's free space
dropped by as much; now the write fails inside the box with ENOSPC, the host holds no more
than the limit, and the loop devices and images the spoke made are gone with the box however
it goes (destroy, reap, or removed with Docker behind the spoke's back).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import docker
import pytest

from spoke.boxes.base import BoxError, BoxSpec
from spoke.boxes.docker_boxes import DockerBoxManager
from tests.boxes.helpers import get, new_box_id, put, run

pytestmark = pytest.mark.timeout(180)
MIB = 1024 * 1024


def loops_of(image: Path) -> list[str]:
    """Loop devices attached to ``image``."""
    found = []
    for entry in Path("/sys/block").glob("loop*"):
        try:
            backing = (entry / "loop" / "backing_file").read_text().strip()
        except OSError:
            continue
        if backing.removesuffix(" (deleted)") == str(image):
            found.append(entry.name)
    return found


@pytest.fixture
async def limited(docker_manager: DockerBoxManager) -> DockerBoxManager:
    reason = await docker_manager.workspace_limit_unavailable()
    if reason:
        pytest.skip(f"!!! workspace limits unavailable on this machine: {reason}")
    return docker_manager


async def test_writing_past_the_limit_fails_in_the_box(limited: DockerBoxManager,
                                                       box_image: str) -> None:
    box_id = new_box_id()
    await limited.create(box_id, BoxSpec(image=box_image, workspace_bytes=64 * MIB))
    image = limited.workspaces.image(box_id)
    out, _, res = await run(limited, box_id, [
        "sh", "-c", "dd if=/dev/zero of=/workspace/big bs=1M count=100 2>&1; rc=$?; sync; exit $rc"])
    assert res.exit_code != 0 and b"No space left on device" in out, out
    written = int((await run(limited, box_id, ["stat", "-c", "%s", "/workspace/big"]))[0])
    assert 40 * MIB < written < 64 * MIB
    # The host holds no more than the limit: the sparse image is at most its size...
    assert image.stat().st_size == 64 * MIB
    assert image.stat().st_blocks * 512 <= 64 * MIB
    # ...and gives the space back when the box deletes the file (discard).
    await run(limited, box_id, ["sh", "-c", "rm /workspace/big; sync; sleep 0.5"])
    assert image.stat().st_blocks * 512 < 16 * MIB
    # A put past the limit fails like the write did.
    with pytest.raises(BoxError, match="no space left"):
        await put(limited, box_id, "/workspace/put", b"x" * (70 * MIB))


async def test_the_default_is_one_gib_owned_by_the_box_user(limited: DockerBoxManager,
                                                            box_image: str) -> None:
    box_id = new_box_id()
    await limited.create(box_id, BoxSpec(image=box_image))
    out, _, _ = await run(limited, box_id, ["sh", "-c", "df -B1 --output=size /workspace | tail -1;"
                                            " ls -A /workspace; stat -c %u /workspace"])
    size, owner = out.split()  # nothing in it: no lost+found
    assert 900 * MIB < int(size) <= 1024 * MIB and owner == b"1000"


async def test_nothing_is_left_behind(limited: DockerBoxManager, box_image: str,
                                      docker_client: docker.DockerClient) -> None:
    a, b, c = new_box_id(), new_box_id(), new_box_id()
    for box_id in (a, b, c):
        await limited.create(box_id, BoxSpec(image=box_image, workspace_bytes=32 * MIB))
    images = {box_id: limited.workspaces.image(box_id) for box_id in (a, b, c)}
    assert all(len(loops_of(image)) == 1 for image in images.values())  # held by the mount
    await limited.destroy(a)
    assert not images[a].exists() and not loops_of(images[a])
    # Removed with Docker behind the spoke's back (hub down --rm-boxes, a test fixture): the
    # loop device frees itself with the unmount; the next reap deletes the image.
    docker_client.api.remove_container(limited.container_name(b), force=True)
    docker_client.api.remove_volume(limited.volume_name(b), force=True)
    assert not loops_of(images[b])
    await limited.reap(keep={c})
    assert not images[b].exists() and images[c].exists()
    await limited.reap(keep=set())
    assert not any(p.exists() for p in images.values())
    assert not any(loops_of(p) for p in images.values())


async def test_a_stopped_box_starts_again_with_its_files(limited: DockerBoxManager,
                                                         box_image: str,
                                                         docker_client: docker.DockerClient
                                                         ) -> None:
    box_id = new_box_id()
    await limited.create(box_id, BoxSpec(image=box_image, workspace_bytes=32 * MIB))
    await put(limited, box_id, "/workspace/keep.txt", b"still here")
    name = limited.container_name(box_id)
    docker_client.api.stop(name, timeout=1)  # also what a host reboot does
    assert not loops_of(limited.workspaces.image(box_id))  # freed with the unmount
    # Started by hand, the box finds no device: it fails instead of mounting another's.
    with pytest.raises(docker.errors.APIError):
        docker_client.api.start(name)
    info = await limited.create(box_id, BoxSpec(image=box_image, workspace_bytes=32 * MIB))
    assert info.state == "running"
    assert await get(limited, box_id, "/workspace/keep.txt", 100) == b"still here"


async def test_without_loop_devices_workspaces_fall_back(box_image: str,
                                                         docker_client: docker.DockerClient,
                                                         tmp_path: Path) -> None:
    """Where limits cannot be enforced (here: as if the engine were remote) a box gets a
    plain volume, unless the size was asked for explicitly; the reason is given."""
    mgr = DockerBoxManager(f"test-fallback-{new_box_id()[3:11]}", workspace_dir=tmp_path)
    mgr.workspaces.engine_local = False
    try:
        assert "not on this machine" in (await mgr.workspace_limit_unavailable() or "")
        box_id = new_box_id()
        await mgr.create(box_id, BoxSpec(image=box_image, workspace_bytes=32 * MIB))
        volume = docker_client.api.inspect_volume(mgr.volume_name(box_id))
        assert not volume.get("Options")
        assert not await asyncio.to_thread(mgr.workspaces.image(box_id).exists)
        with pytest.raises(BoxError, match="cannot limit the size") as refused:
            await mgr.create(new_box_id(), BoxSpec(image=box_image, workspace_bytes=32 * MIB,
                                                   require_workspace_limit=True))
        assert refused.value.code == "unavailable"
    finally:
        await mgr.reap(keep=set())
        await mgr.close()
