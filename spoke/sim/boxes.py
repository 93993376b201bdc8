"""A box manager held entirely in memory, with configurable latency: the simulator's boxes.

:mod:`spoke.boxes.fake_boxes` runs real subprocesses in real directories, which is right for
testing the layers above against Docker's behaviour but far too heavy for 10,000 spokes in one
process. Here a box is a dict of files and a "command" is a tiny interpreter (``echo``,
``true``, ``false``, ``sleep S``, ``cat FILE``; anything else prints one line and exits 0), so a
simulated spoke costs a few hundred bytes until it is asked for something. Latency is added
where Docker is slow (create, exec start), so the hub sees calls that take time to answer.

Output, timeouts and kills go through :class:`spoke.boxes.streaming.QueueExecHandle`, the
machinery both real managers share, so ``timed_out``/``cancelled`` mean the same. Paths follow
the shared rules of :mod:`spoke.boxes.base` (``plan_put``: ``docker cp``'s). Pinned by
tests/sim/test_sim_parts.py (the verbs, without a hub) and tests/sim/test_spoke_sim.py (through
a real hub).
"""

from __future__ import annotations

import asyncio
import builtins
import posixpath
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from spoke.boxes.base import (
    TMPFS_DIRS,
    BoxError,
    BoxInfo,
    BoxInvalid,
    BoxNotFound,
    BoxSpec,
    Channel,
    ExecHandle,
    exactly,
    plan_put,
    resolve_box_path,
    validate_box_id,
    validate_env,
    validate_spec,
)
from spoke.boxes.streaming import EXIT_CODE_KILLED, QueueExecHandle

ROOT_DIRS = frozenset({"/workspace", *TMPFS_DIRS})
CHUNK = 64 * 1024


@dataclass
class SimLatency:
    """Seconds added before a box operation answers (each simulated spoke may differ)."""

    create_s: float = 0.0
    exec_s: float = 0.0
    other_s: float = 0.0


@dataclass
class _Box:
    info: BoxInfo
    spec: BoxSpec
    files: dict[str, bytes] = field(default_factory=dict)
    dirs: set[str] = field(default_factory=lambda: set(ROOT_DIRS))
    execs: set[SimExecHandle] = field(default_factory=set)


Program = Callable[["SimExecHandle"], Coroutine[Any, Any, int]]


class SimExecHandle(QueueExecHandle):
    """A simulated command: a coroutine that writes output through :meth:`out` and returns
    its exit code; a kill cancels it (exit 137, as for a killed process)."""

    def __init__(self, program: Program, *, timeout: float | None) -> None:
        super().__init__(timeout=timeout)
        self._program = program
        self._proc: asyncio.Task[int] | None = None
        self._code = EXIT_CODE_KILLED

    async def out(self, stream: str, data: bytes) -> None:
        await self._put(stream, data)

    async def _pump(self) -> None:
        self._proc = asyncio.get_running_loop().create_task(self._program(self))
        self._code = await self._proc  # a kill cancels it: the base class reports 137

    async def _exit_code(self) -> int:
        return self._code

    async def _kill_process(self) -> None:
        if self._proc is not None:
            self._proc.cancel()

    def _abort_stream(self) -> None:
        if self._proc is not None:
            self._loop.call_soon_threadsafe(self._proc.cancel)


