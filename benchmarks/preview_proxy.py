"""Port previews and terminals through the hub (issue 14), measured in one run.

Starts a real hub and spoke on loopback (like the tests) and a Docker box with no network,
with a small HTTP server on port 8000 inside it. Prints:

- download throughput of one file through the preview proxy (HTTP/1.1 spoken by the hub over
  a ``box.open`` channel and the in-box agent's TCP connection) against the same file through
  ``GET /api/boxes/{id}/file`` (Docker's archive API): the ratio preview / file;
- keystroke echo latency on a PTY (``hub box exec -it``'s path: a byte up as ``box.input``,
  the terminal's echo down the ``box.open`` stream), against a no-op exec through the hub.

    python benchmarks/preview_proxy.py [--mib 32] [--keys 200]

Not a pass/fail test.
"""

from __future__ import annotations

import argparse
import http.client
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.exec_overhead import HUB, pct  # noqa: E402
from client.pty_client import open_pty  # noqa: E402
from spoke.boxes.image import DEFAULT_IMAGE, ensure_sandbox_image  # noqa: E402
from tests.cluster import Hub, Spoke, wait_until  # noqa: E402
from tests.test_port_preview import TINY_SERVER  # noqa: E402


def fetch(hub: Hub, key: str, path: str) -> tuple[int, float]:
    conn = http.client.HTTPSConnection("127.0.0.1", hub.port,
                                       context=ssl._create_unverified_context())
    started = time.perf_counter()
    conn.request("GET", path, headers={"Authorization": f"Bearer {key}"})
    resp = conn.getresponse()
    size = 0
    while chunk := resp.read(1 << 20):
        size += len(chunk)
    elapsed = time.perf_counter() - started
    assert resp.status == 200, (resp.status, path)
    conn.close()
    return size, elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mib", type=int, default=32, help="size of the file downloaded")
    parser.add_argument("--keys", type=int, default=200, help="keystrokes timed")
    parser.add_argument("--rounds", type=int, default=3, help="downloads per path")
    args = parser.parse_args()
    ensure_sandbox_image(DEFAULT_IMAGE, progress=lambda line: print(f"[image] {line}",
                                                                    file=sys.stderr))
    with tempfile.TemporaryDirectory() as tmp:
        hub = Hub(Path(tmp))
        hub.start()
        spoke = Spoke(Path(tmp), hub)
        server = None
        box = ""
        try:
            spoke.join()
            client = hub.client()
            box = hub.cli_json("box", "create", "--spoke", spoke.name, "--image",
                               DEFAULT_IMAGE)["id"]
            hub.cli("box", "exec", box, "--", "sh", "-c",
                    f"head -c {args.mib << 20} /dev/zero > /workspace/hi.txt", check=True)
            server = subprocess.Popen([HUB, "box", "exec", box, "--", "python3", "-c",
                                       TINY_SERVER], env={"SPOKEHUB_HUB_DIR": str(hub.dir),
                                                          "PATH": "/usr/bin:/bin"})
            preview = f"/preview/{box}/8000/"
            wait_until(lambda: _ok(hub, client.api_key, preview), what="the box's server")
            via_preview = [fetch(hub, client.api_key, preview) for _ in range(args.rounds)]
            via_file = [fetch(hub, client.api_key, f"/api/boxes/{box}/file?path=hi.txt")
                        for _ in range(args.rounds)]
            mb = args.mib * 1.048576
            p_rate = max(mb / t for _s, t in via_preview)
            f_rate = max(mb / t for _s, t in via_file)
            print(f"download {args.mib} MiB: preview {p_rate:.0f} MB/s, file API "
                  f"{f_rate:.0f} MB/s, ratio preview/file {p_rate / f_rate:.2f} "
                  f"(best of {args.rounds})")

            lat: list[float] = []
            with open_pty(client, box, ["cat"]) as ws:
                for i in range(args.keys):
                    key = bytes([97 + i % 26])
                    started = time.perf_counter()
                    ws.send(key)
                    while True:
                        msg = ws.recv()
                        if isinstance(msg, bytes) and key in msg:
                            break
                    lat.append((time.perf_counter() - started) * 1000)
            execs = []
            for _ in range(30):
                started = time.perf_counter()
                list(client.exec_stream(box, ["true"]))
                execs.append((time.perf_counter() - started) * 1000)
            print(f"keystroke echo on a PTY: p50 {statistics.median(lat):.2f} ms, p99 "
                  f"{pct(lat, 99):.2f} ms over {args.keys}; no-op exec p50 "
                  f"{statistics.median(execs):.2f} ms; ratio keystroke/exec "
                  f"{statistics.median(lat) / statistics.median(execs):.2f}")
        finally:
            if server is not None:
                server.terminate()
                server.wait(30)
            if box:
                hub.cli("box", "rm", box)
            spoke.stop()
            hub.stop()


def _ok(hub: Hub, key: str, path: str) -> bool:
    try:
        fetch(hub, key, path)
        return True
    except (AssertionError, OSError):
        return False


if __name__ == "__main__":
    main()
