"""Exec through the hub vs directly through the Docker SDK, no-op verb throughput, CLI latency.

Starts a real hub and spoke on loopback (like the tests), then prints figures measured in this
one run. Not a pass/fail test: goals are printed beside the measurements.

    python benchmarks/exec_overhead.py [--n 200] [--pings 20000] [--cli-runs 30]

The CLI is timed through the console script next to this interpreter
(``Path(sys.executable).parent / "hub"``), not whatever ``hub`` is first on PATH: a pyenv
shim there adds ~100 ms of its own. Its runs get a bytecode cache (a temporary
``PYTHONPYCACHEPREFIX``, ``PYTHONDONTWRITEBYTECODE`` dropped) as an installed CLI has; with
``--no-pyc`` they inherit this process's environment instead.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import docker  # noqa: E402

import tests.cluster as cluster  # noqa: E402
from benchmarks.machine import time_alternately, time_interleaved  # noqa: E402
from spoke.boxes.image import DEFAULT_IMAGE, ensure_sandbox_image  # noqa: E402
from tests.cluster import Hub, Spoke  # noqa: E402


def console_script(name: str) -> str:
    """The entry point installed beside this interpreter, else the one on PATH."""
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else (shutil.which(name) or name)


HUB = console_script("hub")
cluster.HUB, cluster.SPOKE = HUB, console_script("spoke")  # no shim for the hub/spoke either


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=200, help="exec samples per path")
    parser.add_argument("--pings", type=int, default=20000, help="no-op round trips")
    parser.add_argument("--cli-runs", type=int, default=30, help="CLI samples per command")
    parser.add_argument("--no-pyc", action="store_true",
                        help="time the CLI without a bytecode cache (environment as is)")
    args = parser.parse_args()
    ensure_sandbox_image(DEFAULT_IMAGE, progress=lambda line: print(f"[image] {line}", file=sys.stderr))
    with tempfile.TemporaryDirectory() as tmp:
        hub = Hub(Path(tmp))
        hub.start()
        spoke = Spoke(Path(tmp), hub, name="bench")
        try:
            spoke.join()
            client = hub.client()
            box = client.request("POST", "/api/boxes", {"spoke": "bench", "image": DEFAULT_IMAGE})["id"]
            [container] = docker.from_env().containers.list(filters={"label": f"spokehub.box={box}"})

            def via_hub() -> None:
                events = list(client.exec_stream(box, ["true"]))
                assert events[-1]["exit_code"] == 0

            def direct() -> None:
                assert container.exec_run(["true"]).exit_code == 0

            hub_t, direct_t = time_interleaved([via_hub, direct], args.n)
            h50, h99, d50, d99 = pct(hub_t, 50), pct(hub_t, 99), pct(direct_t, 50), pct(direct_t, 99)
            print(f"exec `true` x{args.n}: hub p50 {h50 * 1000:.1f} ms  p99 {h99 * 1000:.1f} ms | "
                  f"docker SDK p50 {d50 * 1000:.1f} ms  p99 {d99 * 1000:.1f} ms")
            print(f"  ratio p50 {h50 / d50:.3f} (goal <= 1.10)   ratio p99 {h99 / d99:.3f}")

            ping = client.request("POST", "/api/spokes/bench/ping", {"count": args.pings, "concurrency": 64})
            print(f"no-op verb round trips hub->spoke: {ping['per_second']:.0f}/s over {args.pings} "
                  f"(goal >= 5000/s)")

            env = {**os.environ, "SPOKEHUB_HUB_DIR": str(hub.dir)}
            if not args.no_pyc:
                env.pop("PYTHONDONTWRITEBYTECODE", None)
                env["PYTHONPYCACHEPREFIX"] = str(Path(tmp) / "pycache")
            cli_cmd = [HUB, "box", "exec", box, "--", "true"]
            docker_cmd = ["docker", "exec", container.id, "true"]
            cli_t, docker_t = time_alternately([(cli_cmd, env), (docker_cmd, None)],
                                               args.cli_runs)
            c50, k50 = statistics.median(cli_t), statistics.median(docker_t)
            print(f"CLI `{Path(HUB).name} box exec ID -- true` x{args.cli_runs}: p50 {c50 * 1000:.0f} ms"
                  f" (min {min(cli_t) * 1000:.0f}) vs `docker exec CID true` p50 {k50 * 1000:.0f} ms"
                  f" (min {min(docker_t) * 1000:.0f}): ratio {c50 / k50:.2f} (goal <= ~2)")
            print(f"  CLI: {HUB}, bytecode cache {'off (as inherited)' if args.no_pyc else 'on'}")
            client.request("DELETE", f"/api/boxes/{box}")
        finally:
            spoke.stop()
            hub.stop()


if __name__ == "__main__":
    main()
