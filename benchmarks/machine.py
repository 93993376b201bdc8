"""Shared by the benchmarks of issue 9: where the executables are, what machine this is, and a
process's CPU and memory from /proc.

Each benchmark prints the machine it ran on and the commit it measured, since figures mean
little without them (docs/performance.md records both).
"""

from __future__ import annotations

import math
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import tests.cluster as cluster

ROOT = Path(__file__).resolve().parents[1]


def use_executables(bin_dir: str | None, spoke_bin_dir: str | None = None) -> tuple[str, str]:
    """Point tests/cluster.py at the ``hub`` and ``spoke`` in ``bin_dir`` (another checkout's
    wrappers, for a "before" run), else those beside this interpreter; ``spoke_bin_dir`` takes
    the ``spoke`` from elsewhere (an old hub with current spokes). Return both."""
    found = []
    for name, where in (("hub", bin_dir), ("spoke", spoke_bin_dir or bin_dir)):
        path = Path(where) / name if where else Path(sys.executable).parent / name
        found.append(str(path) if path.exists() else (shutil.which(name) or name))
    cluster.HUB, cluster.SPOKE = found
    return found[0], found[1]


def describe(bin_dir: str | None = None) -> list[str]:
    """The machine and the code measured, as lines: this checkout's commit, and the
    ``hub``/``spoke`` run when they come from another place (``bin_dir``)."""
    model = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    lines = [f"machine: {os.cpu_count()} cores ({model}), {mem_gib:.0f} GiB RAM, "
             f"{platform.system()} {platform.release()}, Python {platform.python_version()}"]
    try:
        head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain"],
                               capture_output=True, text=True, check=True).stdout.strip()
        lines.append(f"this checkout: {ROOT} at {head}"
                     + (" with uncommitted changes" if dirty else ""))
    except (OSError, subprocess.CalledProcessError):
        lines.append(f"this checkout: {ROOT}")
    if bin_dir:
        lines.append(f"hub and spoke run: {cluster.HUB}, {cluster.SPOKE}")
    return lines


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds ``pid`` has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    """Resident memory of ``pid`` in MB (VmRSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def pct(values: list[float], q: float) -> float:
    """Nearest-rank ``q``-quantile (0..1) of ``values``."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered), max(1, math.ceil(q * len(ordered)))) - 1]


def time_alternately(commands: list[tuple[list[str], dict[str, str] | None]], runs: int,
                     warmup: int = 2) -> list[list[float]]:
    """Wall-clock seconds of each command (run with its env), alternated so drift hits all
    alike; ``warmup`` rounds first, not counted (the bytecode cache, Docker's first exec)."""
    times: list[list[float]] = [[] for _ in commands]
    for i in range(runs + warmup):
        for (cmd, env), sink in zip(commands, times, strict=True):
            t0 = time.perf_counter()
            subprocess.run(cmd, check=True, env=env)
            if i >= warmup:
                sink.append(time.perf_counter() - t0)
    return times


def time_interleaved(fns: list[Callable[[], object]], n: int,
                     warmup: int = 10) -> list[list[float]]:
    """Seconds of each call of each function, ``n`` rounds interleaved so drift affects all
    alike, after ``warmup`` untimed calls of each (the first attaches an agent, fills caches)."""
    for fn in fns:
        for _ in range(warmup):
            fn()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(n):
        for fn, sink in zip(fns, times, strict=True):
            t0 = time.perf_counter()
            fn()
            sink.append(time.perf_counter() - t0)
    return times
