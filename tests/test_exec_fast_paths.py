"""The hand-rolled pieces of the exec fast paths, without a hub or Docker.

``hub box exec`` parses its arguments without click and reads the hub's chunked NDJSON
without http.client; the spoke reads the engine's hijacked exec stream head itself. Each
must agree with what it replaces (or step aside), so the cases here pin that down.
"""

from __future__ import annotations

import io
import socket
import threading
from pathlib import Path

import pytest

from cli.hub_cli import _parse_box_cp, _parse_box_exec
from client.fast_exec import read_response as _read_response
from protocol.errors import RemoteError
from spoke.boxes.docker_raw_api import EngineExec
from tests.cluster import HUB

BOX = "bx_0123456789abcdef"


def test_fast_path_parses_the_plain_forms() -> None:
    p = _parse_box_exec(["box", "exec", BOX, "--", "sh", "-c", "echo -n x -- y"])
    assert p is not None and (p.box_id, p.cmd) == (BOX, ["sh", "-c", "echo -n x -- y"])
    assert p.timeout is None and p.env == [] and p.workdir is None and p.data_dir is None

    p = _parse_box_exec(["box", "exec", "--timeout", "2.5", "--env", "A=1", "--env=B=x=y",
                         "--workdir=/tmp", "--data-dir", "/d", BOX, "true"])
    assert p is not None and p.cmd == ["true"] and p.timeout == 2.5
    assert (p.env, p.workdir, p.data_dir) == (["A=1", "B=x=y"], "/tmp", "/d")

    p = _parse_box_exec(["box", "exec", BOX, "--", "--"])  # only the first "--" is ours
    assert p is not None and p.cmd == ["--"]


@pytest.mark.parametrize("args", [
    ["box", "ls"],
    ["box", "exec", "--help"],
    ["box", "exec", "-h", BOX, "--", "true"],
    ["box", "exec", BOX],  # no command: click reports it
    ["box", "exec", BOX, "--"],
    ["box", "exec", BOX, "ls", "-la"],  # click would read options among these words
    ["box", "exec", BOX, "true", "--", "x"],  # click drops this "--"
    ["box", "exec", "--", BOX, "true"],
    ["box", "exec", "--timeout", "0", BOX, "--", "true"],  # FloatRange(min=0.001)
    ["box", "exec", "--timeout", "nan", BOX, "--", "true"],
    ["box", "exec", "--timeout", "soon", BOX, "--", "true"],
    ["box", "exec", "--timeout", "-1", BOX, "--", "true"],
    ["box", "exec", "--timeout"],
    ["box", "exec", "--data-dir=", BOX, "--", "true"],
    ["box", "exec", "--user", "root", BOX, "--", "true"],
])
def test_fast_path_leaves_everything_else_to_click(args: list[str]) -> None:
    assert _parse_box_exec(args) is None


def test_box_cp_fast_path_parses_options_anywhere() -> None:
    p = _parse_box_cp(["box", "cp", "a.txt", f"{BOX}:/workspace/"])
    assert p is not None and (p.src, p.dst, p.parents, p.as_json, p.data_dir) == (
        "a.txt", f"{BOX}:/workspace/", False, False, None)
    p = _parse_box_cp(["box", "cp", "-p", f"{BOX}:x", "--json", "out/", "--data-dir=/d"])
    assert p is not None and (p.src, p.dst, p.parents, p.as_json, p.data_dir) == (
        f"{BOX}:x", "out/", True, True, "/d")
    p = _parse_box_cp(["box", "cp", "--parents", "--data-dir", "/e", "a", "b"])
    assert p is not None and (p.parents, p.data_dir) == (True, "/e")


@pytest.mark.parametrize("args", [
    ["box", "cp", "--help"],
    ["box", "cp", "a"],  # click says what is missing
    ["box", "cp", "a", "b", "c"],
    ["box", "cp", "--", "a", "b"],
    ["box", "cp", "-pj", "a", "b"],
    ["box", "cp", "-x", "a", "b"],
    ["box", "cp", "a", "-", ],
    ["box", "cp", "--data-dir", "a", "b"],  # "a" is the data dir: one path left
    ["box", "cp", "--data-dir=", "a", "b"],
    ["box", "cp", "a", "b", "--data-dir"],
    ["box", "exec", "a", "b"],
])
def test_box_cp_fast_path_leaves_everything_else_to_click(args: list[str]) -> None:
    assert _parse_box_cp(args) is None


