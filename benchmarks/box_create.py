"""Box create through the hub vs a direct Docker SDK create + start (real Docker).

Starts a real hub and spoke on loopback, then, interleaved so drift hits both alike, times
``POST /api/boxes`` (the hub asks the spoke, which creates and starts a hardened container with
a size-limited workspace volume) against the Docker SDK creating and starting the same image
with the same hardening (read-only root, tmpfs, no capabilities, no-new-privileges, limits,
init, no network, a non-root user, a fresh named volume at /workspace) from this process.
Figures of one run, not a test.

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
from tests.cluster import Hub, Spoke  # noqa: E402


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
        try:
            spoke.join()
            api = hub.client()

            def via_hub() -> Callable[[], None]:
                box = api.request("POST", "/api/boxes", {"spoke": "bench", "image": DEFAULT_IMAGE})
                return lambda: api.request("DELETE", f"/api/boxes/{box['id']}")

            def direct() -> Callable[[], None]:
                return direct_create(docker_client)

            timings: dict[str, list[float]] = {"hub": [], "sdk": []}
            for i in range(args.n + 2):  # the first two of each are warm-up
                for name, create in (("hub", via_hub), ("sdk", direct)):
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
        finally:
            spoke.stop()
            hub.stop()


if __name__ == "__main__":
    main()
