"""Docker-only: who a box runs as (issue 8 item 2) and whom it can reach (item 12).

Each of these failed before the fix: a box of an image without ``USER`` ran as root, and
networked boxes shared Docker's default bridge, where they could connect to each other.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator

import docker
import pytest

from spoke.boxes.base import BoxError, BoxInvalid, BoxSpec
from spoke.boxes.docker_boxes import DockerBoxManager
from spoke.boxes.docker_network import ICC_OPTION
from tests.boxes.helpers import NO_USER_IMAGE, NOBODY_IMAGE, ensure_test_images, new_box_id, run

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def test_images(box_image: str) -> None:
    ensure_test_images(box_image)


async def _ids(mgr: DockerBoxManager, box_id: str) -> str:
    out, err, res = await run(mgr, box_id, ["sh", "-c", "id -u; id -g; stat -c %u:%g /workspace; "
                                            "touch /workspace/w /tmp/t && echo writable"])
    assert res.exit_code == 0, err
    return " ".join(out.decode().split())


async def test_an_image_without_user_runs_unprivileged(
    docker_manager: DockerBoxManager, test_images: None
) -> None:
    """No USER used to mean root; now 1000:1000, owning its workspace."""
    box_id = new_box_id()
    await docker_manager.create(box_id, BoxSpec(image=NO_USER_IMAGE))
    assert await _ids(docker_manager, box_id) == "1000 1000 1000:1000 writable"
    # The policy allowing root does not make root the default: it must be asked for.
    other = new_box_id()
    await docker_manager.create(other, BoxSpec(image=NO_USER_IMAGE, allow_root=True))
    assert (await _ids(docker_manager, other)).startswith("1000 1000")


async def test_a_non_root_image_user_is_kept(
    docker_manager: DockerBoxManager, box_image: str, test_images: None
) -> None:
    box_id = new_box_id()
    await docker_manager.create(box_id, BoxSpec(image=NOBODY_IMAGE))
    assert await _ids(docker_manager, box_id) == "65534 65534 65534:65534 writable"
    sandbox = new_box_id()
    await docker_manager.create(sandbox, BoxSpec(image=box_image))  # USER 1000:1000
    assert await _ids(docker_manager, sandbox) == "1000 1000 1000:1000 writable"


async def test_a_requested_user_and_root(
    docker_manager: DockerBoxManager, box_image: str, test_images: None
) -> None:
    named = new_box_id()
    await docker_manager.create(named, BoxSpec(image=NO_USER_IMAGE, user="nobody"))
    assert await _ids(docker_manager, named) == "65534 65534 65534:65534 writable"
    numeric = new_box_id()
    await docker_manager.create(numeric, BoxSpec(image=box_image, user="2000:3000"))
    assert await _ids(docker_manager, numeric) == "2000 3000 2000:3000 writable"
    with pytest.raises(BoxError, match="allow-root") as refused:
        await docker_manager.create(new_box_id(), BoxSpec(image=NO_USER_IMAGE, user="root"))
    assert refused.value.code == "denied"
    with pytest.raises(BoxInvalid, match="does not exist"):
        await docker_manager.create(new_box_id(), BoxSpec(image=box_image, user="nosuchuser"))
    root = new_box_id()
    await docker_manager.create(root, BoxSpec(image=NO_USER_IMAGE, user="0", allow_root=True))
    out, _, _ = await run(docker_manager, root, ["sh", "-c", "id -u; grep CapEff /proc/self/status"])
    assert out.split() == [b"0", b"CapEff:", b"0000000000000000"]  # root, but no capabilities
    assert not [c for c in docker.from_env().containers.list(
        all=True, filters={"label": f"spokehub.spoke={docker_manager.spoke_name}"})
        if "spokehub.probe" in c.labels]  # the /etc/passwd probes are gone


@pytest.fixture
def host_listener() -> Iterator[int]:
    """A TCP server on this machine (all addresses): what a networked box may still reach."""
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("0.0.0.0", 0))
    server.listen()
    server.settimeout(0.5)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            conn.sendall(b"host says hi")
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield int(server.getsockname()[1])
    stop.set()
    thread.join()
    server.close()


CONNECT = ("import socket,sys\ns=socket.socket();s.settimeout(3)\n"
           "try:\n s.connect((sys.argv[1],int(sys.argv[2])));print('connected',s.recv(20))\n"
           "except OSError as e:\n print('refused',type(e).__name__)\n")
LISTEN = ("import socket,time\ns=socket.socket();s.bind(('0.0.0.0',8080));s.listen()\n"
          "print('listening',flush=True)\nc,_=s.accept();c.sendall(b'box says hi');time.sleep(1)\n")


async def test_networked_boxes_cannot_reach_each_other(
    docker_manager: DockerBoxManager, docker_client: docker.DockerClient, box_image: str,
    host_listener: int
) -> None:
    """Two boxes on the spoke's network: one listens, the other cannot connect to it, while
    the host (the network's gateway) stays reachable. There is no internet here, so the
    gateway stands for "outside": traffic that leaves the bridge is not filtered."""
    a, b = new_box_id(), new_box_id()
    info_a = await docker_manager.create(a, BoxSpec(image=box_image, network=True))
    await docker_manager.create(b, BoxSpec(image=box_image, network=True))
    net = docker_client.api.inspect_network(docker_manager.network.name)
    assert net["Options"][ICC_OPTION] == "false"
    assert net["Labels"] == {"spokehub.managed": "1", "spokehub.spoke": docker_manager.spoke_name}
    settings = docker_client.api.inspect_container(info_a.container_id)["NetworkSettings"]
    ip_a = settings["Networks"][docker_manager.network.name]["IPAddress"]
    gateway = settings["Networks"][docker_manager.network.name]["Gateway"]
    server = await docker_manager.exec(a, ["python3", "-c", LISTEN])
    chunks = server.chunks()
    assert await asyncio.wait_for(anext(chunks), 10) == ("stdout", b"listening\n")
    out, _, _ = await run(docker_manager, a, ["python3", "-c", CONNECT, "127.0.0.1", "8080"])
    assert out.startswith(b"connected")  # it really listens
    out, _, _ = await run(docker_manager, b, ["python3", "-c", CONNECT, ip_a, "8080"])
    assert out.startswith(b"refused"), out  # box to box: dropped (was: connected)
    out, _, _ = await run(docker_manager, b, ["python3", "-c", CONNECT, gateway,
                                              str(host_listener)])
    assert out == b"connected b'host says hi'\n", out  # out of the bridge: fine
    await server.kill()


async def test_the_network_goes_with_the_last_networked_box(
    docker_manager: DockerBoxManager, docker_client: docker.DockerClient, box_image: str
) -> None:
    def exists() -> bool:
        return bool(docker_client.api.networks(names=[docker_manager.network.name]))

    a, b, offline = new_box_id(), new_box_id(), new_box_id()
    await docker_manager.create(offline, BoxSpec(image=box_image))
    assert not exists()  # made on first use only
    await docker_manager.create(a, BoxSpec(image=box_image, network=True))
    await docker_manager.create(b, BoxSpec(image=box_image, network=True))
    await docker_manager.destroy(a)
    assert exists()  # b still uses it
    await docker_manager.destroy(b)
    assert not exists()
    # The reap removes it too, e.g. when the box went behind the spoke's back.
    c = new_box_id()
    await docker_manager.create(c, BoxSpec(image=box_image, network=True))
    docker_client.api.remove_container(docker_manager.container_name(c), force=True)
    assert exists()
    await docker_manager.reap(keep={offline})
    assert not exists()
    assert [i.id for i in await docker_manager.list()] == [offline]
