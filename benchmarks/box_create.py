"""Box create through the hub, cold and from a warm pool, vs a direct Docker SDK create +
start (real Docker).

Starts a real hub and two spokes on loopback (one with ``--warm IMAGE=2``: spoke/boxes/
warm_pool.py), then, interleaved so drift hits all alike, times
``POST /api/boxes`` (the hub asks the spoke, which creates and starts a hardened container with
a size-limited workspace volume) against the Docker SDK creating and starting the same image
with the same hardening (read-only root, tmpfs, no capabilities, no-new-privileges, limits,
init, no network, a non-root user, a fresh named volume at /workspace) from this process,
and against ``POST /api/boxes`` on the warm spoke, which claims a ready pool box (each round
waits until the pool has refilled, so every warm create finds a ready box and no refill runs
while anything is timed). Figures of one run, not a test.

    python benchmarks/box_create.py [--n 20] [--bin-dir DIR]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import docker  # noqa: E402

from benchmarks.machine import describe, pct, use_executables  # noqa: E402
from spoke.boxes import docker_util as du  # noqa: E402
from spoke.boxes.image import DEFAULT_IMAGE, ensure_sandbox_image  # noqa: E402
from tests.cluster import Hub, Spoke, wait_until  # noqa: E402

WARM = 2  # ready boxes on the warm spoke


def ready_pool_boxes(client: docker.DockerClient, spoke: str) -> int:
    """Unclaimed pool boxes of ``spoke`` (a claimed one keeps its label, under a new name)."""
    rows = client.api.containers(filters={"label": [f"{du.LABEL_SPOKE}={spoke}",
                                                    du.LABEL_POOL]})
    return sum(du.pool_ready(r.get("Labels"), (r.get("Names") or [""])[0]) for r in rows)


def direct_create(client: docker.DockerClient) -> Callable[[], None]:
    """Create + start one hardened container (as the spoke does, minus the size limit of its
    workspace volume); return how to remove it."""
    tag = uuid.uuid4().hex[:12]
    volume = client.volumes.create(name=f"bench-ws-{tag}")
    container = client.containers.create(
        DEFAULT_IMAGE, command=du.KEEPALIVE_CMD, name=f"bench-direct-{tag}", detach=True,
        network_mode="none", read_only=True, tmpfs=dict(du.TMPFS),
        volumes={volume.name: {"bind": "/workspace", "mode": "rw"}}, cap_drop=["ALL"],
        security_opt=["no-new-privileges"], pids_limit=256, mem_limit=512 * 1024 * 1024,
        memswap_limit=512 * 1024 * 1024, nano_cpus=1_000_000_000, init=True, user="1000:1000",
        working_dir="/workspace", labels={"spokehub.benchmark": "1"})
    container.start()

    def remove() -> None:
        container.remove(force=True)
        volume.remove(force=True)

    return remove


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
        warm = Spoke(Path(tmp), hub, name="bench-warm", extra=["--warm", f"{DEFAULT_IMAGE}={WARM}"])
        try:
            spoke.join()
            warm.join()
            api = hub.client()

            def via_hub(on: str = "bench") -> Callable[[], None]:
                box = api.request("POST", "/api/boxes", {"spoke": on, "image": DEFAULT_IMAGE})
                return lambda: api.request("DELETE", f"/api/boxes/{box['id']}")

            def direct() -> Callable[[], None]:
                return direct_create(docker_client)

            def pool_full() -> None:
                wait_until(lambda: ready_pool_boxes(docker_client, "bench-warm") >= WARM,
                           timeout=300, what="the warm pool to refill")

            def via_warm() -> Callable[[], None]:
                return via_hub("bench-warm")

            timings: dict[str, list[float]] = {"hub": [], "sdk": [], "warm": []}
            for i in range(args.n + 2):  # the first two of each are warm-up
                pool_full()
                for name, create in (("hub", via_hub), ("sdk", direct), ("warm", via_warm)):
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


if __name__ == "__main__":
    main()
