"""One behavioural contract, checked against both BoxManagers (fake and Docker).

If a test here needs an ``if backend == ...`` it is not a conformance test: Docker-only
checks live in test_docker_hardening.py.
"""

from __future__ import annotations

import asyncio
import os
import time

import pytest

from spoke.boxes.base import BoxError, BoxInvalid, BoxManager, BoxNotFound, BoxSpec
from tests.boxes.conftest import MakeManager
from tests.boxes.helpers import get, new_box_id, process_list, run, unique_sleep

pytestmark = pytest.mark.timeout(120)


async def test_create_is_idempotent(manager: BoxManager, box_id: str, image: str) -> None:
    first = await manager.create(box_id, BoxSpec(image=image))
    again = await manager.create(box_id, BoxSpec(image=image))
    assert (first.id, first.state, first.network) == (box_id, "running", False)
    assert again.container_id == first.container_id
    other = new_box_id()
    racing = await asyncio.gather(*(manager.create(other, BoxSpec(image=image))
                                    for _ in range(3)))
    assert len({info.container_id for info in racing}) == 1
    assert sorted(b.id for b in await manager.list()) == sorted([box_id, other])
    assert (await manager.get(box_id)).container_id == first.container_id


@pytest.mark.parametrize("bad", ["", "bx_", "bx_0123", "bx_0123456789ABCDEF", "../etc",
                                 "bx_0123456789abcdef0", "box-1"])
async def test_invalid_box_id_is_rejected(manager: BoxManager, image: str, bad: str) -> None:
    with pytest.raises(BoxInvalid):
        await manager.create(bad, BoxSpec(image=image))
    with pytest.raises(BoxInvalid):
        await manager.get(bad)
    with pytest.raises(BoxInvalid):
        await manager.exec(bad, ["true"])


async def test_unknown_box_and_missing_image(manager: BoxManager, box_id: str) -> None:
    with pytest.raises(BoxNotFound):
        await manager.get(box_id)
    with pytest.raises(BoxNotFound):
        await manager.exec(box_id, ["true"])
    with pytest.raises(BoxNotFound):
        await get(manager, box_id, "/workspace/x", 10)
    with pytest.raises(BoxInvalid, match="not present on this spoke"):
        await manager.create(box_id, BoxSpec(image="spokehub-no-such-image:never"))
    assert await manager.list() == []


async def test_list_and_reap_only_see_own_boxes(make_manager: MakeManager, image: str) -> None:
    mine, theirs = await make_manager(), await make_manager()
    a, b = new_box_id(), new_box_id()
    await mine.create(a, BoxSpec(image=image))
    await theirs.create(b, BoxSpec(image=image))
    assert [i.id for i in await mine.list()] == [a]
    assert [i.id for i in await theirs.list()] == [b]
    with pytest.raises(BoxNotFound):
        await theirs.get(a)
    assert await theirs.destroy(a) is False
    assert await theirs.reap(keep=set()) == [b]
    assert (await mine.get(a)).state == "running"
    assert [i.id for i in await mine.list()] == [a]


async def test_exec_separates_streams_and_reports_exit_codes(
    manager: BoxManager, box_id: str, image: str
) -> None:
    await manager.create(box_id, BoxSpec(image=image, env={"FROM_SPEC": "spec"}))
    out, err, res = await run(manager, box_id, ["sh", "-c", "echo out; echo err >&2; exit 3"])
    assert (out, err, res.exit_code, res.timed_out, res.cancelled) == (
        b"out\n", b"err\n", 3, False, False)
    out, err, res = await run(manager, box_id, ["echo", "hello", "world"])
    assert (out, err, res.exit_code) == (b"hello world\n", b"", 0)
    out, _, res = await run(manager, box_id, ["sh", "-c", 'echo "$FROM_SPEC $FROM_EXEC"'],
                            env={"FROM_EXEC": "exec"})
    assert out == b"spec exec\n"
    _, _, res = await run(manager, box_id, ["sh", "-c", "exit 0"])
    assert res.exit_code == 0
    with pytest.raises(BoxInvalid):
        await manager.exec(box_id, [])


async def test_exec_output_is_streamed(manager: BoxManager, box_id: str, image: str) -> None:
    await manager.create(box_id, BoxSpec(image=image))
    handle = await manager.exec(box_id, ["sh", "-c", "echo first; sleep 2; echo second"])
    started = time.monotonic()
    seen: list[tuple[float, bytes]] = []
    async for stream, data in handle.chunks():
        assert stream == "stdout"
        seen.append((time.monotonic() - started, data))
    assert b"".join(d for _, d in seen) == b"first\nsecond\n"
    assert seen[0][1] == b"first\n" and seen[0][0] < 1.5, seen
    assert (await handle.wait()).exit_code == 0


