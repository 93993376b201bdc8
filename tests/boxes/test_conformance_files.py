"""The file part of the box conformance suite: one contract, both BoxManagers (fake, Docker).

Split from test_conformance.py for length only: same fixtures, same rule (no ``if backend``).
Files stream in and out (``put_file`` takes chunks and a size, ``get_file`` yields chunks),
uploads must match their declared size, a reader may stop early, tmpfs paths (/tmp) work
(issue 8 item 8: it used to say "no such file"), a full workspace refuses a put, and root
is refused unless allowed (item 2).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator

import pytest

from spoke.boxes.base import BoxError, BoxInvalid, BoxManager, BoxNotFound, BoxSpec
from tests.boxes.helpers import get, new_box_id, put, run

pytestmark = pytest.mark.timeout(120)
MIB = 1024 * 1024


async def pattern(total: int, piece: int = 64 * 1024, seed: bytes = b"x") -> AsyncIterator[bytes]:
    """``total`` deterministic bytes in ``piece``-sized chunks, made as they are asked for."""
    block = hashlib.sha256(seed).digest() * (piece // 32 + 1)
    sent = 0
    while sent < total:
        n = min(piece, total - sent)
        yield block[:n]
        sent += n
        await asyncio.sleep(0)


def pattern_bytes(total: int, piece: int = 64 * 1024, seed: bytes = b"x") -> bytes:
    block = hashlib.sha256(seed).digest() * (piece // 32 + 1)
    return b"".join(block[:min(piece, total - i)] for i in range(0, total, piece))


async def test_put_and_get_files(manager: BoxManager, box_id: str, image: str) -> None:
    await manager.create(box_id, BoxSpec(image=image))
    blob = os.urandom(5 * 1024 * 1024)
    await put(manager, box_id, "/workspace/blob.bin", blob)
    assert await get(manager, box_id, "/workspace/blob.bin", 6 * 1024 * 1024) == blob
    out, _, _ = await run(manager, box_id, ["sh", "-c", "wc -c < /workspace/blob.bin"])
    assert out.strip() == str(len(blob)).encode()
    # Mode is honoured and the file belongs to the box's user: it can run and edit it.
    await put(manager, box_id, "/workspace/run.sh", b"#!/bin/sh\necho ran $1\n", 0o755)
    out, _, res = await run(manager, box_id, ["/workspace/run.sh", "ok"])
    assert (out, res.exit_code) == (b"ran ok\n", 0)
    _, err, res = await run(manager, box_id, ["sh", "-c", "echo more >> /workspace/run.sh"])
    assert res.exit_code == 0, err
    # Files written by commands can be fetched; overwriting replaces the content.
    await run(manager, box_id, ["sh", "-c", "printf made-inside > /workspace/inside.txt"])
    assert await get(manager, box_id, "/workspace/inside.txt", 100) == b"made-inside"
    await put(manager, box_id, "/workspace/inside.txt", b"replaced")
    assert await get(manager, box_id, "/workspace/inside.txt", 100) == b"replaced"
    await put(manager, box_id, "/workspace/empty", b"")
    assert await get(manager, box_id, "/workspace/empty", 0) == b""


async def test_file_errors(manager: BoxManager, box_id: str, image: str) -> None:
    await manager.create(box_id, BoxSpec(image=image))
    await put(manager, box_id, "/workspace/ten", b"0123456789")
    with pytest.raises(BoxNotFound):
        await get(manager, box_id, "/workspace/missing", 100)
    with pytest.raises(BoxInvalid, match="limit"):
        await get(manager, box_id, "/workspace/ten", 9)
    with pytest.raises(BoxInvalid, match="directory"):
        await get(manager, box_id, "/workspace", 100)
    with pytest.raises(BoxInvalid, match="does not exist"):
        await put(manager, box_id, "/workspace/no/such/dir/f", b"x")
    with pytest.raises(BoxInvalid):
        await put(manager, box_id, "workspace/relative", b"x")
    with pytest.raises(BoxInvalid):
        await put(manager, box_id, "/workspace/../etc/passwd", b"x")
    with pytest.raises(BoxError) as denied:
        await put(manager, box_id, "/etc/spokehub-test", b"x")
    assert denied.value.code == "denied"


async def test_put_file_into_a_directory(manager: BoxManager, box_id: str, image: str) -> None:
    """Like ``docker cp``: a target that is a directory (or ends in '/') gets the file under
    the name the caller gives; a missing '/'-directory is an error unless ``parents``."""
    await manager.create(box_id, BoxSpec(image=image))
    for target in ("/workspace", "/workspace/"):
        written = await put(manager, box_id, target, b"into", into_dir_name="notes.txt")
        assert written == "/workspace/notes.txt"
        assert await get(manager, box_id, "/workspace/notes.txt", 100) == b"into"
    with pytest.raises(BoxInvalid, match="directory"):
        await put(manager, box_id, "/workspace", b"x")
    with pytest.raises(BoxInvalid, match="does not exist"):
        await put(manager, box_id, "/workspace/sub/", b"x", into_dir_name="n.txt")
    written = await put(manager, box_id, "/workspace/sub/", b"made", parents=True,
                                     into_dir_name="n.txt")
    assert written == "/workspace/sub/n.txt"
    assert await get(manager, box_id, "sub/n.txt", 100) == b"made"
    await put(manager, box_id, "/workspace/ten", b"0123456789")
    with pytest.raises(BoxInvalid, match="not a directory"):
        await put(manager, box_id, "/workspace/ten/", b"x", into_dir_name="n.txt")
    await run(manager, box_id, ["mkdir", "/workspace/d", "/workspace/d/notes.txt"])
    with pytest.raises(BoxInvalid, match="directory"):
        await put(manager, box_id, "/workspace/d", b"x", into_dir_name="notes.txt")
    for bad in ("a/b", "..", ".", "", "x\x00"):
        with pytest.raises(BoxInvalid):
            await put(manager, box_id, "/workspace", b"x", into_dir_name=bad)


async def test_relative_paths_mean_the_working_directory(
    manager: BoxManager, box_id: str, image: str
) -> None:
    await manager.create(box_id, BoxSpec(image=image))
    assert await manager.resolve_path(box_id, "notes.txt") == "/workspace/notes.txt"
    assert await manager.resolve_path(box_id, "./sub//x.txt") == "/workspace/sub/x.txt"
    assert await manager.resolve_path(box_id, "/workspace/x/") == "/workspace/x"
    assert await put(manager, box_id, "notes.txt", b"rel") == "/workspace/notes.txt"
    out, _, _ = await run(manager, box_id, ["cat", "notes.txt"])
    assert out == b"rel"
    assert await get(manager, box_id, "notes.txt", 100) == b"rel"
    assert await put(manager, box_id, ".", b"dot", into_dir_name="d.txt") == \
        "/workspace/d.txt"
    for bad in ("../etc/passwd", "sub/../../x", "x\x00y", "/"):
        with pytest.raises(BoxInvalid):
            await manager.resolve_path(box_id, bad)
        with pytest.raises(BoxInvalid):
            await put(manager, box_id, bad, b"x")
    with pytest.raises(BoxNotFound):
        await manager.resolve_path(new_box_id(), "x")


async def test_parents_are_created_for_the_box_user(
    manager: BoxManager, box_id: str, image: str
) -> None:
    await manager.create(box_id, BoxSpec(image=image))
    assert await put(manager, box_id, "/workspace/a/b/c.txt", b"deep", parents=True) == \
        "/workspace/a/b/c.txt"
    assert await put(manager, box_id, "a/b/c2.txt", b"again", parents=True) == \
        "/workspace/a/b/c2.txt"
    out, err, res = await run(manager, box_id, [
        "sh", "-c", "id -u; stat -c %u /workspace/a /workspace/a/b /workspace/a/b/c.txt; "
        "touch /workspace/a/more /workspace/a/b/more && cat /workspace/a/b/c.txt"])
    assert res.exit_code == 0, err
    uid, *owners, content = out.decode().split()
    assert owners == [uid] * 3 and content == "deep"
    await put(manager, box_id, "/workspace/ten", b"0123456789")
    with pytest.raises(BoxInvalid, match="not a directory"):
        await put(manager, box_id, "/workspace/ten/x/y", b"x", parents=True)
    with pytest.raises(BoxError) as denied:
        await put(manager, box_id, "/spokehub-new/dir/f", b"x", parents=True)
    assert denied.value.code == "denied"


async def test_files_stream_in_and_out(manager: BoxManager, box_id: str, image: str) -> None:
    """A file bigger than any buffer goes in as chunks and comes out as chunks."""
    await manager.create(box_id, BoxSpec(image=image))
    size = 24 * MIB + 123
    written = await manager.put_file(box_id, "big.bin", pattern(size), size, 0o600)
    assert written == "/workspace/big.bin"
    chunks = [c async for c in manager.get_file(box_id, "big.bin", size)]
    assert len(chunks) > 4 and max(len(c) for c in chunks) <= 4 * MIB
    assert b"".join(chunks) == pattern_bytes(size)
    out, _, _ = await run(manager, box_id, ["sh", "-c", "wc -c < big.bin; stat -c %a big.bin"])
    assert out.split() == [str(size).encode(), b"600"]


async def test_upload_must_be_exactly_the_declared_size(
    manager: BoxManager, box_id: str, image: str
) -> None:
    await manager.create(box_id, BoxSpec(image=image))
    with pytest.raises(BoxInvalid, match="ended after 1000 of 2000"):
        await manager.put_file(box_id, "/workspace/short", pattern(1000), 2000)
    with pytest.raises(BoxInvalid, match="longer than the declared 1000"):
        await manager.put_file(box_id, "/workspace/long", pattern(3000, 700), 1000)
    with pytest.raises(BoxInvalid, match="ended after"):
        await manager.put_file(box_id, "/tmp/short", pattern(10), 20)
    # The manager is still fine afterwards.
    await put(manager, box_id, "/workspace/ok", b"fine")
    assert await get(manager, box_id, "/workspace/ok", 10) == b"fine"


async def test_a_reader_may_stop_early(manager: BoxManager, box_id: str, image: str) -> None:
    """Closing a download after its first chunk frees everything it held: the box (and the
    manager) go on working at once, on the archive path and the tmpfs one alike."""
    await manager.create(box_id, BoxSpec(image=image))
    size = 32 * MIB
    await manager.put_file(box_id, "/workspace/big.bin", pattern(size), size)
    await run(manager, box_id, ["sh", "-c", "head -c 20000000 /dev/zero > /tmp/big.bin"])
    for path in ("/workspace/big.bin", "/tmp/big.bin"):
        stream = manager.get_file(box_id, path, size)
        assert await asyncio.wait_for(anext(stream), timeout=30)
        await asyncio.wait_for(stream.aclose(), timeout=10)  # type: ignore[attr-defined]
        await asyncio.wait_for(put(manager, box_id, "/workspace/ok.txt", path.encode()), 30)
        assert await asyncio.wait_for(get(manager, box_id, "/workspace/ok.txt", 100),
                                      timeout=30) == path.encode()


async def test_tmpfs_files(manager: BoxManager, box_id: str, image: str) -> None:
    """/tmp is a tmpfs, which Docker's archive API cannot see: a file a command wrote there
    can be read, and one put there is what commands see (issue 8 item 8)."""
    await manager.create(box_id, BoxSpec(image=image))
    _, err, res = await run(manager, box_id, ["sh", "-c", "printf made-by-a-command > "
                                              "/tmp/made.txt; mkdir /tmp/d"])
    assert res.exit_code == 0, err
    assert await get(manager, box_id, "/tmp/made.txt", 100) == b"made-by-a-command"
    with pytest.raises(BoxNotFound, match="no such file"):
        await get(manager, box_id, "/tmp/missing.txt", 100)
    with pytest.raises(BoxInvalid, match="directory"):
        await get(manager, box_id, "/tmp/d", 100)
    with pytest.raises(BoxInvalid, match="limit"):
        await get(manager, box_id, "/tmp/made.txt", 5)
    assert await put(manager, box_id, "/tmp/up.txt", b"uploaded", 0o640) == "/tmp/up.txt"
    assert await put(manager, box_id, "/tmp/d", b"inside", into_dir_name="n.txt") == \
        "/tmp/d/n.txt"
    assert await put(manager, box_id, "/tmp/a/b/c.txt", b"deep", parents=True) == \
        "/tmp/a/b/c.txt"
    with pytest.raises(BoxInvalid, match="does not exist"):
        await put(manager, box_id, "/tmp/x/y.txt", b"no parents")
    with pytest.raises(BoxInvalid, match="directory"):
        await put(manager, box_id, "/tmp/d", b"x")
    out, err, res = await run(manager, box_id, [
        "sh", "-c", "cat /tmp/up.txt /tmp/d/n.txt /tmp/a/b/c.txt; echo; id -u; "
        "stat -c '%u %a' /tmp/up.txt; ls -a /tmp/d"])
    assert res.exit_code == 0, err
    content, uid, owner, *listing = out.decode().splitlines()
    assert content == "uploadedinsidedeep"
    assert owner == f"{uid} 640"  # the box's user owns it, with the mode asked for
    assert listing == [".", "..", "n.txt"]  # no temporary file left behind
    size = 3 * MIB
    await manager.put_file(box_id, "/tmp/big.bin", pattern(size), size)
    assert await get(manager, box_id, "/tmp/big.bin", size) == pattern_bytes(size)


async def test_a_full_workspace_refuses_a_put(manager: BoxManager, box_id: str,
                                              image: str) -> None:
    await manager.create(box_id, BoxSpec(image=image, workspace_bytes=32 * MIB))
    with pytest.raises(BoxError, match="no space left") as full:
        await manager.put_file(box_id, "/workspace/big", pattern(40 * MIB), 40 * MIB)
    assert full.value.code == "denied"
    await run(manager, box_id, ["rm", "-f", "/workspace/big"])
    await put(manager, box_id, "/workspace/small", b"fits")
    assert await get(manager, box_id, "/workspace/small", 10) == b"fits"


async def test_root_needs_the_spokes_permission(manager: BoxManager, image: str) -> None:
    for user in ("0", "root", "0:0", "root:1000"):
        with pytest.raises(BoxError, match="allow-root") as refused:
            await manager.create(new_box_id(), BoxSpec(image=image, user=user))
        assert refused.value.code == "denied"
    for bad in ("a b", "x\x1b[31m", "1000:", ":1000", "a;b", ""):
        with pytest.raises(BoxInvalid, match="user"):
            await manager.create(new_box_id(), BoxSpec(image=image, user=bad))
    info = await manager.create(new_box_id(), BoxSpec(image=image, user="0", allow_root=True))
    assert info.state == "running"
    assert [b.id for b in await manager.list()] == [info.id]
