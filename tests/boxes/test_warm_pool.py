"""Warm pools (issue 14): ready boxes per image, claimed by ``create``, on real Docker.

A claimed box must be indistinguishable from a cold one (hardening, limits, network,
environment, an empty workspace owned by its user, its id everywhere), never handed out
twice, counted against ``--max-boxes``, kept by the reap and adopted by a restarted spoke.
The last test runs a real hub and a real ``spoke join --warm`` process.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import docker
import pytest

from protocol.verbs import Empty
from spoke.boxes.base import BoxSpec
from spoke.boxes.docker_boxes import DockerBoxManager
from spoke.boxes.docker_util import LABEL_POOL
from spoke.boxes.warm_pool import WarmPool, parse_warm, pool_template
from spoke.dispatcher import Dispatcher
from spoke.policy import Policy
from spoke.service import SpokeOptions
from tests.boxes.helpers import new_box_id, run
from tests.boxes.test_docker_isolation import CONNECT, LISTEN, host_listener  # noqa: F401
from tests.cluster import Hub, Spoke, wait_until

pytestmark = pytest.mark.timeout(300)

Warm = Callable[..., Awaitable[tuple[DockerBoxManager, WarmPool]]]


async def wait_ready(pool: WarmPool, image: str, n: int | None = None) -> None:
    """Until ``image``'s pool holds ``n`` (default: its target) ready boxes; a failed refill
    fails the test with its error instead of waiting for the timeout."""
    state = pool.pools[image]
    want = state.target if n is None else n
    while len(state.ready) < want:
        assert state.last_error is None, f"the pool could not make a box: {state.last_error}"
        await asyncio.sleep(0.05)


@pytest.fixture
async def warm(box_image: str) -> AsyncIterator[Warm]:
    """Managers with warm pools of the sandbox image, removed with all they made."""
    made: list[tuple[DockerBoxManager, WarmPool]] = []

    async def make(n: int = 1, *, spoke: str | None = None, max_boxes: int = 20,
                   policy: Policy | None = None) -> tuple[DockerBoxManager, WarmPool]:
        mgr = DockerBoxManager(spoke or f"test-{uuid.uuid4().hex[:12]}")
        policy = policy or Policy(allowed_images=(box_image,), max_boxes=max_boxes)
        pool = WarmPool(mgr, {box_image: n}, max_boxes=max_boxes, template=pool_template(policy))
        mgr.warm = pool
        made.append((mgr, pool))
        await pool.start()
        await wait_ready(pool, box_image)
        return mgr, pool

    yield make
    for mgr, pool in reversed(made):
        if mgr._closed:  # a test's restart closed it; its successor cleans up
            continue
        try:
            await pool.stop(remove=True)
            await mgr.reap(keep=set())
        finally:
            await mgr.close()


def _default_spec(image: str, **kw: Any) -> BoxSpec:
    """What the dispatcher asks for a create with no options (the policy's defaults)."""
    return BoxSpec(**{**vars(pool_template(Policy(allowed_images=(image,)))), "image": image,
                      "network": False, **kw})


def test_warm_option_syntax(tmp_path: Path) -> None:
    assert parse_warm("spokehub-sandbox:bookworm=3") == ("spokehub-sandbox:bookworm", 3)
    for bad in ("nothing", "=2", "img=x", "img=-1", "img=65", "a b=1"):
        with pytest.raises(ValueError, match="--warm"):
            parse_warm(bad)
    opts = SpokeOptions.from_cli(tmp_path / "a", {"allow_image": ("img:1",),
                                                  "warm": ("img:1=2",)})
    assert opts.warm == {"img:1": 2}
    with pytest.raises(ValueError, match="more than --max-boxes 2"):
        SpokeOptions.from_cli(tmp_path / "b", {"allow_image": ("img:1",), "max_boxes": 2,
                                               "warm": ("img:1=3",)})
    with pytest.raises(ValueError, match="not among the allowed images"):
        SpokeOptions.from_cli(tmp_path / "c", {"allow_image": ("img:1",), "warm": ("other=1",)})
    with pytest.raises(ValueError, match="twice"):
        SpokeOptions.from_cli(tmp_path / "d", {"allow_image": ("img:1",),
                                               "warm": ("img:1=1", "img:1=2")})
    # Saved for `spoke run`, and N=0 drops the pool.
    again = SpokeOptions.from_cli(tmp_path / "a", {"warm": ("img:1=0",)})
    assert again.warm == {}


async def test_a_claimed_box_is_a_hardened_box_with_the_request_applied(
    warm: Warm, docker_client: docker.DockerClient, box_image: str
) -> None:
    mgr, pool = await warm(1)
    pool_id = pool.pools[box_image].ready[0]
    assert await mgr.list() == []  # a pool box is not a box yet
    box_id = new_box_id()
    spec = _default_spec(box_image, memory_bytes=256 << 20, cpus=0.5, pids=64,
                         env={"GREETING": "hello warm"})
    info = await mgr.create(box_id, spec)
    assert info.id == box_id and info.state == "running" and not info.network
    data = docker_client.api.inspect_container(info.container_id)
    assert data["Config"]["Labels"]["spokehub.box"] == pool_id  # it was that pool box
    assert data["Name"] == "/" + mgr.container_name(box_id)
    host = data["HostConfig"]
    assert host["ReadonlyRootfs"] is True
    assert host["CapDrop"] == ["ALL"] and not host.get("CapAdd")
    assert "no-new-privileges" in host["SecurityOpt"] and not host.get("Privileged")
    assert (host["Memory"], host["MemorySwap"]) == (256 << 20, 256 << 20)
    assert (host["NanoCpus"], host["PidsLimit"]) == (500_000_000, 64)
    assert set(host["Tmpfs"]) == {"/tmp", "/run"} and host["Init"] is True
    out, _, res = await run(mgr, box_id, ["sh", "-c", "echo $GREETING; id -u; id -g; "
                                          "stat -c %u:%g /workspace; ls -A /workspace | wc -l; "
                                          "grep -E '^(CapEff|NoNewPrivs)' /proc/self/status; "
                                          "ls /sys/class/net; cat /sys/fs/cgroup/pids.max 2>/dev/null "
                                          "|| cat /sys/fs/cgroup/pids/pids.max"])
    assert res.exit_code == 0
    assert out.decode().split("\n")[:5] == ["hello warm", "1000", "1000", "1000:1000", "0"]
    assert b"CapEff:\t0000000000000000" in out and b"NoNewPrivs:\t1" in out
    assert out.split()[-2:] == [b"lo", b"64"]  # no network; the pids limit is in force
    _, err, res = await run(mgr, box_id, ["sh", "-c", "echo x > /escape"])
    assert res.exit_code != 0 and b"Read-only" in err
    out, _, _ = await run(mgr, box_id, ["sh", "-c", "echo $GREETING"], env={"GREETING": "x"})
    assert out == b"x\n"  # an exec's own env wins
    assert [i.id for i in await mgr.list()] == [box_id]
    assert (await mgr.get(box_id)).created_at == info.created_at
    # The pool refills in the background; the claimed box goes with its workspace.
    await wait_ready(pool, box_image)
    assert pool.pools[box_image].ready[0] != pool_id
    assert await mgr.destroy(box_id)
    assert not docker_client.api.volumes(filters={"name": mgr.volume_name(pool_id)})["Volumes"]
    assert [i.id for i in await mgr.list()] == []


async def test_a_claimed_box_joins_the_network_and_stays_isolated(
    warm: Warm, docker_client: docker.DockerClient, box_image: str, host_listener: int  # noqa: F811
) -> None:
    mgr, pool = await warm(2)
    for pool_id in pool.pools[box_image].ready:
        networks = docker_client.api.inspect_container(mgr.container_name(pool_id))[
            "NetworkSettings"]["Networks"]
        assert networks == {}  # made on the box network, disconnected until claimed
    a, b = new_box_id(), new_box_id()
    info_a = await mgr.create(a, _default_spec(box_image, network=True))
    info_b = await mgr.create(b, _default_spec(box_image, network=True))
    assert info_a.network and info_b.network
    assert LABEL_POOL in docker_client.api.inspect_container(info_b.container_id)[
        "Config"]["Labels"]
    settings = docker_client.api.inspect_container(info_a.container_id)["NetworkSettings"]
    ip_a = settings["Networks"][mgr.network.name]["IPAddress"]
    gateway = settings["Networks"][mgr.network.name]["Gateway"]
    server = await mgr.exec(a, ["python3", "-c", LISTEN])
    chunks = server.chunks()
    assert await asyncio.wait_for(anext(chunks), 30) == ("stdout", b"listening\n")
    out, _, _ = await run(mgr, b, ["python3", "-c", CONNECT, ip_a, "8080"])
    assert out.startswith(b"refused"), out  # box to box: dropped
    out, _, _ = await run(mgr, b, ["python3", "-c", CONNECT, gateway, str(host_listener)])
    assert out == b"connected b'host says hi'\n", out  # out of the bridge: fine
    await server.kill()


async def test_concurrent_creates_never_share_a_pool_box(
    warm: Warm, docker_client: docker.DockerClient, box_image: str
) -> None:
    mgr, pool = await warm(3)
    ids = [new_box_id() for _ in range(5)]
    infos = await asyncio.gather(*(mgr.create(i, _default_spec(box_image)) for i in ids))
    assert [i.id for i in infos] == ids
    assert len({i.container_id for i in infos}) == 5
    claimed = [i for i in infos if LABEL_POOL in
               docker_client.api.inspect_container(i.container_id)["Config"]["Labels"]]
    assert len(claimed) >= 3  # the three ready ones, at least (refills may add more)
    assert sorted(i.id for i in await mgr.list()) == sorted(ids)
    again = await mgr.create(ids[0], _default_spec(box_image))  # idempotent, still
    assert again.container_id == infos[0].container_id


async def test_pool_boxes_count_against_max_boxes(
    warm: Warm, docker_client: docker.DockerClient, box_image: str
) -> None:
    mgr, pool = await warm(2, max_boxes=3)

    def containers() -> int:
        return len(docker_client.api.containers(
            all=True, filters={"label": f"spokehub.spoke={mgr.spoke_name}"}))

    assert containers() == 2
    cold = [new_box_id(), new_box_id()]
    for box_id in cold:  # incompatible (another user): cold creates, which evict pool boxes
        info = await mgr.create(box_id, _default_spec(box_image, user="1000:1000"))
        assert LABEL_POOL not in docker_client.api.inspect_container(
            info.container_id)["Config"]["Labels"]
        assert containers() <= 3
    await mgr.destroy(cold[0])
    assert len(pool.pools[box_image].ready) == 1
    await wait_ready(pool, box_image, 2)  # room for one again: the refill takes it
    assert containers() == 3


async def test_spoke_info_shows_the_pools(warm: Warm, box_image: str) -> None:
    mgr, pool = await warm(1)
    policy = Policy(allowed_images=(box_image,))
    info = await Dispatcher("sp", "0", mgr, policy, chunk_bytes=65536).spoke_info(
        Empty(), None)  # type: ignore[arg-type]  # spoke.info streams nothing
    assert info.capacity["warm"] == {box_image: "1/1"}
    assert info.boxes == [] and info.capacity["free_boxes"] == policy.max_boxes


async def test_reap_keeps_pool_boxes_and_a_restart_adopts_them(
    warm: Warm, docker_client: docker.DockerClient, box_image: str
) -> None:
    mgr, pool = await warm(2)
    claimed = new_box_id()
    await mgr.create(claimed, _default_spec(box_image, env={"A": "1"}))
    kept = new_box_id()
    await mgr.create(kept, _default_spec(box_image, env={"K": "kept"}))
    await wait_ready(pool, box_image)
    ready = list(pool.pools[box_image].ready)
    assert sorted(await mgr.reap(keep={kept})) == [claimed]  # never a pool box
    assert [i.id for i in await mgr.list()] == [kept]
    for pool_id in ready:  # still there, with their workspaces
        assert docker_client.api.inspect_container(mgr.container_name(pool_id))["State"][
            "Running"]
    # A restart (a new manager of the same spoke) adopts the ready ones and keeps the
    # claimed box's environment.
    await wait_ready(pool, box_image)
    before = set(pool.pools[box_image].ready)
    await pool.stop()
    await mgr.close()
    mgr2, pool2 = await warm(2, spoke=mgr.spoke_name)
    assert set(pool2.pools[box_image].ready) == before
    out, _, _ = await run(mgr2, kept, ["sh", "-c", "echo $K"])
    assert out == b"kept\n"
    box_id = new_box_id()
    info = await mgr2.create(box_id, _default_spec(box_image))
    assert docker_client.api.inspect_container(info.container_id)["Config"]["Labels"][
        "spokehub.box"] in before


async def test_an_incompatible_request_is_created_cold(
    warm: Warm, docker_client: docker.DockerClient, box_image: str
) -> None:
    mgr, pool = await warm(1)
    ready = list(pool.pools[box_image].ready)
    for spec in (_default_spec(box_image, workspace_bytes=128 << 20),
                 _default_spec(box_image, workdir="/tmp"),
                 _default_spec(box_image, user="1000")):
        info = await mgr.create(new_box_id(), spec)
        labels = docker_client.api.inspect_container(info.container_id)["Config"]["Labels"]
        assert LABEL_POOL not in labels
    assert list(pool.pools[box_image].ready) == ready  # untouched


def test_warm_create_through_the_hub(hub: Hub, spokes: list[Spoke], tmp_path: Path) -> None:
    """``spoke join --warm``: the startup line, ``spoke.info`` capacity, a create through the
    hub that claims a pool box, exec and destroy on it."""
    image = "spokehub-sandbox:bookworm"
    spoke = Spoke(tmp_path, hub, extra=["--warm", f"{image}=1"])
    spokes.append(spoke)
    spoke.join()
    proc = spoke.proc
    assert proc is not None
    wait_until(lambda: "warm pools" in proc.output(), what="the warm pool startup line")
    client = docker.from_env()

    def pool_ready() -> list[Any]:
        return [c for c in client.api.containers(filters={"label": [
            f"spokehub.spoke={spoke.name}", LABEL_POOL]})]

    wait_until(pool_ready, timeout=120, what="a ready pool box")
    pool_id = pool_ready()[0]["Labels"]["spokehub.box"]
    created = hub.cli_json("box", "create", "--spoke", spoke.name, "--image", image,
                           "--env", "WHO=warm")
    data = client.api.inspect_container(f"spokehub-{spoke.name}-{created['id']}")
    assert data["Config"]["Labels"]["spokehub.box"] == pool_id
    res = hub.cli("box", "exec", created["id"], "--", "sh", "-c", "echo $WHO; ls -A /workspace")
    assert (res.returncode, res.stdout) == (0, "warm\n"), res.stderr
    listed = {b["id"] for b in hub.cli_json("box", "list")}
    assert created["id"] in listed and pool_id not in listed
    assert hub.cli("box", "rm", created["id"]).returncode == 0
    assert not client.api.volumes(filters={"name": f"spokehub-{spoke.name}-{pool_id}-ws"})[
        "Volumes"]
    # The refill made another; a restarted spoke (`spoke run`, options saved) adopts it.
    wait_until(pool_ready, timeout=120, what="the pool refilled")
    refilled = pool_ready()[0]["Labels"]["spokehub.box"]
    spoke.stop()
    leak = new_box_id()  # a box the hub never heard of: the reconnect's reap removes it

    async def make_leak() -> None:
        mgr = DockerBoxManager(spoke.name, workspace_dir=spoke.dir / "workspaces")
        try:
            await mgr.create(leak, BoxSpec(image=image))
        finally:
            await mgr.close()

    asyncio.run(make_leak())
    spoke.run()
    adopted = f"ready now: {{'{image}': '1/1'}}"  # before any refill: the adopted box
    wait_until(lambda: spoke.proc is not None and adopted in spoke.proc.output(),
               what="the restarted spoke's startup line")
    wait_until(lambda: not client.api.containers(all=True, filters={"name": leak}),
               what="the reconnect's reap")
    assert [c["Labels"]["spokehub.box"] for c in pool_ready()] == [refilled]  # kept, adopted
    listed = {b["id"] for b in hub.cli_json("box", "ls", "--all")}
    assert refilled not in listed and leak not in listed
    client.close()