async def test_exec_timeout_kills_the_process_tree(
    manager: BoxManager, box_id: str, image: str
) -> None:
    await manager.create(box_id, BoxSpec(image=image))
    n = unique_sleep()
    script = f"(sleep {n}; echo child-survived) & sleep {n}; echo never"
    started = time.monotonic()
    out, _, res = await run(manager, box_id, ["sh", "-c", script], timeout=1.0)
    assert res.timed_out and not res.cancelled and res.exit_code == 137
    assert b"never" not in out and b"child-survived" not in out
    assert time.monotonic() - started < 10
    assert f"sleep {n}" not in await process_list(manager, box_id)


async def test_kill_kills_children_and_is_idempotent(
    manager: BoxManager, box_id: str, image: str
) -> None:
    await manager.create(box_id, BoxSpec(image=image))
    n = unique_sleep()
    handle = await manager.exec(box_id, ["sh", "-c", f"(sleep {n}) & sleep {n}"])
    await asyncio.sleep(0.5)
    assert f"sleep {n}" in await process_list(manager, box_id)
    await handle.kill()
    res = await asyncio.wait_for(handle.wait(), timeout=15)
    assert res.cancelled and not res.timed_out and res.exit_code == 137
    await handle.kill()  # idempotent, and harmless after the end
    assert f"sleep {n}" not in await process_list(manager, box_id)
    # A kill racing the start of the command still gets it.
    quick = await manager.exec(box_id, ["sh", "-c", f"sleep {n}"])
    await quick.kill()
    assert (await asyncio.wait_for(quick.wait(), timeout=15)).cancelled
    assert f"sleep {n}" not in await process_list(manager, box_id)


async def test_slow_consumer_applies_backpressure(
    manager: BoxManager, box_id: str, image: str
) -> None:
    await manager.create(box_id, BoxSpec(image=image))
    total = 20_000_000
    handle = await manager.exec(box_id, ["head", "-c", str(total), "/dev/zero"])
    max_buffered = getattr(handle, "max_buffered")  # noqa: B009 - implementation detail
    await asyncio.sleep(1.0)  # nobody reads: the producer must stop at the bound
    assert getattr(handle, "buffered") == max_buffered  # noqa: B009
    assert not getattr(handle, "done")  # noqa: B009
    received = 0
    count = 0
    async for _stream, data in handle.chunks():
        received += len(data)
        count += 1
        assert getattr(handle, "buffered") <= max_buffered  # noqa: B009
        if count % 100 == 0:
            await asyncio.sleep(0.01)
    assert received == total
    assert getattr(handle, "peak_buffered") <= max_buffered  # noqa: B009
    assert (await handle.wait()).exit_code == 0


async def test_wait_without_reading_discards_output(
    manager: BoxManager, box_id: str, image: str
) -> None:
    await manager.create(box_id, BoxSpec(image=image))
    handle = await manager.exec(box_id, ["sh", "-c", "head -c 5000000 /dev/zero; exit 4"])
    res = await asyncio.wait_for(handle.wait(), timeout=30)
    assert res.exit_code == 4


async def test_destroy_is_idempotent(manager: BoxManager, box_id: str, image: str) -> None:
    await manager.create(box_id, BoxSpec(image=image))
    assert await manager.destroy(box_id) is True
    assert await manager.destroy(box_id) is False
    with pytest.raises(BoxNotFound):
        await manager.get(box_id)
    assert await manager.list() == []


async def test_destroy_ends_running_execs(manager: BoxManager, box_id: str, image: str) -> None:
    await manager.create(box_id, BoxSpec(image=image))
    handle = await manager.exec(box_id, ["sh", "-c", f"echo started; sleep {unique_sleep()}"])
    chunks = handle.chunks()
    assert await chunks.__anext__() == ("stdout", b"started\n")
    assert await manager.destroy(box_id) is True
    res = await asyncio.wait_for(handle.wait(), timeout=20)
    assert res.exit_code != 0


async def test_reap_removes_only_unknown_boxes(manager: BoxManager, image: str) -> None:
    keep, gone1, gone2 = new_box_id(), new_box_id(), new_box_id()
    for b in (keep, gone1, gone2):
        await manager.create(b, BoxSpec(image=image))
    assert sorted(await manager.reap(keep={keep, new_box_id()})) == sorted([gone1, gone2])
    assert [i.id for i in await manager.list()] == [keep]
    assert await manager.reap(keep={keep}) == []


async def test_network_flag(manager: BoxManager, box_id: str, image: str) -> None:
    info = await manager.create(box_id, BoxSpec(image=image, network=True))
    assert info.network is True
    assert (await manager.get(box_id)).network is True