def _response(head: bytes, body: bytes) -> tuple[int, list[bytes]]:
    status, chunks = _read_response(io.BufferedReader(io.BytesIO(head + b"\r\n" + body)))  # type: ignore[arg-type]
    return status, list(chunks)


def test_response_reader_decodes_chunked_bodies_chunk_by_chunk() -> None:
    status, chunks = _response(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\n"
        b"Transfer-Encoding: chunked\r\n",
        b"6\r\n{\"a\":1\r\n3;ext=1\r\n}\n{\r\n0\r\nTrailer: x\r\n\r\n",
    )
    assert status == 200 and chunks == [b'{"a":1', b"}\n{"]


def test_response_reader_sized_and_until_close() -> None:
    assert _response(b"HTTP/1.1 404 Not Found\r\nContent-Length: 4\r\n", b"oops") == (404, [b"oops"])
    status, chunks = _response(b"HTTP/1.1 200 OK\r\n", b"all of it")
    assert status == 200 and b"".join(chunks) == b"all of it"


def test_response_reader_reports_a_truncated_stream() -> None:
    with pytest.raises(RemoteError):
        _response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n", b"10\r\nshort")
    with pytest.raises(RemoteError):
        _response(b"garbage\r\n", b"")


def test_engine_reads_the_exec_stream_head_and_not_a_byte_more() -> None:
    ours, engine_side = socket.socketpair()
    head = b"HTTP/1.1 101 UPGRADED\r\nContent-Type: application/vnd.docker.raw-stream\r\n\r\n"
    frame = b"\x01\x00\x00\x00\x00\x00\x00\x03hi\n"

    def serve() -> None:  # the head split across writes, the first frame right behind it
        engine_side.sendall(head[:20])
        engine_side.sendall(head[20:] + frame)
        engine_side.close()

    writer = threading.Thread(target=serve)
    writer.start()
    try:
        ours.settimeout(5)
        status, reason, headers = EngineExec("/nonexistent", "1.41", {}, 5)._read_head(ours)
        rest = b""
        while piece := ours.recv(4096):
            rest += piece
    finally:
        writer.join()
        ours.close()
    assert (status, reason) == (101, "UPGRADED")
    assert headers["content-type"] == "application/vnd.docker.raw-stream"
    assert rest == frame


def test_the_cli_fast_path_stays_import_light() -> None:
    """What ``hub box exec`` loads to pin, send and decode must not pull in http.client (the
    email package), click, or protocol.tokens (dataclasses): each costs milliseconds a run."""
    import subprocess
    import sys

    probe = ("import sys, cli.hub_cli, cli.common, cli.box_cp, client.http_client, client.fast_exec, "
             "client.errors, protocol.pins; print(sorted(m for m in ('http.client', 'email', "
             "'click', 'dataclasses', 'protocol.tokens') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("sep", [[], ["--"]], ids=["fast path", "click"])
def test_box_cp_without_a_hub_is_a_one_line_error(tmp_path: Path, sep: list[str]) -> None:
    """Both ways, both paths; it used to end in a traceback (the client was made outside
    the error handling)."""
    import subprocess

    src = tmp_path / "a.txt"
    src.write_text("x")
    empty = tmp_path / "no-hub"
    empty.mkdir()
    for args in ([str(src), f"{BOX}:/workspace/a"], [f"{BOX}:/workspace/a", str(tmp_path / "b")]):
        res = subprocess.run([HUB, "box", "cp", "--data-dir", str(empty), *sep, *args],
                             capture_output=True, text=True, timeout=60)
        assert res.returncode == 1, res.stderr
        assert res.stderr.startswith("error: no hub in ") and res.stderr.count("\n") == 1
        assert not (tmp_path / "b").exists() and not (tmp_path / "b.part").exists()
