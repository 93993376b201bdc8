"""Box create through the hub, cold and from a warm pool, vs a direct Docker SDK create +
start (real Docker).

Starts a real hub and two spokes on loopback (one with ``--warm IMAGE=2``: spoke/boxes/
warm_pool.py), then, interleaved so drift hits all alike, times:

- ``hub``: ``POST /api/boxes`` (the hub records the box, asks the spoke, which checks its
  policy and the image, chooses the user, takes a size-limited workspace and creates and
  starts a hardened container with the in-box exec agent);
- ``sdk``: the Docker SDK creating and starting the same image with the same hardening
  (read-only root, tmpfs, no capabilities, no-new-privileges, limits, init, no network, a
  non-root user) from this process, with a fresh *unlimited* named volume at /workspace.
  What it lacks next to the hub's box: the size limit of the workspace (an ext4 image on a
  loop device), the image inspect and user choice, the in-box agent's command (stdin open,
  log driver none), any bookkeeping (records, audit, inspects), and the hub and spoke hops;
- ``sdk+ws``: the same, but with the workspace the spoke makes, made by the spoke's own code
  (spoke/boxes/docker_workspace.py: a stock image of the default size renamed into place,
  the volume, the loop device attached with autoclear, the owner set after copy-up). The
  hub's box differs from it only by the spoke's checks and inspects, the agent's command,
  and the hub (``hub / sdk+ws`` is their overhead);
- ``warm``: ``POST /api/boxes`` on the warm spoke, which claims a ready pool box.

Each round waits until the warm pool and both workspace stocks are full, so every create
finds what it would in steady state (creates spaced more than a ~15 ms refill apart) and no
refill runs while anything is timed; a burst bigger than the stock (2) formats its own
images (~10 ms each more). Figures of one run, not a test.

    python benchmarks/box_create.py [--n 20] [--bin-dir DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import TypeVar

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import docker  # noqa: E402

from benchmarks.machine import describe, pct, use_executables  # noqa: E402
from spoke.boxes import docker_util as du  # noqa: E402
from spoke.boxes.base import DEFAULT_WORKSPACE_BYTES  # noqa: E402
from spoke.boxes.docker_workspace import STOCK_COUNT, LoopImages  # noqa: E402
from spoke.boxes.image import DEFAULT_IMAGE, ensure_sandbox_image  # noqa: E402
from spoke.boxes.workspace_stock import STOCK_PREFIX  # noqa: E402
from tests.cluster import Hub, Spoke, wait_until  # noqa: E402

T = TypeVar("T")

WARM = 2  # ready boxes on the warm spoke


def ready_pool_boxes(client: docker.DockerClient, spoke: str) -> int:
    """Unclaimed pool boxes of ``spoke`` (a claimed one keeps its label, under a new name)."""
    rows = client.api.containers(filters={"label": [f"{du.LABEL_SPOKE}={spoke}",
                                                    du.LABEL_POOL]})
    return sum(du.pool_ready(r.get("Labels"), (r.get("Names") or [""])[0]) for r in rows)


def direct_create(client: docker.DockerClient, volume_opts: dict[str, str] | None = None,
                  tag: str | None = None) -> tuple[Callable[[], None], Callable[[], None]]:
    """Create one hardened container (as the spoke does, minus what the module docstring
    lists); return how to start it and how to remove it."""
    tag = tag or uuid.uuid4().hex[:12]
    volume = client.volumes.create(name=f"bench-ws-{tag}", driver="local",
                                   driver_opts=volume_opts or {},
                                   labels={"spokehub.benchmark": "1"})
    container = client.containers.create(
        DEFAULT_IMAGE, command=du.KEEPALIVE_CMD, name=f"bench-direct-{tag}", detach=True,
        network_mode="none", read_only=True, tmpfs=dict(du.TMPFS),
        volumes={volume.name: {"bind": "/workspace", "mode": "rw"}}, cap_drop=["ALL"],
        security_opt=["no-new-privileges"], pids_limit=256, mem_limit=512 * 1024 * 1024,
        memswap_limit=512 * 1024 * 1024, nano_cpus=1_000_000_000, init=True, user="1000:1000",
        working_dir="/workspace", labels={"spokehub.benchmark": "1"})

    def remove() -> None:
        container.remove(force=True)
        volume.remove(force=True)

    return container.start, remove


class LimitedWorkspaces:
    """The spoke's own workspace code (LoopImages, its stock included) on an event loop in a
    thread of this process, for the ``sdk+ws`` baseline."""

    def __init__(self, directory: Path) -> None:
        self.images = LoopImages(directory)
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()

    def run(self, coro: Coroutine[object, object, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def create(self, client: docker.DockerClient) -> Callable[[], None]:
        """Create + start a container whose /workspace is made as the spoke makes it."""
        box_id = f"bx_{secrets.token_hex(8)}"

        async def make() -> None:
            opts = await self.images.make(box_id, DEFAULT_WORKSPACE_BYTES, 1000, 1000)
            async with self.images.attached(box_id) as device:  # mounted at create, start
                start, remove = await asyncio.to_thread(direct_create, client, opts, box_id)
                holder["remove"] = remove
                await self.images.own_root(device, 1000, 1000)  # after copy-up
                await asyncio.to_thread(start)

        holder: dict[str, Callable[[], None]] = {}
        try:
            self.run(make())
        except BaseException:
            if "remove" in holder:
                holder["remove"]()
            self.run(self.images.release(box_id))
            raise

        def remove() -> None:
            holder["remove"]()
            self.run(self.images.release(box_id))

        return remove

    def settled(self) -> None:
        self.run(self.images.stock.settled())

    def close(self) -> None:
        self.run(self.images.stock.drop())
        self.loop.call_soon_threadsafe(self.loop.stop)


def stock_full(workspaces: Path) -> bool:
    """Whether a spoke's workspace stock (spoke/boxes/workspace_stock.py) is full."""
    try:
        ready = [p for p in workspaces.iterdir() if p.name.startswith(STOCK_PREFIX)]
    except OSError:
        return False
    return len(ready) >= STOCK_COUNT


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=20, help="creates per path")
    parser.add_argument("--bin-dir", default=None, help="where hub and spoke are")
    args = parser.parse_args()
    use_executables(args.bin_dir)
    for line in describe(args.bin_dir):
        print(line, flush=True)
    ensure_sandbox_image(DEFAULT_IMAGE, progress=lambda line: print(f"[image] {line}",
                                                                       file=sys.stderr))
    docker_client = docker.from_env()
    with tempfile.TemporaryDirectory() as tmp:
        hub = Hub(Path(tmp))
        hub.extra = ["--log-level", "INFO"]
        hub.start()
        spoke = Spoke(Path(tmp), hub, name="bench")
        limited = LimitedWorkspaces(Path(tmp) / "bench-direct-workspaces")
        unlimited_why = limited.run(limited.images.status())
        warm = Spoke(Path(tmp), hub, name="bench-warm", extra=["--warm", f"{DEFAULT_IMAGE}={WARM}"])
        try:
            spoke.join()
            warm.join()
            api = hub.client()

            def via_hub(on: str = "bench") -> Callable[[], None]:
                box = api.request("POST", "/api/boxes", {"spoke": on, "image": DEFAULT_IMAGE})
                return lambda: api.request("DELETE", f"/api/boxes/{box['id']}")

            def direct() -> Callable[[], None]:
                start, remove = direct_create(docker_client)
                start()
                return remove

            def direct_ws() -> Callable[[], None]:
                return limited.create(docker_client)

            def pool_full(first: bool) -> None:
                wait_until(lambda: ready_pool_boxes(docker_client, "bench-warm") >= WARM,
                           timeout=300, what="the warm pool to refill")
                if unlimited_why is None and not first:  # the first create starts the stock
                    limited.settled()
                    wait_until(lambda: stock_full(spoke.dir / "workspaces"), timeout=300,
                               what="the spoke's workspace stock to refill")

            def via_warm() -> Callable[[], None]:
                return via_hub("bench-warm")

            timings: dict[str, list[float]] = {"hub": [], "sdk": [], "sdk+ws": [], "warm": []}
            paths = [("hub", via_hub), ("sdk", direct), ("sdk+ws", direct_ws),
                     ("warm", via_warm)]
            if unlimited_why is not None:
                print(f"no sdk+ws baseline: {unlimited_why}")
                paths = [p for p in paths if p[0] != "sdk+ws"]
            for i in range(args.n + 2):  # the first two of each are warm-up
                pool_full(i == 0)
                for name, create in paths:
                    started = time.perf_counter()
                    remove = create()
                    took = time.perf_counter() - started
                    remove()
                    if i >= 2:
                        timings[name].append(took)
            h50, h99 = pct(timings["hub"], 0.5), pct(timings["hub"], 0.99)
            d50, d99 = pct(timings["sdk"], 0.5), pct(timings["sdk"], 0.99)
            print(f"box create x{args.n}: hub p50 {h50 * 1000:.0f} ms  p99 {h99 * 1000:.0f} ms | "
                  f"docker SDK create+start p50 {d50 * 1000:.0f} ms  p99 {d99 * 1000:.0f} ms")
            print(f"  ratio p50 {h50 / d50:.2f}  ratio p99 {h99 / d99:.2f} (the hub's box also "
                  "gets a size-limited workspace volume and its user checked against the image)")
            if timings["sdk+ws"]:
                l50, l99 = pct(timings["sdk+ws"], 0.5), pct(timings["sdk+ws"], 0.99)
                print(f"  docker SDK create+start with the spoke's size-limited workspace p50 "
                      f"{l50 * 1000:.0f} ms  p99 {l99 * 1000:.0f} ms: hub ratio p50 "
                      f"{h50 / l50:.2f}  p99 {h99 / l99:.2f} (the hub's and spoke's own "
                      f"overhead); the workspace itself: p50 {l50 / d50:.2f}x the unlimited one")
            w50, w99 = pct(timings["warm"], 0.5), pct(timings["warm"], 0.99)
            print(f"box create from a warm pool x{args.n} (through the hub): p50 "
                  f"{w50 * 1000:.1f} ms  p99 {w99 * 1000:.1f} ms | vs cold through the hub: "
                  f"p50 ratio {w50 / h50:.3f} ({h50 / w50:.0f}x faster)")
        finally:
            warm.stop()
            spoke.stop()
            for c in docker_client.containers.list(  # a stopped spoke keeps its pool boxes
                    all=True, filters={"label": f"{du.LABEL_SPOKE}=bench-warm"}):
                c.remove(force=True)
            for v in docker_client.volumes.list(filters={"label": f"{du.LABEL_SPOKE}=bench-warm"}):
                v.remove(force=True)
            hub.stop()
            limited.close()


if __name__ == "__main__":
    main()