async def test_stats_and_logs(manager: BoxManager, box_id: str, image: str) -> None:
    await manager.create(box_id, BoxSpec(image=image))
    stats = await manager.stats(box_id)
    for key in ("memory_bytes", "cpu_percent", "pids"):
        assert isinstance(stats[key], int | float) and stats[key] >= 0, stats
    assert isinstance(await manager.logs(box_id, tail=10), bytes)
    with pytest.raises(BoxNotFound):
        await manager.stats(new_box_id())


async def test_missing_command_and_workdir(manager: BoxManager, box_id: str, image: str) -> None:
    assert isinstance(manager, BoxManager)
    await manager.create(box_id, BoxSpec(image=image))
    _, err, res = await run(manager, box_id, ["no-such-command-xyz"])
    assert res.exit_code == 127 and b"not found" in err
    _, _, res = await run(manager, box_id, ["true"], workdir="/no/such/dir")
    assert res.exit_code == 126


async def test_killed_command_finishes_even_if_nobody_reads(
    manager: BoxManager, box_id: str, image: str
) -> None:
    """A caller that is cancelled kills the command and stops reading: the handle must
    still finish on its own instead of pinning a reader on a full queue forever."""
    await manager.create(box_id, BoxSpec(image=image))
    handle = await manager.exec(box_id, ["head", "-c", "50000000", "/dev/zero"])
    setattr(handle, "kill_grace_s", 0.5)  # noqa: B010 - implementation detail
    chunks = handle.chunks()
    await chunks.__anext__()
    started = time.monotonic()
    await asyncio.wait_for(handle.kill(), timeout=10)
    assert time.monotonic() - started < 5  # confirmed without waiting for a drain
    for _ in range(150):
        if getattr(handle, "done"):  # noqa: B009
            break
        await asyncio.sleep(0.1)
    assert getattr(handle, "done")  # noqa: B009
    assert (await handle.wait()).cancelled
    # The box is not wedged (Docker holds new execs while an ended one is undrained).
    out, _, res = await asyncio.wait_for(run(manager, box_id, ["echo", "alive"]), timeout=15)
    assert (out, res.exit_code) == (b"alive\n", 0)


async def test_kill_does_not_hang_on_an_escaped_daemon(
    manager: BoxManager, box_id: str, image: str
) -> None:
    """A double-forked daemon escapes the process tree and keeps stdout open; after the
    kill the stream is cut from our side so wait() still returns."""
    await manager.create(box_id, BoxSpec(image=image))
    n = unique_sleep()
    handle = await manager.exec(box_id, ["sh", "-c", f"(setsid sleep {n} &); sleep {n}"],
                                timeout=1.0)
    setattr(handle, "kill_grace_s", 0.5)  # noqa: B010
    try:
        res = await asyncio.wait_for(handle.wait(), timeout=20)
        assert res.timed_out and res.exit_code == 137
    finally:
        _kill_local_sleep(n)  # the fake's daemon is a real process on this machine


def _kill_local_sleep(n: str) -> None:
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as fh:
                argv = fh.read().split(b"\0")
            if argv[:2] == [b"sleep", n.encode()]:
                os.kill(int(entry), 9)
        except OSError:
            continue


async def test_a_paused_box_refuses_work_until_resumed(manager: BoxManager, box_id: str,
                                                       image: str) -> None:
    """Pause refuses exec and files with ``busy`` naming the way out; after resume the same
    process carries on (its loop counts on: nothing was restarted); pause and resume are
    idempotent; a paused box can still be destroyed."""
    await manager.create(box_id, BoxSpec(image=image))
    counter = await manager.exec(box_id, ["sh", "-c",
                                          "i=0; while :; do i=$((i+1)); echo $i > /workspace/n; "
                                          "sleep 0.05; done"], timeout=120)
    await asyncio.sleep(0.5)
    assert (await manager.pause(box_id)).state == "paused"
    assert (await manager.pause(box_id)).state == "paused"
    assert (await manager.get(box_id)).state == "paused"
    with pytest.raises(BoxError, match="paused: resume it first") as refused:
        await manager.exec(box_id, ["true"])
    assert refused.value.code == "busy"
    with pytest.raises(BoxError, match="paused"):
        await get(manager, box_id, "/workspace/n", 100)
    assert (await manager.resume(box_id)).state == "running"
    assert (await manager.resume(box_id)).state == "running"
    first, _, _ = await run(manager, box_id, ["cat", "/workspace/n"])
    await asyncio.sleep(0.5)
    later, _, _ = await run(manager, box_id, ["cat", "/workspace/n"])
    assert int(later) > int(first) > 0  # counting again, from where it stood
    await counter.kill()
    await counter.wait()
    await manager.pause(box_id)
    assert await manager.destroy(box_id) is True
    assert await manager.list() == []
