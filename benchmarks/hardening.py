"""Two figures of issue 8, measured on a real hub and spoke in one run:

1. How long a command keeps running after the caller of ``hub box exec`` goes away (Ctrl-C,
   or the client killed): before the fix it ran until it ended by itself.
2. How the admin CLI fares during a connection flood: ``--flood`` TLS connections from
   127.0.0.2 (every 127/8 address is this machine) that complete the handshake and then send
   nothing, or dribble a header; ``hub spoke list`` is timed before and during the flood, and
   the flood's connections still open after ``--hold`` seconds are counted.

    python benchmarks/hardening.py [--rounds 5] [--flood 2000] [--hold 15]

Not a pass/fail test (tests/test_exec_disconnect.py and tests/test_conn_limits.py are).
Runs against whatever code the interpreter imports, so ``PYTHONPATH=OLD_CHECKOUT`` measures
an older version the same way.
"""

from __future__ import annotations

import argparse
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import docker  # noqa: E402

import tests.cluster as cluster  # noqa: E402
from spoke.boxes.image import DEFAULT_IMAGE, ensure_sandbox_image  # noqa: E402
from tests.cluster import Hub, Spoke  # noqa: E402

beside = Path(sys.executable).parent
cluster.HUB, cluster.SPOKE = str(beside / "hub"), str(beside / "spoke")


def running(container: docker.models.containers.Container, marker: str) -> bool:
    top = container.top(ps_args="-eo pid,args")
    return any(marker in " ".join(map(str, row)) for row in top.get("Processes") or [])


def exec_kill_seconds(hub: Hub, box_id: str, rounds: int, cap_s: float = 60.0) -> list[float]:
    """Seconds from the caller's death to its command's; ``cap_s`` when it outlived that."""
    (container,) = docker.from_env().containers.list(filters={"label": f"spokehub.box={box_id}"})
    env = {"SPOKEHUB_HUB_DIR": str(hub.dir), "PATH": str(beside)}
    took = []
    for i in range(rounds):
        marker = f"{90 + i}.25"  # a distinct `sleep` per round
        cli = subprocess.Popen([cluster.HUB, "box", "exec", box_id, "--", "sleep", marker], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while not running(container, f"sleep {marker}"):
            time.sleep(0.05)
        cli.send_signal(signal.SIGINT if i % 2 == 0 else signal.SIGKILL)
        cli.wait(30)
        gone_at = time.monotonic()
        while running(container, f"sleep {marker}") and time.monotonic() - gone_at < cap_s:
            time.sleep(0.05)
        took.append(min(time.monotonic() - gone_at, cap_s))
        if took[-1] >= cap_s:
            container.exec_run(["pkill", "-f", f"sleep {marker}"])
    return took


def cli_seconds(hub: Hub, runs: int) -> list[float]:
    env = {"SPOKEHUB_HUB_DIR": str(hub.dir), "PATH": str(beside)}
    took = []
    for _ in range(runs):
        started = time.monotonic()
        done = subprocess.run([cluster.HUB, "spoke", "list", "--json"], env=env,
                              capture_output=True, timeout=120)
        took.append(time.monotonic() - started if done.returncode == 0 else float("inf"))
    return took


class Flood:
    """``count`` connections from 127.0.0.2, each TLS-handshaken then idle (even ones) or
    dribbling a header a byte at a time (odd ones), opened from a few threads."""

    def __init__(self, port: int, count: int) -> None:
        self.port, self.count = port, count
        self.socks: list[ssl.SSLSocket | socket.socket] = []
        self.lock = threading.Lock()
        self.failed = 0
        self.stop = threading.Event()

    def _open(self, n: int) -> None:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
        for _ in range(n):
            if self.stop.is_set():
                return
            try:
                raw = socket.create_connection(("127.0.0.1", self.port), timeout=5,
                                               source_address=("127.0.0.2", 0))
                tls = ctx.wrap_socket(raw, server_hostname="127.0.0.1")
                tls.sendall(b"GET /healthz HTTP/1.1\r\n")  # and never the rest
                with self.lock:
                    self.socks.append(tls)
            except OSError:
                with self.lock:
                    self.failed += 1

    def start(self) -> None:
        threads = [threading.Thread(target=self._open, args=(self.count // 8,)) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    def still_open(self) -> int:
        alive = 0
        for s in self.socks:
            try:
                s.settimeout(0.001)
                if s.recv(1) == b"":
                    continue  # closed by the hub
                alive += 1
            except (TimeoutError, ssl.SSLWantReadError):
                alive += 1
            except OSError:
                continue
        return alive

    def close(self) -> None:
        self.stop.set()
        for s in self.socks:
            try:
                s.close()
            except OSError:
                pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--flood", type=int, default=2000)
    parser.add_argument("--hold", type=float, default=15.0)
    args = parser.parse_args()
    ensure_sandbox_image(DEFAULT_IMAGE)
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        hub = Hub(tmp)
        hub.start()
        spoke = Spoke(tmp, hub, name="bench")
        spoke.join()
        try:
            box = hub.client().request("POST", "/api/boxes", {"spoke": "bench", "image": DEFAULT_IMAGE})
            took = exec_kill_seconds(hub, box["id"], args.rounds)
            print(f"exec outliving its caller (Ctrl-C / kill -9 of `hub box exec`), x{len(took)}: "
                  f"median {statistics.median(took):.2f} s, max {max(took):.2f} s "
                  f"(60 s = still running at the cap)")

            quiet = cli_seconds(hub, 5)
            flood = Flood(hub.port, args.flood)
            started = time.monotonic()
            flood.start()
            opened = len(flood.socks)
            open_now = flood.still_open()  # the per-address cap closes what is over it at once
            during = cli_seconds(hub, 5)
            time.sleep(max(0.0, args.hold - (time.monotonic() - started)))
            held = flood.still_open()
            flood.close()
            print(f"flood of {args.flood} TLS connections from 127.0.0.2: {opened} handshakes "
                  f"done ({flood.failed} failed); {open_now} open once all were made, {held} "
                  f"still open after {args.hold:.0f} s")
            print(f"`hub spoke list`: p50 {statistics.median(quiet) * 1000:.0f} ms quiet, "
                  f"{statistics.median(during) * 1000:.0f} ms during the flood "
                  f"(max {max(during) * 1000:.0f} ms)")
        finally:
            spoke.stop()
            hub.stop()


if __name__ == "__main__":
    main()
