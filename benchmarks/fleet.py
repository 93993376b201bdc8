"""The hub at fleet scale: N simulated spokes (``spoke sim``) against one real ``hub serve``.

For each N (default 1, 1000 and 10,000): all N connect, then the hub's idle CPU (% of one core,
from /proc over ``--idle-s``) and RSS; hub-side dispatch latency of a no-op verb at ``--rate``
calls a second (the ``seconds`` the hub itself measured around each call of ``POST
/api/spokes/NAME/ping``); a burst of ``--burst`` calls spread over up to 200 spokes (wall time
until all answered); and, for the counts in ``--restart-at``, the time until all N are back
after the hub restarts, and whether its log has a traceback. Issue 9's goals are printed beside
each figure. Figures of one run, not a test.

    python benchmarks/fleet.py [--counts 1,1000,10000] [--restart-at 1000] [--bin-dir DIR]

``--bin-dir`` runs another checkout's ``hub``/``spoke`` (docs/performance.md: the "before").
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import tests.cluster as cluster  # noqa: E402
from benchmarks.machine import cpu_seconds, describe, pct, rss_mb, use_executables  # noqa: E402
from cli.sim_command import pooled_client  # noqa: E402
from client.http_client import admin_credentials  # noqa: E402
from tests.cluster import Hub, wait_until  # noqa: E402

GOALS = {"cpu": "goal < 5% at 1000", "rss": "goal < 150 MB at 1000", "p50": "goal <= 0.3 ms",
         "p99": "goal <= 1 ms", "burst": "goal < 0.5 s", "restart": "goal < 5 s",
         "held": "goal: 10,000 held"}


def connected(hub: Hub) -> int:
    try:
        return int(hub.client().request("GET", "/healthz").get("spokes_connected", 0))
    except Exception:
        return -1


async def dispatch(hub: Hub, names: list[str], rate: float, seconds: float) -> dict[str, Any]:
    """Open-loop pings at ``rate``/s; the hub-side seconds of each call."""
    api = pooled_client(*admin_credentials(hub.dir))
    hub_s: list[float] = []
    errors = 0

    async def one(name: str) -> None:
        nonlocal errors
        try:
            answer = await api.request("POST", f"/api/spokes/{name}/ping", {"count": 1})
            hub_s.append(float(answer["seconds"]))
        except Exception:
            errors += 1

    for name in names[:20]:  # warm the connection pool and the code paths
        await one(name)
    hub_s.clear()
    loop = asyncio.get_running_loop()
    started, tasks, n = loop.time(), [], 0
    while loop.time() - started < seconds:
        due = started + n / rate
        if due > loop.time():
            await asyncio.sleep(due - loop.time())
        tasks.append(asyncio.ensure_future(one(random.choice(names))))
        n += 1
    await asyncio.gather(*tasks)
    await api.close()
    return {"calls": n, "errors": errors, "p50_ms": pct(hub_s, 0.5) * 1000,
            "p99_ms": pct(hub_s, 0.99) * 1000}


async def burst(hub: Hub, names: list[str], calls: int, repeat: int) -> list[float]:
    """``calls`` pings at once over up to 200 spokes (one request each for its share, all
    its calls concurrent): wall seconds until every call was answered, per repeat."""
    api = pooled_client(*admin_credentials(hub.dir))
    times = []
    for _ in range(repeat):
        targets = random.sample(names, min(200, len(names)))
        share, extra = divmod(calls, len(targets))
        counts = [share + (1 if i < extra else 0) for i in range(len(targets))]
        started = time.perf_counter()
        await asyncio.gather(*(api.request("POST", f"/api/spokes/{t}/ping",
                                           {"count": c, "concurrency": min(c, 256)})
                               for t, c in zip(targets, counts, strict=True) if c))
        times.append(time.perf_counter() - started)
        await asyncio.sleep(1)
    await api.close()
    return times


def tracebacks(log: Path, since: int) -> int:
    return log.read_text(errors="replace")[since:].count("Traceback")


def run_count(n: int, args: argparse.Namespace, tmp: Path, out: dict[str, Any]) -> None:
    hub = Hub(tmp / f"n{n}")
    hub.extra = ["--log-level", "INFO"]
    hub.start()
    assert hub.proc is not None
    token = hub.client().request("POST", "/api/tokens", {"name": "bench", "ttl": "4h", "uses": n})
    sim_log = tmp / f"sim-{n}.log"
    sim_out = tmp / f"sim-{n}.json"
    started = time.monotonic()
    with sim_log.open("w") as err, sim_out.open("w") as report:
        sim = subprocess.Popen(
            [cluster.SPOKE, "sim", "--data-dir", str(tmp / f"sims-{n}"), "--token", token["token"],
             "--count", str(n), "--scenario", "steady", "--rate", "0", "--duration", "86400",
             "--connect-timeout", str(args.connect_timeout), "--json"],
            stdout=report, stderr=err, start_new_session=True)
    row: dict[str, Any] = {"count": n}
    out[str(n)] = row
    try:
        def all_in() -> bool:
            assert sim.poll() is None, f"spoke sim died:\n{sim_log.read_text()[-3000:]}"
            return connected(hub) >= n

        wait_until(all_in, timeout=args.connect_timeout, what=f"{n} spokes connected")
        row["connect_s"] = round(time.monotonic() - started, 1)
        print(f"N={n}: all connected {row['connect_s']} s after `spoke sim` started", flush=True)
        time.sleep(5)  # let the connect-time reconciles finish
        pid = hub.proc.popen.pid
        c0, s0, t0 = cpu_seconds(pid), cpu_seconds(sim.pid), time.monotonic()
        time.sleep(args.idle_s)
        took = time.monotonic() - t0
        row["idle_cpu_pct"] = round((cpu_seconds(pid) - c0) / took * 100, 1)
        row["sim_idle_cpu_pct"] = round((cpu_seconds(sim.pid) - s0) / took * 100, 1)
        row["rss_mb"] = round(rss_mb(pid), 1)
        row["held"] = connected(hub)
        print(f"  idle over {args.idle_s:.0f} s: hub CPU {row['idle_cpu_pct']}% of a core "
              f"({GOALS['cpu']}), RSS {row['rss_mb']} MB ({GOALS['rss']}); still connected: "
              f"{row['held']} of {n}" + (f" ({GOALS['held']})" if n >= 10_000 else "")
              + f"; the simulator used {row['sim_idle_cpu_pct']}%", flush=True)
        names = [f"bench-{i:05d}" for i in range(1, n + 1)]
        d = asyncio.run(dispatch(hub, names, args.rate, args.rate_s))
        row["dispatch"] = d
        print(f"  dispatch at {args.rate:.0f}/s for {args.rate_s:.0f} s ({d['calls']} calls, "
              f"{d['errors']} errors): hub-side p50 {d['p50_ms']:.3f} ms ({GOALS['p50']}), "
              f"p99 {d['p99_ms']:.3f} ms ({GOALS['p99']})", flush=True)
        times = asyncio.run(burst(hub, names, args.burst, args.bursts))
        row["burst_s"] = [round(t, 3) for t in times]
        print(f"  burst of {args.burst} calls over {min(200, n)} spokes: median "
              f"{pct(times, 0.5):.3f} s, best {min(times):.3f} s ({GOALS['burst']})", flush=True)
        if n in args.restart_at:
            restart(hub, n, args, row)
    finally:
        sim.send_signal(signal.SIGINT)
        try:
            sim.wait(120)
        except subprocess.TimeoutExpired:
            sim.kill()
        hub.stop()
    try:
        report_doc = json.loads(sim_out.read_text())
        row["sim"] = {"connect_s": report_doc.get("connect_s"), "outages": report_doc.get("outages")}
    except ValueError:
        row["sim"] = {"error": sim_log.read_text()[-2000:]}


def restart(hub: Hub, n: int, args: argparse.Namespace, row: dict[str, Any]) -> None:
    assert hub.proc is not None
    log = hub.proc.log_path
    since = len(log.read_text(errors="replace"))
    hub.stop()
    launched = time.monotonic()
    hub.start()
    ready = time.monotonic()
    wait_until(lambda: connected(hub) >= n, timeout=args.connect_timeout,
               what=f"{n} spokes back after the restart")
    back = time.monotonic()
    row["restart"] = {"back_s": round(back - launched, 2), "after_ready_s": round(back - ready, 2),
                      "tracebacks": tracebacks(log, since)}
    r = row["restart"]
    print(f"  hub restart: all {n} back {r['back_s']} s after the new hub was started, "
          f"{r['after_ready_s']} s after it answered /healthz ({GOALS['restart']}); "
          f"tracebacks in the hub's log: {r['tracebacks']} (goal 0)", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--counts", default="1,1000,10000",
                        help="spoke counts, comma-separated")
    parser.add_argument("--restart-at", default="1000",
                        help="counts at which to restart the hub, comma-separated")
    parser.add_argument("--idle-s", type=float, default=30.0)
    parser.add_argument("--rate", type=float, default=50.0)
    parser.add_argument("--rate-s", type=float, default=20.0)
    parser.add_argument("--burst", type=int, default=2000)
    parser.add_argument("--bursts", type=int, default=3)
    parser.add_argument("--connect-timeout", type=float, default=1200.0)
    parser.add_argument("--bin-dir", default=None, help="where hub and spoke are (default: "
                        "beside this interpreter)")
    parser.add_argument("--spoke-bin-dir", default=None, help="where spoke is, if not with hub")
    parser.add_argument("--json", default=None, help="also write the figures to this file")
    args = parser.parse_args()
    args.restart_at = {int(c) for c in args.restart_at.split(",") if c}
    use_executables(args.bin_dir, args.spoke_bin_dir)
    for line in describe(args.bin_dir or args.spoke_bin_dir):
        print(line, flush=True)
    figures: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="spokehub-fleet-") as tmp:
        for n in (int(c) for c in args.counts.split(",") if c):
            run_count(n, args, Path(tmp), figures)
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
