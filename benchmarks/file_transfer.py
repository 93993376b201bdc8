"""Spoke memory (RSS) during a file upload and download through the hub.

Starts a real hub and spoke on loopback (like the tests), creates a box, then uploads a file
of ``--mb`` MB with ``PUT /api/boxes/{id}/file`` and downloads it again with ``GET``, sampling
the spoke process's resident memory every 20 ms. Prints the spoke's RSS before, the peak
during each transfer and the growth, plus the throughput measured in this one run. Not a
pass/fail test (``tests/test_box_hardening.py`` asserts a bound on the growth).

    python benchmarks/file_transfer.py [--mb 200]

Issue 8 item 6: buffered on the spoke, a 200 MB upload took it from 62 MB to 695 MB RSS.
Streamed (spoke/boxes/docker_files.py), the growth stays a few MB whatever the size.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import tests.cluster as cluster  # noqa: E402
from spoke.boxes.image import DEFAULT_IMAGE, ensure_sandbox_image  # noqa: E402
from tests.cluster import Hub, Spoke  # noqa: E402

beside = Path(sys.executable).parent
cluster.HUB, cluster.SPOKE = str(beside / "hub"), str(beside / "spoke")


def rss_bytes(pid: int) -> int:
    """Resident set size of process ``pid`` (VmRSS), 0 once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class RssSampler:
    """Samples a process's RSS in a thread; ``peak`` is the highest value seen."""

    def __init__(self, pid: int, every_s: float = 0.02) -> None:
        self.pid, self.every_s = pid, every_s
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes(self.pid))
            time.sleep(self.every_s)

    def __enter__(self) -> RssSampler:
        self.peak = rss_bytes(self.pid)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


class PatternFile:
    """A file-like of ``size`` pseudo-random bytes made on the fly (nothing held in memory)."""

    def __init__(self, size: int) -> None:
        self.size, self.sent = size, 0
        self.block = os.urandom(1 << 20)
        self.digest = hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        left = self.size - self.sent
        n = left if n < 0 else min(n, left)
        start = self.sent % len(self.block)
        piece = (self.block[start:] + self.block)[:n]
        self.sent += len(piece)
        self.digest.update(piece)
        return piece


def mb(n: int) -> str:
    return f"{n / 1e6:.0f} MB"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mb", type=int, default=200, help="file size in MB (10^6 bytes)")
    args = parser.parse_args()
    size = args.mb * 1_000_000
    ensure_sandbox_image(DEFAULT_IMAGE, progress=lambda line: print(f"[image] {line}",
                                                                     file=sys.stderr))
    with tempfile.TemporaryDirectory() as tmp:
        hub = Hub(Path(tmp))
        hub.start()
        spoke = Spoke(Path(tmp), hub, name="bench")
        try:
            proc = spoke.join()
            pid = proc.popen.pid
            client = hub.client()
            box = client.request("POST", "/api/boxes", {
                "spoke": "bench", "image": DEFAULT_IMAGE, "workspace": f"{2 * args.mb + 64}m"})["id"]
            time.sleep(1.0)
            base = rss_bytes(pid)
            source = PatternFile(size)
            with RssSampler(pid) as up:
                start = time.monotonic()
                client.put_file(box, "/workspace/big.bin", source, size)  # type: ignore[arg-type]
                up_s = time.monotonic() - start
            after_up = rss_bytes(pid)
            digest = hashlib.sha256()
            got = 0
            with RssSampler(pid) as down:
                start = time.monotonic()
                chunks: Iterator[bytes] = client.get_file(box, "/workspace/big.bin")
                for chunk in chunks:
                    got += len(chunk)
                    digest.update(chunk)
                down_s = time.monotonic() - start
            assert got == size and digest.digest() == source.digest.digest(), "content differs"
            print(f"file: {mb(size)}; spoke RSS before: {mb(base)}")
            print(f"upload:   peak RSS {mb(up.peak)} (+{mb(up.peak - base)}), "
                  f"after {mb(after_up)}; {size / up_s / 1e6:.0f} MB/s")
            print(f"download: peak RSS {mb(down.peak)} (+{mb(down.peak - base)}); "
                  f"{size / down_s / 1e6:.0f} MB/s")
            client.request("DELETE", f"/api/boxes/{box}")
        finally:
            spoke.stop()
            hub.stop()


if __name__ == "__main__":
    main()
