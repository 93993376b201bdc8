"""Docker-only checks: what the container really looks like, labels, volumes, names."""

from __future__ import annotations

import asyncio

import docker
import pytest

from spoke.boxes.base import BoxSpec
from spoke.boxes.docker_boxes import DockerBoxManager
from spoke.boxes.docker_util import sanitize_spoke_name
from tests.boxes.helpers import container_count, new_box_id, put, run

pytestmark = pytest.mark.timeout(120)


async def test_container_is_hardened(
    docker_manager: DockerBoxManager, docker_client: docker.DockerClient, box_image: str
) -> None:
    box_id = new_box_id()
    spec = BoxSpec(image=box_image, memory_bytes=256 * 1024 * 1024, cpus=0.5, pids=64)
    info = await docker_manager.create(box_id, spec)
    data = docker_client.api.inspect_container(info.container_id)
    host = data["HostConfig"]
    assert host["ReadonlyRootfs"] is True
    assert host["CapDrop"] == ["ALL"] and not host.get("CapAdd")
    assert "no-new-privileges" in host["SecurityOpt"]
    assert host["NetworkMode"] == "none"
    assert host["PidsLimit"] == 64
    assert host["Memory"] == 256 * 1024 * 1024
    assert host["NanoCpus"] == 500_000_000
    assert host["Init"] is True
    assert not host.get("Privileged")
    assert set(host["Tmpfs"]) == {"/tmp", "/run"}
    mounts = data["Mounts"]
    assert not any("docker.sock" in (m.get("Source") or "") for m in mounts)
    assert [(m["Type"], m["Name"], m["Destination"]) for m in mounts] == [
        ("volume", docker_manager.volume_name(box_id), "/workspace")]
    labels = data["Config"]["Labels"]
    assert labels["spokehub.managed"] == "1"
    assert labels["spokehub.spoke"] == docker_manager.spoke_name
    assert labels["spokehub.box"] == box_id
    assert data["Name"] == "/" + docker_manager.container_name(box_id)

    _, err, res = await run(docker_manager, box_id, ["sh", "-c", "echo x > /escape"])
    assert res.exit_code != 0 and b"Read-only" in err
    _, _, res = await run(docker_manager, box_id, ["sh", "-c", "echo x > /workspace/ok"])
    assert res.exit_code == 0
    out, _, _ = await run(docker_manager, box_id, ["id", "-u"])
    assert out == b"1000\n"
    out, _, _ = await run(docker_manager, box_id, ["sh", "-c", "grep -E '^(CapEff|NoNewPrivs)' "
                                                   "/proc/self/status"])
    assert b"CapEff:\t0000000000000000" in out and b"NoNewPrivs:\t1" in out
    # No network at all: only the loopback interface exists.
    out, _, _ = await run(docker_manager, box_id, ["sh", "-c", "ls /sys/class/net"])
    assert out.split() == [b"lo"]


async def test_network_box_uses_a_real_network(
    docker_manager: DockerBoxManager, docker_client: docker.DockerClient, box_image: str
) -> None:
    info = await docker_manager.create(new_box_id(), BoxSpec(image=box_image, network=True))
    mode = docker_client.api.inspect_container(info.container_id)["HostConfig"]["NetworkMode"]
    assert mode != "none"


async def test_same_id_twice_makes_one_container(
    docker_manager: DockerBoxManager, docker_client: docker.DockerClient, box_image: str
) -> None:
    box_id = new_box_id()
    await docker_manager.create(box_id, BoxSpec(image=box_image))
    await docker_manager.create(box_id, BoxSpec(image=box_image))
    assert container_count(docker_client, box_id) == 1
    # A stopped box is restarted, not duplicated.
    docker_client.api.stop(docker_manager.container_name(box_id), timeout=1)
    info = await docker_manager.create(box_id, BoxSpec(image=box_image))
    assert info.state == "running" and container_count(docker_client, box_id) == 1


async def test_destroy_and_reap_remove_the_workspace_volume(
    docker_manager: DockerBoxManager, docker_client: docker.DockerClient, box_image: str
) -> None:
    a, b = new_box_id(), new_box_id()
    await docker_manager.create(a, BoxSpec(image=box_image))
    await docker_manager.create(b, BoxSpec(image=box_image))
    names = {v["Name"] for v in docker_client.api.volumes(
        filters={"label": f"spokehub.spoke={docker_manager.spoke_name}"})["Volumes"]}
    assert names == {docker_manager.volume_name(a), docker_manager.volume_name(b)}
    assert await docker_manager.destroy(a)
    # b's container vanishes behind our back: reap still cleans its volume up.
    docker_client.api.remove_container(docker_manager.container_name(b), force=True)
    assert await docker_manager.reap(keep=set()) == []
    left = docker_client.api.volumes(
        filters={"label": f"spokehub.spoke={docker_manager.spoke_name}"})["Volumes"]
    assert not left


async def test_foreign_containers_are_never_touched(
    docker_manager: DockerBoxManager, docker_client: docker.DockerClient, box_image: str
) -> None:
    """A container with our name pattern but another spoke's label is not ours."""
    box_id = new_box_id()
    foreign = docker_client.api.create_container(
        box_image, command=["true"], name=docker_manager.container_name(box_id),
        labels={"spokehub.managed": "1", "spokehub.spoke": "someone-else",
                "spokehub.box": box_id})
    try:
        assert await docker_manager.list() == []
        assert await docker_manager.destroy(box_id) is False
        assert await docker_manager.reap(keep=set()) == []
        assert docker_client.api.inspect_container(foreign["Id"])["Id"] == foreign["Id"]
    finally:
        docker_client.api.remove_container(foreign["Id"], force=True)


def test_spoke_names_are_sanitized_without_collisions() -> None:
    assert sanitize_spoke_name("laptop-1") == "laptop-1"
    weird = sanitize_spoke_name("my laptop/€")
    assert weird.startswith("my-laptop-") and all(c.isalnum() or c in "-_." for c in weird)
    assert sanitize_spoke_name("a b") != sanitize_spoke_name("a/b")
    assert sanitize_spoke_name("€€") and sanitize_spoke_name("€€")[0].isalnum()


async def test_concurrent_create_from_two_processes_makes_one_box(
    docker_manager: DockerBoxManager, docker_client: docker.DockerClient, box_image: str
) -> None:
    """Two managers of the same spoke (e.g. a restarted spoke overlapping the old one)
    race to create the same box: Docker's 409 decides, both get the same container."""
    twins = [DockerBoxManager(docker_manager.spoke_name) for _ in range(3)]
    try:
        box_id = new_box_id()
        infos = await asyncio.gather(*(m.create(box_id, BoxSpec(image=box_image))
                                       for m in [docker_manager, *twins]))
        assert len({i.container_id for i in infos}) == 1
        assert container_count(docker_client, box_id) == 1
    finally:
        for m in twins:
            await m.close()


async def test_named_user_owns_uploaded_files(
    docker_manager: DockerBoxManager, box_image: str
) -> None:
    """With ``user="sandbox"`` the uid is resolved through the box's own /etc/passwd."""
    box_id = new_box_id()
    await docker_manager.create(box_id, BoxSpec(image=box_image, user="sandbox"))
    await put(docker_manager, box_id, "/workspace/notes.txt", b"hi\n", 0o600)
    out, err, res = await run(docker_manager, box_id, [
        "sh", "-c", "id -u; stat -c '%u:%g %a' /workspace/notes.txt; echo more >> /workspace/notes.txt"])
    assert res.exit_code == 0, err
    assert out == b"1000\n1000:1000 600\n"
