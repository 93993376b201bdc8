"""50 MiB through a real hub, spoke and Docker box (issue 14): ``hub box exec`` stdout, ``hub
box cp`` in and out, each checked by hash; and the SDKs' exec (binary stream, raw bytes)
and the NDJSON stream for callers that ask for it. No timing asserts: the speed is measured
by benchmarks/bulk_data.py. Binary chunk frames on the link (protocol/binary_frames.py) and
the binary exec response (protocol/binary_exec.py) carry all of it."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import subprocess
from pathlib import Path

import pytest

from client.async_client import AsyncHubClient
from protocol import binary_exec
from tests.cluster import HUB, Hub, Spoke

IMAGE = "spokehub-sandbox:bookworm"
MIB = 1 << 20
SIZE = 50 * MIB
# A deterministic 50 MiB made in the box: 1 MiB of a pattern, 50 times (no /dev/urandom in a
# hash check; every byte value occurs, so nothing survives only as text).
PATTERN_CMD = ("python3 -c \"import sys; b = bytes(range(256)) * 4096; "
               "[sys.stdout.buffer.write(b) for _ in range(50)]\"")
PATTERN_SHA = hashlib.sha256(bytes(range(256)) * 4096 * 50).hexdigest()


@pytest.fixture
def box(hub: Hub, spoke: Spoke) -> str:
    return str(hub.cli_json("box", "create", "--spoke", spoke.name, "--image", IMAGE,
                            "--workspace", "256m")["id"])


def _env(hub: Hub) -> dict[str, str]:
    return {**os.environ, "SPOKEHUB_HUB_DIR": str(hub.dir)}


def _stdout_sha(hub: Hub, *args: str) -> tuple[int, str, int]:
    """Run ``hub ARGS``, hashing its stdout as it streams: (exit code, sha256, bytes)."""
    digest, size = hashlib.sha256(), 0
    with subprocess.Popen([HUB, *args], stdout=subprocess.PIPE, env=_env(hub)) as proc:
        assert proc.stdout is not None
        while piece := proc.stdout.read(MIB):
            digest.update(piece)
            size += len(piece)
    return proc.returncode, digest.hexdigest(), size


def test_50_mib_of_exec_output_arrive_whole_through_the_cli(hub: Hub, box: str) -> None:
    code, sha, size = _stdout_sha(hub, "box", "exec", box, "--", "sh", "-c", PATTERN_CMD)
    assert (code, size, sha) == (0, SIZE, PATTERN_SHA)
    # stdout and stderr stay apart, and the exit status is the command's
    code, sha, size = _stdout_sha(hub, "box", "exec", box, "--", "sh", "-c",
                                  "head -c 3000000 /dev/zero; echo oops >&2; exit 7")
    assert (code, size, sha) == (7, 3_000_000, hashlib.sha256(bytes(3_000_000)).hexdigest())


def test_50_mib_go_in_and_out_with_box_cp(hub: Hub, box: str, tmp_path: Path) -> None:
    src, back = tmp_path / "src.bin", tmp_path / "back.bin"
    block = os.urandom(MIB)
    src.write_bytes(block * 50)
    want = hashlib.sha256(src.read_bytes()).hexdigest()
    hub.cli("box", "cp", str(src), f"{box}:/workspace/big.bin", check=True)
    code, sha, size = _stdout_sha(hub, "box", "exec", box, "--", "cat", "/workspace/big.bin")
    assert (code, size, sha) == (0, SIZE, want)  # what landed in the box is the file
    hub.cli("box", "cp", f"{box}:/workspace/big.bin", str(back), check=True)
    assert back.stat().st_size == SIZE
    assert hashlib.sha256(back.read_bytes()).hexdigest() == want


def test_the_sdks_read_the_binary_stream_and_ndjson_stays_for_who_asks(hub: Hub, box: str) -> None:
    client = hub.client()
    cmd = ["sh", "-c", "head -c 1048577 /dev/zero; printf err >&2; exit 3"]
    events = list(client.exec_stream(box, cmd))
    out = b"".join(e["data"] for e in events if e["t"] == "stdout")
    assert out == bytes(1048577) and events[-1]["t"] == "exit" and events[-1]["exit_code"] == 3
    err = [e for e in events if e["t"] == "stderr"]
    assert [base64.b64decode(e["d"]) for e in err] == [b"err"]  # "d" still there, on demand

    async def via_async() -> list[dict[str, object]]:
        async with AsyncHubClient.from_data_dir(hub.dir) as aio:
            return [e async for e in aio.exec_stream(box, cmd)]

    async_events = asyncio.run(via_async())
    assert b"".join(e["data"] for e in async_events if e["t"] == "stdout") == out  # type: ignore[misc]
    assert async_events[-1] == events[-1]

    # A caller that asks for nothing in particular still gets NDJSON, base64 and all.
    resp = client._send("POST", f"/api/boxes/{box}/exec", json.dumps({"cmd": cmd}).encode(),
                        {"Content-Type": "application/json"})
    assert resp.status == 200 and resp.getheader("Content-Type", "").startswith("application/x-ndjson")
    lines = [json.loads(line) for line in resp.read().splitlines() if line.strip()]
    assert b"".join(base64.b64decode(x["d"]) for x in lines if x["t"] == "stdout") == out
    assert lines[-1]["t"] == "exit" and lines[-1]["exit_code"] == 3
    resp = client._send("POST", f"/api/boxes/{box}/exec", json.dumps({"cmd": ["true"]}).encode(),
                        {"Content-Type": "application/json", "Accept": binary_exec.CONTENT_TYPE})
    assert resp.getheader("Content-Type") == binary_exec.CONTENT_TYPE
    assert resp.read() == binary_exec.end_frame({"t": "exit", "exit_code": 0, "timed_out": False,
                                                 "cancelled": False})
