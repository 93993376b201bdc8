"""Exec through the hub with the in-box exec agent vs a direct ``docker exec``, in one run.

Starts a real hub and spoke on loopback (benchmarks/exec_overhead.py's setup), makes one box
(whose commands go through its agent: spoke/boxes/agent_boxes.py), then interleaves:

- ``true`` through the hub's exec API (SDK) vs the Docker SDK's ``exec_run`` of ``true`` in
  the same box: p50 and p99 ratios (goals p50 <= 0.25x, p99 <= 0.5x);
- ``hub box exec ID -- true`` vs ``docker exec CID true`` through their CLIs (goal <= 1.0x).

Not a pass/fail test: goals are printed beside the measurements.

    python benchmarks/exec_agent.py [--n 200] [--cli-runs 30]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import docker  # noqa: E402

from benchmarks.exec_overhead import HUB, pct  # noqa: E402  (also points tests.cluster at it)
from benchmarks.machine import time_alternately, time_interleaved  # noqa: E402
from spoke.boxes.image import DEFAULT_IMAGE, ensure_sandbox_image  # noqa: E402
from tests.cluster import Hub, Spoke  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=200, help="exec samples per path")
    parser.add_argument("--cli-runs", type=int, default=30, help="CLI samples per command")
    args = parser.parse_args()
    ensure_sandbox_image(DEFAULT_IMAGE,
                         progress=lambda line: print(f"[image] {line}", file=sys.stderr))
    with tempfile.TemporaryDirectory() as tmp:
        hub = Hub(Path(tmp))
        hub.start()
        spoke = Spoke(Path(tmp), hub, name="bench")
        try:
            spoke.join()
            client = hub.client()
            box = client.request("POST", "/api/boxes",
                                 {"spoke": "bench", "image": DEFAULT_IMAGE})["id"]
            [container] = docker.from_env().containers.list(
                filters={"label": f"spokehub.box={box}"})
            top = container.top().get("Processes") or []
            agent = any(str(row[-1]).startswith("python3 -u -c") for row in top)
            print(f"box {box}: in-box agent process {'present' if agent else 'ABSENT'}")

            def via_hub() -> None:
                events = list(client.exec_stream(box, ["true"]))
                assert events[-1]["exit_code"] == 0

            def direct() -> None:
                assert container.exec_run(["true"]).exit_code == 0

            hub_t, direct_t = time_interleaved([via_hub, direct], args.n)
            h50, h99 = pct(hub_t, 50), pct(hub_t, 99)
            d50, d99 = pct(direct_t, 50), pct(direct_t, 99)
            print(f"exec `true` x{args.n}: hub+agent p50 {h50 * 1000:.1f} ms  p99 "
                  f"{h99 * 1000:.1f} ms | docker SDK exec_run p50 {d50 * 1000:.1f} ms  p99 "
                  f"{d99 * 1000:.1f} ms")
            print(f"  ratio p50 {h50 / d50:.3f} (goal <= 0.25)   ratio p99 {h99 / d99:.3f} "
                  "(goal <= 0.5)")

            env = {**os.environ, "SPOKEHUB_HUB_DIR": str(hub.dir)}
            env.pop("PYTHONDONTWRITEBYTECODE", None)
            env["PYTHONPYCACHEPREFIX"] = str(Path(tmp) / "pycache")
            cli_cmd = [HUB, "box", "exec", box, "--", "true"]
            docker_cmd = ["docker", "exec", container.id, "true"]
            cli_t, docker_t = time_alternately([(cli_cmd, env), (docker_cmd, None)],
                                               args.cli_runs)
            c50, k50 = statistics.median(cli_t), statistics.median(docker_t)
            print(f"CLI `{Path(HUB).name} box exec ID -- true` x{args.cli_runs}: p50 "
                  f"{c50 * 1000:.0f} ms vs `docker exec CID true` p50 {k50 * 1000:.0f} ms: "
                  f"ratio {c50 / k50:.2f} (goal <= 1.0)")
            client.request("DELETE", f"/api/boxes/{box}")
        finally:
            spoke.stop()
            hub.stop()


if __name__ == "__main__":
    main()
