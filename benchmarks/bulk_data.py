"""Bulk data through the hub vs Docker's own CLI: exec stdout, ``box cp`` in and out.

Starts a real hub and spoke on loopback (like the tests), creates a box, then moves ``--mib``
MiB three ways through the CLI — ``hub box exec ID -- head -c NM /dev/zero`` (stdout to a
pipe that is read and counted), ``hub box cp FILE ID:/workspace/f`` and back — and the same
with ``docker exec`` / ``docker cp`` on the same container. Prints, per path, the median of
``--runs`` MiB/s, the ratio hub/docker (goal <= 1.5) and the peak RSS of the hub and spoke
processes during the hub transfers. Then, per path, where the hub's time goes: the fixed
cost of one call (``exec -- true``, a 1-byte ``cp``, hub and docker, median of 5), the data
phase left (median time minus that fixed cost, hub / docker) and the CPU seconds the hub,
the spoke and the CLI spent per transfer. Not a pass/fail test: measured in this one run.

    python benchmarks/bulk_data.py [--mib 50] [--runs 3]

Issue 14: base64 in JSON frames and again in NDJSON lines made exec 5.6x slower than
``docker exec`` (46 vs 257 MiB/s), cp in 5.1x and cp out 3.6x.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import docker  # noqa: E402

import tests.cluster as cluster  # noqa: E402
from benchmarks.exec_overhead import console_script  # noqa: E402
from benchmarks.file_transfer import RssSampler, rss_bytes  # noqa: E402
from spoke.boxes.image import DEFAULT_IMAGE, ensure_sandbox_image  # noqa: E402
from tests.cluster import Hub, Spoke  # noqa: E402

HUB = console_script("hub")
cluster.HUB, cluster.SPOKE = HUB, console_script("spoke")
MIB = 1 << 20


def count_stdout(cmd: list[str], env: dict[str, str] | None) -> int:
    """Run ``cmd``, reading its stdout in 1 MiB pieces (as a pipe reader would); bytes read."""
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, env=env) as proc:
        assert proc.stdout is not None
        n = 0
        while piece := proc.stdout.read1(MIB):  # type: ignore[attr-defined]  # a BufferedReader
            n += len(piece)
    if proc.returncode != 0:
        raise SystemExit(f"{cmd[:3]} failed with exit code {proc.returncode}")
    return n


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (all its threads)."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children_cpu_s() -> float:
    """CPU seconds of this process's waited-for children (the CLI runs) so far."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mib", type=int, default=50, help="MiB per transfer")
    parser.add_argument("--runs", type=int, default=3, help="runs per path (the median is shown)")
    args = parser.parse_args()
    size = args.mib * MIB
    ensure_sandbox_image(DEFAULT_IMAGE, progress=lambda line: print(f"[image] {line}", file=sys.stderr))
    with tempfile.TemporaryDirectory() as tmp:
        hub = Hub(Path(tmp))
        hub.start()
        spoke = Spoke(Path(tmp), hub, name="bench")
        try:
            spoke_pid = spoke.join().popen.pid
            assert hub.proc is not None
            hub_pid = hub.proc.popen.pid
            client = hub.client()
            box = client.request("POST", "/api/boxes", {
                "spoke": "bench", "image": DEFAULT_IMAGE, "workspace": f"{4 * args.mib + 64}m"})["id"]
            [container] = docker.from_env().containers.list(filters={"label": f"spokehub.box={box}"})
            env = {**os.environ, "SPOKEHUB_HUB_DIR": str(hub.dir)}
            env.pop("PYTHONDONTWRITEBYTECODE", None)
            env["PYTHONPYCACHEPREFIX"] = str(Path(tmp) / "pycache")
            src = Path(tmp) / "src.bin"
            src.write_bytes(os.urandom(MIB) * args.mib)
            want = hashlib.sha256(src.read_bytes()).hexdigest()
            back = Path(tmp) / "back.bin"
            head = ["head", "-c", f"{args.mib}M", "/dev/zero"]

            def hub_exec() -> None:
                assert count_stdout([HUB, "box", "exec", box, "--", *head], env) == size

            def docker_exec() -> None:
                assert count_stdout(["docker", "exec", container.id, *head], None) == size

            def run(cmd: list[str], cmd_env: dict[str, str] | None) -> Callable[[], None]:
                def go() -> None:
                    res = subprocess.run(cmd, env=cmd_env, stdout=subprocess.DEVNULL,
                                         stderr=subprocess.PIPE)
                    if res.returncode != 0:
                        raise SystemExit(f"{cmd[:4]} failed ({res.returncode}): "
                                         f"{res.stderr.decode(errors='replace')}")
                return go

            def check_back() -> None:
                got = hashlib.sha256(back.read_bytes()).hexdigest()
                assert got == want, "the file came back different"
                back.unlink()

            tmp_path = Path(tmp)
            tiny = tmp_path / "tiny.bin"
            tiny.write_bytes(b"x")
            fixed: dict[str, tuple[Callable[[], None], Callable[[], None]]] = {
                "exec stdout": (run([HUB, "box", "exec", box, "--", "true"], env),
                                run(["docker", "exec", container.id, "true"], None)),
                "cp in": (run([HUB, "box", "cp", str(tiny), f"{box}:/workspace/t"], env),
                          run(["docker", "cp", str(tiny), f"{container.id}:/workspace/t2"], None)),
                "cp out": (run([HUB, "box", "cp", f"{box}:/workspace/t", str(tiny) + ".b"], env),
                           run(["docker", "cp", f"{container.id}:/workspace/t",
                                str(tiny) + ".d"], None)),
            }
            paths: list[tuple[str, Callable[[], None], Callable[[], None], Callable[[], None]]] = [
                ("exec stdout", hub_exec, docker_exec, lambda: None),
                ("cp in", run([HUB, "box", "cp", str(src), f"{box}:/workspace/in.bin"], env),
                 run(["docker", "cp", str(src), f"{container.id}:/workspace/in2.bin"], None),
                 lambda: None),
                ("cp out", run([HUB, "box", "cp", f"{box}:/workspace/in.bin", str(back)], env),
                 run(["docker", "cp", f"{container.id}:/workspace/in.bin", str(back)], None),
                 check_back),
            ]
            print(f"{args.mib} MiB per transfer, median of {args.runs}; hub RSS before "
                  f"{rss_bytes(hub_pid) / MIB:.0f} MiB, spoke {rss_bytes(spoke_pid) / MIB:.0f} MiB")
            for name, via_hub, via_docker, after in paths:
                hub_t: list[float] = []
                docker_t: list[float] = []
                hub_peak = spoke_peak = 0
                cpu = [0.0, 0.0, 0.0]  # hub, spoke, CLI: summed over the hub runs
                for _ in range(args.runs):  # interleaved, so drift affects both alike
                    before = (cpu_s(hub_pid), cpu_s(spoke_pid), children_cpu_s())
                    with RssSampler(hub_pid) as hs, RssSampler(spoke_pid) as ss:
                        hub_t.append(timed(via_hub))
                    now = (cpu_s(hub_pid), cpu_s(spoke_pid), children_cpu_s())
                    cpu = [c + b - a for c, a, b in zip(cpu, before, now, strict=True)]
                    hub_peak, spoke_peak = max(hub_peak, hs.peak), max(spoke_peak, ss.peak)
                    after()
                    docker_t.append(timed(via_docker))
                    after()
                h = size / MIB / statistics.median(hub_t)
                d = size / MIB / statistics.median(docker_t)
                print(f"{name:12s} hub {h:6.0f} MiB/s  docker {d:6.0f} MiB/s  ratio {d / h:4.2f}x "
                      f"(goal <= 1.5)  peak RSS hub {hub_peak / MIB:.0f} MiB, "
                      f"spoke {spoke_peak / MIB:.0f} MiB")
                tiny_hub, tiny_docker = fixed[name]
                fh_t, fd_t = [], []
                for _ in range(5):
                    fh_t.append(timed(tiny_hub))
                    fd_t.append(timed(tiny_docker))
                    for copy in tmp_path.glob("tiny.bin.*"):
                        copy.unlink()
                fh, fd = statistics.median(fh_t), statistics.median(fd_t)
                data_h, data_d = statistics.median(hub_t) - fh, statistics.median(docker_t) - fd
                print(f"{'':12s} fixed cost hub {fh * 1000:4.0f} ms, docker {fd * 1000:4.0f} ms; "
                      f"data phase hub {data_h * 1000:4.0f} ms, docker {data_d * 1000:4.0f} ms "
                      f"(ratio {data_h / max(data_d, 1e-3):4.2f}x); CPU per transfer: hub "
                      f"{cpu[0] / args.runs:4.2f} s, spoke {cpu[1] / args.runs:4.2f} s, "
                      f"CLI {cpu[2] / args.runs:4.2f} s")
            client.request("DELETE", f"/api/boxes/{box}")
        finally:
            spoke.stop()
            hub.stop()


if __name__ == "__main__":
    main()
