"""spoke/exec_sessions.py: a resumable exec's output, pumped from any offset the hub asks
for, kept for a re-attach while the connection is down, and killed when nobody comes back.
A scripted exec handle (the command's side) with an injected clock; the end-to-end case is
tests/test_work_survives.py."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator

import pytest

from protocol.errors import ErrorCode, RemoteError
from spoke.boxes.base import ExecResult
from spoke.exec_sessions import RETAIN_BYTES, ExecSessions


class ScriptedExec:
    """Output pieces released one ``step()`` at a time; records a kill."""

    def __init__(self, pieces: list[tuple[str, bytes]]) -> None:
        self.pieces = pieces
        self.gate = asyncio.Semaphore(0)
        self.killed = False

    def step(self, n: int = 1) -> None:
        for _ in range(n):
            self.gate.release()

    async def chunks(self) -> AsyncIterator[tuple[str, bytes]]:
        for piece in self.pieces:
            await self.gate.acquire()
            yield piece

    async def wait(self) -> ExecResult:
        return ExecResult(exit_code=3, timed_out=False, cancelled=False)

    async def kill(self) -> None:
        self.killed = True


async def _take(pump: AsyncGenerator[tuple[str, bytes], None], n: int) -> list[tuple[str, bytes]]:
    return [await anext(pump) for _ in range(n)]


async def test_a_pump_resumes_from_the_offset_the_hub_had_delivered() -> None:
    handle = ScriptedExec([("stdout", b"hello "), ("stderr", b"oops\n"), ("stdout", b"world\n")])
    sessions = ExecSessions()
    session = sessions.start("ex_0123456789abcdef", handle)
    handle.step(2)
    first = session.pump(0)
    assert await _take(first, 2) == [("stdout", b"hello "), ("stderr", b"oops\n")]
    await first.aclose()  # the connection broke; the hub had delivered only "hel"
    sessions.detached(session)
    handle.step()
    again = sessions.get("ex_0123456789abcdef").pump(3)
    got = [piece async for piece in again]
    assert got == [("stdout", b"lo "), ("stderr", b"oops\n"), ("stdout", b"world\n")]
    assert session.result is not None and session.result.exit_code == 3
    assert not handle.killed


async def test_unknown_execs_and_offsets_are_typed_errors() -> None:
    sessions = ExecSessions()
    with pytest.raises(RemoteError) as missing:
        sessions.get("ex_ffffffffffffffff")
    assert missing.value.code is ErrorCode.NOT_FOUND and "spoke restarted" in missing.value.message
    handle = ScriptedExec([("stdout", b"x")])
    session = sessions.start("ex_0000000000000001", handle)
    with pytest.raises(RemoteError) as twice:
        sessions.start("ex_0000000000000001", ScriptedExec([]))
    assert twice.value.code is ErrorCode.INVALID
    with pytest.raises(RemoteError) as ahead:
        await anext(session.pump(99))
    assert ahead.value.code is ErrorCode.INVALID


async def test_output_far_behind_the_pump_is_forgotten_and_reading_pauses_while_detached() -> None:
    piece = b"z" * (256 * 1024)
    handle = ScriptedExec([("stdout", piece)] * 40)  # 10 MiB
    sessions = ExecSessions()
    session = sessions.start("ex_0000000000000002", handle)
    handle.step(40)
    pump = session.pump(0)
    await _take(pump, 20)  # 5 MiB pumped
    assert session.start >= 5 * 1024 * 1024 - RETAIN_BYTES - len(piece)
    await pump.aclose()
    sessions.detached(session)
    for _ in range(50):
        await asyncio.sleep(0)
    assert session.end - session.pumped <= 1024 * 1024 + len(piece), "the command waits"


async def test_a_detached_exec_nobody_reattaches_is_killed_after_the_grace() -> None:
    now = [0.0]
    sessions = ExecSessions(clock=lambda: now[0], grace_s=60)
    kept, dropped = ScriptedExec([("stdout", b"a")] * 3), ScriptedExec([("stdout", b"b")] * 3)
    sessions.start("ex_00000000000000aa", kept)
    gone = sessions.start("ex_00000000000000bb", dropped)
    sessions.detached(gone)
    now[0] = 30
    sessions.detached(sessions.get("ex_00000000000000aa"))
    now[0] = 61
    await sessions.sweep()
    assert dropped.killed and not kept.killed
    with pytest.raises(RemoteError):
        sessions.get("ex_00000000000000bb")
    assert len(sessions) == 1
    await sessions.close()
    assert kept.killed and len(sessions) == 0