class SimBoxManager:
    """In-memory :class:`~spoke.boxes.base.BoxManager` for one simulated spoke."""

    def __init__(self, spoke_name: str, latency: SimLatency | None = None) -> None:
        self.spoke_name = spoke_name
        self.latency = latency or SimLatency()
        self._boxes: dict[str, _Box] = {}

    async def _pause(self, seconds: float) -> None:
        if seconds > 0:
            await asyncio.sleep(seconds)

    def _box(self, box_id: str) -> _Box:
        validate_box_id(box_id)
        box = self._boxes.get(box_id)
        if box is None:
            raise BoxNotFound(f"box {box_id} does not exist on spoke {self.spoke_name}")
        return box

    async def create(self, box_id: str, spec: BoxSpec) -> BoxInfo:
        validate_box_id(box_id)
        validate_spec(spec)
        if box_id in self._boxes:
            return self._boxes[box_id].info
        await self._pause(self.latency.create_s)
        if box_id in self._boxes:  # a concurrent create of the same id won
            return self._boxes[box_id].info
        info = BoxInfo(id=box_id, image=spec.image, state="running", created_at=time.time(),
                       network=spec.network, container_id=f"sim-{box_id}")
        self._boxes[box_id] = _Box(info=info, spec=spec)
        return info

    async def list(self) -> builtins.list[BoxInfo]:
        return sorted((b.info for b in self._boxes.values()), key=lambda i: i.created_at)

    async def get(self, box_id: str) -> BoxInfo:
        return self._box(box_id).info

    async def exec(self, box_id: str, cmd: builtins.list[str], *,
                   env: dict[str, str] | None = None, workdir: str | None = None,
                   timeout: float | None = None) -> ExecHandle:
        box = self._box(box_id)
        if box.info.state == "paused":
            raise BoxError(f"box {box_id} is paused: resume it first (hub box resume {box_id})",
                           "busy")
        if not cmd or not all(isinstance(a, str) and "\x00" not in a for a in cmd):
            raise BoxInvalid("exec needs a non-empty list of strings without NUL bytes")
        if timeout is not None and timeout <= 0:
            raise BoxInvalid(f"exec timeout must be positive, got {timeout}")
        validate_env(env or {})
        cwd = workdir or box.spec.workdir
        delay = self.latency.exec_s

        async def program(handle: SimExecHandle) -> int:
            await self._pause(delay)
            return await _interpret(box, list(cmd), cwd, handle)

        handle = SimExecHandle(program, timeout=timeout)
        box.execs = {h for h in box.execs if not h.done}
        box.execs.add(handle)
        handle.start()
        return handle

    async def logs(self, box_id: str, tail: int = 200) -> bytes:
        if tail < 0:
            raise BoxInvalid(f"tail must be >= 0, got {tail}")
        self._box(box_id)
        return b""

    async def destroy(self, box_id: str) -> bool:
        validate_box_id(box_id)
        box = self._boxes.pop(box_id, None)
        if box is None:
            return False
        await self._pause(self.latency.other_s)
        for handle in list(box.execs):
            if not handle.done:
                handle.discard()
                await handle.kill()
        return True

    async def resolve_path(self, box_id: str, path: str) -> str:
        return resolve_box_path(path, self._box(box_id).spec.workdir)[0]

    async def put_file(self, box_id: str, path: str, chunks: AsyncIterator[bytes], size: int,
                       mode: int = 0o644, *, parents: bool = False,
                       into_dir_name: str | None = None) -> str:
        box = self._box(box_id)
        if size < 0:
            raise BoxInvalid(f"size must be >= 0, got {size}")

        async def kind(p: str) -> str | None:
            return "dir" if p in box.dirs else "file" if p in box.files else None

        plan = await plan_put(path, box.spec.workdir, kind, parents=parents,
                              into_dir_name=into_dir_name, where=f"box {box_id}")
        if not any(plan.path.startswith(d + "/") for d in ROOT_DIRS):
            raise BoxError(f"writing {plan.path} in box {box_id}: read-only file system "
                           "(write under /workspace)", "denied")
        limit = box.spec.workspace_bytes
        if limit is not None and plan.path.startswith("/workspace/"):
            used = sum(len(v) for k, v in box.files.items()
                       if k.startswith("/workspace/") and k != plan.path)
            if used + size > limit:
                raise BoxError(f"writing {plan.path} in box {box_id}: no space left on device",
                               "denied")
        data = b"".join([piece async for piece in exactly(chunks, size)])
        box.dirs.update(plan.make_dirs)
        box.files[plan.path] = data
        return plan.path

    async def get_file(self, box_id: str, path: str, max_bytes: int) -> AsyncIterator[bytes]:
        box = self._box(box_id)
        if max_bytes < 0:
            raise BoxInvalid(f"max_bytes must be >= 0, got {max_bytes}")
        path = resolve_box_path(path, box.spec.workdir)[0]
        if path in box.dirs:
            raise BoxInvalid(f"{path} in box {box_id} is a directory, not a file")
        data = box.files.get(path)
        if data is None:
            raise BoxNotFound(f"no such file {path} in box {box_id}")
        if len(data) > max_bytes:
            raise BoxInvalid(f"{path} in box {box_id} is {len(data)} bytes, more than the "
                             f"{max_bytes}-byte limit")
        for start in range(0, len(data), CHUNK):
            yield data[start:start + CHUNK]

    async def pause(self, box_id: str) -> BoxInfo:
        """Only a state: a simulated box has no processes to freeze."""
        box = self._box(box_id)
        box.info.state = "paused"
        return box.info

    async def resume(self, box_id: str) -> BoxInfo:
        box = self._box(box_id)
        box.info.state = "running"
        return box.info

    async def open_pty(self, box_id: str, cmd: builtins.list[str], *,
                       env: dict[str, str] | None = None, workdir: str | None = None,
                       rows: int = 24, cols: int = 80) -> Channel:
        self._box(box_id)
        raise BoxError("simulated spokes have no terminals", "unavailable")

    async def open_port(self, box_id: str, port: int) -> Channel:
        self._box(box_id)
        raise BoxError("simulated spokes have no ports to preview", "unavailable")

    async def stats(self, box_id: str) -> dict[str, float | int]:
        box = self._box(box_id)
        running = sum(1 for h in box.execs if not h.done)
        return {"memory_bytes": sum(len(v) for v in box.files.values()),
                "memory_limit_bytes": box.spec.memory_bytes, "cpu_percent": 0.0,
                "pids": 1 + running}

    async def reap(self, keep: set[str]) -> builtins.list[str]:
        removed = []
        for box_id in list(self._boxes):
            if box_id not in keep and await self.destroy(box_id):
                removed.append(box_id)
        return removed

    def kill_execs(self) -> None:
        """The spoke process "crashed": its commands die, its boxes (containers) stay."""
        for box in self._boxes.values():
            for handle in box.execs:
                if not handle.done:
                    handle.discard()
                    asyncio.get_running_loop().create_task(handle.kill())

    async def close(self) -> None:
        for box in self._boxes.values():
            for handle in list(box.execs):
                await handle.abandon()


async def _interpret(box: _Box, cmd: builtins.list[str], cwd: str,
                     handle: SimExecHandle) -> int:
    """The simulated shell: a few commands that behave like coreutils, the rest a no-op."""
    name, args = posixpath.basename(cmd[0]), cmd[1:]
    if name == "true":
        return 0
    if name == "false":
        return 1
    if name == "echo":
        await handle.out("stdout", (" ".join(args) + "\n").encode())
        return 0
    if name == "sleep":
        try:
            await asyncio.sleep(float(args[0]) if args else 0.0)
        except ValueError:
            await handle.out("stderr", f"sleep: invalid time interval {args[0]!r}\n".encode())
            return 1
        return 0
    if name == "cat":
        code = 0
        for arg in args:
            path = posixpath.normpath(posixpath.join(cwd, arg))
            data = box.files.get(path)
            if data is None:
                await handle.out("stderr", f"cat: {arg}: No such file or directory\n".encode())
                code = 1
            else:
                for start in range(0, len(data), CHUNK):
                    await handle.out("stdout", data[start:start + CHUNK])
        return code
    await handle.out("stdout", f"simulated: {' '.join(cmd)[:200]}\n".encode())
    return 0
