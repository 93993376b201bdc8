"""Several hubs, one cluster (issue 11): what a call costs when it goes through a hub that does
not hold the spoke (forwarded to the holding hub), against the holding hub directly; and how
spokes spread over the hubs behind a round-robin TCP balancer.

Starts the test rig (tests/multihub.py): a throwaway PostgreSQL (tests/pg.py), three ``hub
serve`` on it with one certificate, the test balancer (tests/tcp_lb.py) in front, one real
spoke with a Docker box. Then, alternating so drift hits both paths alike
(benchmarks/machine.py):

- exec ``true`` in the box (the hub's exec stream, to its exit code), via the holder and via a
  forwarding hub: p50/p99 and the ratio;
- unary calls, both ways: ``GET /api/boxes/ID/logs?tail=1`` (one request to the spoke, which
  reads Docker's log) and ``POST /api/spokes/NAME/ping`` (one no-op verb round trip; box
  stats are not used, Docker takes about 2 s to sample them);
- with ``--cli-runs``, ``hub box exec ID -- true`` as a user runs it (a process each), both ways;
- spokes per hub: ``--sims`` simulated spokes (``spoke sim``) join through the balancer, and
  the count each hub holds is printed.

Figures of one run on this machine, not a test.

    python benchmarks/hub_forwarding.py [--n 200] [--cli-runs 10] [--sims 300] [--bin-dir DIR]
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import tests.cluster as cluster  # noqa: E402
from benchmarks.machine import describe, pct, time_alternately, time_interleaved, use_executables  # noqa: E402
from client.http_client import HubClient  # noqa: E402
from spoke.boxes.image import DEFAULT_IMAGE, ensure_sandbox_image  # noqa: E402
from tests import pg  # noqa: E402
from tests.cluster import wait_until  # noqa: E402
from tests.multihub import ClusterHub, MultiHub  # noqa: E402


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f} ms"


def compare(what: str, direct: list[float], forwarded: list[float]) -> dict[str, float]:
    """Print and return p50/p99 of both paths and the forwarded/direct ratio of each."""
    d50, d99, f50, f99 = pct(direct, 0.5), pct(direct, 0.99), pct(forwarded, 0.5), pct(forwarded, 0.99)
    print(f"{what} x{len(direct)}: holding hub p50 {ms(d50)} p99 {ms(d99)} | forwarding hub "
          f"p50 {ms(f50)} p99 {ms(f99)} | ratio p50 {f50 / d50:.2f} p99 {f99 / d99:.2f} "
          f"(+{(f50 - d50) * 1000:.2f} ms at p50)", flush=True)
    return {"direct_p50_ms": d50 * 1000, "direct_p99_ms": d99 * 1000, "forwarded_p50_ms": f50 * 1000,
            "forwarded_p99_ms": f99 * 1000, "ratio_p50": f50 / d50, "ratio_p99": f99 / d99}


def dispatch(rig: MultiHub, args: argparse.Namespace, tmp: Path, out: dict[str, Any]) -> None:
    spoke = rig.join("bench")
    holder = rig.holder_of(spoke.name)
    assert holder is not None
    forwarder = rig.others(holder)[0]
    print(f"spoke {spoke.name} is held by {holder}; forwarding through {forwarder}", flush=True)
    direct_api, forwarded_api = holder.client(), forwarder.client()
    box = str(direct_api.request("POST", "/api/boxes", {"spoke": spoke.name, "image": DEFAULT_IMAGE})["id"])

    def exec_true(api: HubClient) -> None:
        events = list(api.exec_stream(box, ["true"]))
        assert events[-1]["exit_code"] == 0, events[-1]

    def logs(api: HubClient) -> None:
        api.request("GET", f"/api/boxes/{box}/logs?tail=1")

    def ping(api: HubClient) -> None:
        api.request("POST", f"/api/spokes/{spoke.name}/ping", {"count": 1})

    d, f = time_interleaved([lambda: exec_true(direct_api), lambda: exec_true(forwarded_api)], args.n)
    out["exec_true"] = compare("exec `true`", d, f)
    d, f = time_interleaved([lambda: logs(direct_api), lambda: logs(forwarded_api)], args.n)
    out["box_logs"] = compare("GET /api/boxes/ID/logs?tail=1", d, f)
    d, f = time_interleaved([lambda: ping(direct_api), lambda: ping(forwarded_api)], args.n)
    out["spoke_ping"] = compare("POST /api/spokes/NAME/ping", d, f)
    if args.cli_runs:
        commands: list[tuple[list[str], dict[str, str] | None]] = []
        for hub in (holder, forwarder):
            env = hub.cli_env()
            env.pop("PYTHONDONTWRITEBYTECODE", None)  # a bytecode cache, as an installed CLI has
            env["PYTHONPYCACHEPREFIX"] = str(tmp / "pycache")
            commands.append(([cluster.HUB, "box", "exec", box, "--", "true"], env))
        d, f = time_alternately(commands, args.cli_runs)
        out["cli_exec_true"] = compare("CLI `hub box exec ID -- true`", d, f)
    direct_api.request("DELETE", f"/api/boxes/{box}")


def spokes_per_hub(rig: MultiHub, args: argparse.Namespace, tmp: Path, out: dict[str, Any]) -> None:
    via = rig.any_live()
    token = via.client().request("POST", "/api/tokens", {"name": "sim", "ttl": "4h", "uses": args.sims})
    log = tmp / "sim.log"
    with log.open("w") as err:
        sim = subprocess.Popen(
            [cluster.SPOKE, "sim", "--data-dir", str(tmp / "sims"), "--token", token["token"],
             "--count", str(args.sims), "--scenario", "steady", "--rate", "0", "--duration", "86400"],
            stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)
    try:
        def all_in() -> dict[str, str] | None:
            assert sim.poll() is None, f"spoke sim died:\n{log.read_text()[-3000:]}"
            holders = {k: v for k, v in via.cluster()["holders"].items() if k.startswith("sim-")}
            return holders if len(holders) >= args.sims else None

        started = time.monotonic()
        holders = wait_until(all_in, timeout=args.connect_timeout, what=f"{args.sims} simulated spokes")
        took = time.monotonic() - started
        per_hub = Counter(holders.values())
        names: dict[str, ClusterHub | None] = {hub_id: rig.hub_by_id(hub_id) for hub_id in per_hub}
        print(f"spokes per hub: {args.sims} simulated spokes joined through the balancer in "
              f"{took:.1f} s", flush=True)
        for hub_id, count in sorted(per_hub.items(), key=lambda kv: -kv[1]):
            print(f"  {names[hub_id] or hub_id}: {count} ({count / args.sims:.0%})", flush=True)
        print(f"  balancer connections per hub: {rig.lb.counts()}", flush=True)
        out["spokes_per_hub"] = {str(names[h].name if names[h] else h): n  # type: ignore[union-attr]
                                 for h, n in per_hub.items()}
    finally:
        sim.send_signal(signal.SIGINT)
        try:
            sim.wait(120)
        except subprocess.TimeoutExpired:
            sim.kill()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=200, help="samples per path (exec, stats)")
    parser.add_argument("--cli-runs", type=int, default=10, help="CLI samples per path (0: none)")
    parser.add_argument("--sims", type=int, default=300, help="simulated spokes to spread (0: none)")
    parser.add_argument("--connect-timeout", type=float, default=600.0)
    parser.add_argument("--bin-dir", default=None, help="where hub and spoke are (default: "
                        "beside this interpreter)")
    parser.add_argument("--json", default=None, help="also write the figures to this file")
    args = parser.parse_args()
    if args.n < 1 or args.cli_runs < 0 or args.sims < 0:
        parser.error("--n must be at least 1; --cli-runs and --sims at least 0")
    use_executables(args.bin_dir)
    reason = pg.unavailable()
    if reason:
        sys.exit(f"hub_forwarding: {reason}")
    for line in describe(args.bin_dir):
        print(line, flush=True)
    ensure_sandbox_image(DEFAULT_IMAGE, progress=lambda line: print(f"[image] {line}", file=sys.stderr))
    figures: dict[str, Any] = {}
    server = pg.server()
    url = server.new_database()
    with tempfile.TemporaryDirectory(prefix="spokehub-forwarding-") as tmp:
        rig = MultiHub(Path(tmp), url, 3, extra=["--log-level", "INFO"])
        try:
            rig.start()
            print(f"3 hubs on PostgreSQL behind {rig.lb.url}: {rig.hubs}", flush=True)
            dispatch(rig, args, Path(tmp), figures)
            if args.sims:
                spokes_per_hub(rig, args, Path(tmp), figures)
        finally:
            rig.stop()
            server.drop_database(url)
            pg.stop()
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
