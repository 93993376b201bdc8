"""A Docker-free BoxManager for fast tests of the layers above (verbs, hub, SDK).

Commands run as real local subprocesses in a per-box temporary directory, so pipes,
exit codes, streaming, timeouts and kills behave like the real thing. This is a test
double, **not** a sandbox: there is no isolation at all. ``/workspace`` in file paths,
arguments and the working directory is mapped to the box's directory (a plain textual
substitution, good enough for tests), and so are the tmpfs mounts ``/tmp`` and ``/run``,
to directories of their own. Other paths behave like Docker's read-only root filesystem:
writes are denied and reads find nothing. Relative file paths mean the box's working
directory (the spec's ``workdir``), as in a container. Files stream in and out in chunks,
a put past the spec's ``workspace_bytes`` fails like a full disk, and a root user must be
allowed (``allow_root``), as with the Docker manager.

The same conformance suite (tests/boxes) runs against this and the Docker manager.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import functools
import os
import re
import secrets
import shutil
import signal
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

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
    is_root_user,
    plan_put,
    resolve_box_path,
    validate_box_id,
    validate_box_path,
    validate_env,
    validate_spec,
)
from spoke.boxes.fake_channels import LocalPort, LocalPty
from spoke.boxes.streaming import QueueExecHandle

WORKSPACE = "/workspace"
MAPPED = (WORKSPACE, *TMPFS_DIRS)  # box paths that live in the box's directory
_MAPPED_RE = re.compile(r"(?<![\w.\-/])(/workspace|/tmp|/run)(?![\w.\-])")
READ_SIZE = 64 * 1024


@dataclass
class _FakeBox:
    info: BoxInfo
    spec: BoxSpec
    root: Path
    execs: set[LocalExecHandle] = field(default_factory=set)

    @property
    def workspace(self) -> Path:
        return self.root / "workspace"


class LocalExecHandle(QueueExecHandle):
    """A local subprocess in its own session, so a kill reaches its whole process group."""

    def __init__(self, proc: asyncio.subprocess.Process, *, timeout: float | None,
                 max_buffered: int = 64) -> None:
        super().__init__(max_buffered=max_buffered, timeout=timeout)
        self.proc = proc

    async def _pump(self) -> None:
        async def read(stream: asyncio.StreamReader | None, name: str) -> None:
            if stream is None:
                return
            while True:
                data = await stream.read(READ_SIZE)
                if not data:
                    return
                await self._put(name, data)

        await asyncio.gather(read(self.proc.stdout, "stdout"), read(self.proc.stderr, "stderr"))

    async def _exit_code(self) -> int:
        code = await self.proc.wait()
        return 128 - code if code < 0 else code

    async def _kill_process(self) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)

    def _abort_stream(self) -> None:
        def feed_eof() -> None:
            for stream in (self.proc.stdout, self.proc.stderr):
                if stream is not None:
                    stream.feed_eof()

        self._loop.call_soon_threadsafe(feed_eof)


class FakeBoxManager:
    """In-process :class:`~spoke.boxes.base.BoxManager` with the Docker manager's semantics.

    ``images`` (if given) is the set of image names "present on this spoke"; creating a box
    from any other image fails the same way the Docker manager does.
    """

    def __init__(self, spoke_name: str = "fake", *, images: set[str] | None = None,
                 root: Path | None = None) -> None:
        self.spoke_name = spoke_name
        self._images = images
        self._own_root = root is None
        self._root = root or Path(tempfile.mkdtemp(prefix=f"spokehub-fake-{spoke_name[:20]}-"))
        self._boxes: dict[str, _FakeBox] = {}
        self._lock = asyncio.Lock()
        self._closed = False

    def _box(self, box_id: str) -> _FakeBox:
        validate_box_id(box_id)
        if self._closed:
            raise BoxError("the box manager is closed", "unavailable")
        box = self._boxes.get(box_id)
        if box is None:
            raise BoxNotFound(f"box {box_id} does not exist on spoke {self.spoke_name}")
        return box

    def _usable_box(self, box_id: str) -> _FakeBox:
        """The box, unless it is paused (then the same ``busy`` error as Docker's manager)."""
        box = self._box(box_id)
        if box.info.state == "paused":
            raise BoxError(f"box {box_id} is paused: resume it first (hub box resume {box_id})",
                           "busy")
        return box

    async def pause(self, box_id: str) -> BoxInfo:
        """SIGSTOP to every running command's process group: the fake's freezer."""
        box = self._box(box_id)
        box.info.state = "paused"
        for handle in box.execs:
            if not handle.done:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(handle.proc.pid, signal.SIGSTOP)
        return box.info

    async def resume(self, box_id: str) -> BoxInfo:
        box = self._box(box_id)
        if box.info.state == "paused":
            for handle in box.execs:
                if not handle.done:
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.killpg(handle.proc.pid, signal.SIGCONT)
            box.info.state = "running"
        return box.info

    def _host_path(self, box: _FakeBox, path: str) -> Path | None:
        """Where a box path lives on the host, or None if outside the mapped directories."""
        path = validate_box_path(path)
        for mount in MAPPED:
            if path == mount or path.startswith(mount + "/"):
                return box.root / mount.lstrip("/") / path[len(mount):].lstrip("/")
        return None

    def _map(self, box: _FakeBox, text: str) -> str:
        return _MAPPED_RE.sub(lambda m: str(box.root) + m.group(1), text)

    async def create(self, box_id: str, spec: BoxSpec) -> BoxInfo:
        validate_box_id(box_id)
        validate_spec(spec)
        async with self._lock:
            if box_id in self._boxes:
                return self._boxes[box_id].info
            if self._images is not None and spec.image not in self._images:
                raise BoxInvalid(f"image {spec.image} is not present on this spoke")
            if spec.user is not None and is_root_user(spec.user) and not spec.allow_root:
                raise BoxError(f"box user {spec.user} is root (uid 0), which this spoke does "
                               "not allow (its operator can: spoke join --allow-root)", "denied")
            root = self._root / box_id
            for mount in MAPPED:
                await asyncio.to_thread((root / mount.lstrip("/")).mkdir, parents=True,
                                        exist_ok=True)
            info = BoxInfo(id=box_id, image=spec.image, state="running",
                           created_at=time.time(), network=spec.network,
                           container_id=f"fake-{box_id}")
            self._boxes[box_id] = _FakeBox(info=info, spec=spec, root=root)
            return info

    async def list(self) -> list[BoxInfo]:
        return sorted((b.info for b in self._boxes.values()), key=lambda i: i.created_at)

    async def get(self, box_id: str) -> BoxInfo:
        return self._box(box_id).info

    async def exec(
        self,
        box_id: str,
        cmd: builtins.list[str],
        *,
        env: dict[str, str] | None = None,
        workdir: str | None = None,
        timeout: float | None = None,
    ) -> ExecHandle:
        box = self._usable_box(box_id)
        if not cmd or not all(isinstance(a, str) and "\x00" not in a for a in cmd):
            raise BoxInvalid("exec needs a non-empty list of strings without NUL bytes")
        if timeout is not None and timeout <= 0:
            raise BoxInvalid(f"exec timeout must be positive, got {timeout}")
        if workdir is not None and not workdir.startswith("/"):
            raise BoxInvalid(f"exec workdir must be absolute, got {workdir!r:.100}")
        validate_env(env or {})
        full_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8",
                    "HOME": str(box.workspace)}
        full_env.update({k: self._map(box, v) for k, v in box.spec.env.items()})
        full_env.update({k: self._map(box, v) for k, v in (env or {}).items()})
        wanted = workdir or box.spec.workdir
        cwd = self._map(box, wanted)
        argv = ["/bin/sh", "-c", 'exec "$@"', "sh", *[self._map(box, a) for a in cmd]]
        if not await asyncio.to_thread(os.path.isdir, cwd):
            # What Docker does for a missing working directory: exit 126 with a message.
            cwd = str(box.workspace)
            argv = ["/bin/sh", "-c", 'echo "chdir to cwd ($0) failed: no such file or '
                    'directory" >&2; exit 126', wanted]
        # Through sh, like the Docker manager's wrapper: a missing command is exit 127.
        proc = await asyncio.create_subprocess_exec(
            *argv, cwd=cwd, env=full_env,
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, start_new_session=True,
        )
        handle = LocalExecHandle(proc, timeout=timeout)
        box.execs = {h for h in box.execs if not h.done}
        box.execs.add(handle)
        handle.start()
        return handle

    async def open_pty(self, box_id: str, cmd: builtins.list[str], *,
                       env: dict[str, str] | None = None, workdir: str | None = None,
                       rows: int = 24, cols: int = 80) -> Channel:
        """``cmd`` on a real local PTY (spoke/boxes/fake_channels.py), with the box's
        directory mapping and environment as for :meth:`exec`."""
        box = self._usable_box(box_id)
        if not cmd or not all(isinstance(a, str) and "\x00" not in a for a in cmd):
            raise BoxInvalid("a pty needs a non-empty list of strings without NUL bytes")
        if workdir is not None and not workdir.startswith("/"):
            raise BoxInvalid(f"pty workdir must be absolute, got {workdir!r:.100}")
        validate_env(env or {})
        full_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8",
                    "HOME": str(box.workspace), "TERM": "xterm"}
        full_env.update({k: self._map(box, v) for k, v in box.spec.env.items()})
        full_env.update({k: self._map(box, v) for k, v in (env or {}).items()})
        cwd = self._map(box, workdir or box.spec.workdir)
        if not await asyncio.to_thread(os.path.isdir, cwd):
            raise BoxInvalid(f"pty workdir {workdir or box.spec.workdir} does not exist")
        argv = ["/bin/sh", "-c", 'exec "$@"', "sh", *[self._map(box, a) for a in cmd]]
        return await LocalPty.spawn(argv, cwd=cwd, env=full_env, rows=rows, cols=cols)

    async def open_port(self, box_id: str, port: int) -> Channel:
        """The fake's stand-in: ``127.0.0.1:port`` on the spoke machine itself (there is no
        box to reach into; the Docker manager connects from inside the box)."""
        self._usable_box(box_id)
        if not isinstance(port, int) or not 1 <= port <= 65535:
            raise BoxInvalid(f"port must be 1-65535, got {port!r:.20}")
        return await LocalPort.connect(port, f"box {box_id}")

    async def logs(self, box_id: str, tail: int = 200) -> bytes:
        if tail < 0:
            raise BoxInvalid(f"tail must be >= 0, got {tail}")
        self._box(box_id)
        return b""  # the box's main process (a sleep loop) never prints anything

    async def destroy(self, box_id: str) -> bool:
        validate_box_id(box_id)
        box = self._boxes.pop(box_id, None)
        if box is None:
            return False
        for handle in list(box.execs):
            if not handle.done:
                handle.discard()
                await handle.kill()
        await asyncio.to_thread(shutil.rmtree, box.root, True)
        return True

    async def resolve_path(self, box_id: str, path: str) -> str:
        return resolve_box_path(path, self._box(box_id).spec.workdir)[0]

    async def _kind(self, box: _FakeBox, path: str) -> str | None:
        host = self._host_path(box, path)
        if host is None:
            return None

        def kind() -> str | None:
            with contextlib.suppress(OSError):
                return "dir" if host.is_dir() else "file" if host.exists() else None
            return None

        return await asyncio.to_thread(kind)

    async def put_file(self, box_id: str, path: str, chunks: AsyncIterator[bytes], size: int,
                       mode: int = 0o644, *, parents: bool = False,
                       into_dir_name: str | None = None) -> str:
        box = self._usable_box(box_id)
        if size < 0:
            raise BoxInvalid(f"size must be >= 0, got {size}")
        full = resolve_box_path(path, box.spec.workdir)[0]
        if self._host_path(box, full) is None:
            raise BoxError(f"writing {full} in box {box_id}: read-only file system "
                           "(write under /workspace)", "denied")
        plan = await plan_put(path, box.spec.workdir, functools.partial(self._kind, box),
                              parents=parents, into_dir_name=into_dir_name,
                              where=f"box {box_id}")
        target = self._host_path(box, plan.path)
        dirs = [self._host_path(box, d) for d in plan.make_dirs]
        if target is None or None in dirs:
            raise BoxError(f"writing {plan.path} in box {box_id}: read-only file system "
                           "(write under /workspace)", "denied")
        limit = box.spec.workspace_bytes
        if limit is not None and target.is_relative_to(box.workspace):
            used = await asyncio.to_thread(_used_bytes, box.workspace, target)
            if used + size > limit:
                raise BoxError(f"writing {plan.path} in box {box_id}: no space left on device "
                               f"(the box's workspace is full: its size is limited to {limit} "
                               "bytes)", "denied")

        def prepare(target: Path) -> Path:
            for made in dirs:
                assert made is not None
                made.mkdir(exist_ok=True)
            if not target.parent.is_dir():  # removed since it was planned
                raise BoxInvalid(f"cannot write {plan.path} in box {box_id}: parent "
                                 "directory does not exist")
            if target.is_dir():
                raise BoxInvalid(f"cannot write {plan.path} in box {box_id}: it is a directory")
            return target.with_name(f".{target.name}.spokehub-{secrets.token_hex(4)}")

        temp = await asyncio.to_thread(prepare, target)
        try:
            with temp.open("wb") as fh:  # noqa: ASYNC230 - each write goes to a thread
                async for piece in exactly(chunks, size):
                    await asyncio.to_thread(fh.write, piece)
            await asyncio.to_thread(temp.chmod, mode & 0o7777)
            await asyncio.to_thread(os.replace, temp, target)
        finally:
            with contextlib.suppress(FileNotFoundError):
                await asyncio.to_thread(temp.unlink)
        return plan.path

    async def get_file(self, box_id: str, path: str, max_bytes: int) -> AsyncIterator[bytes]:
        box = self._usable_box(box_id)
        if max_bytes < 0:
            raise BoxInvalid(f"max_bytes must be >= 0, got {max_bytes}")
        path = resolve_box_path(path, box.spec.workdir)[0]
        target = self._host_path(box, path)
        if target is None:
            raise BoxNotFound(f"no such file {path} in box {box_id}")

        def check(target: Path) -> None:
            if not target.exists():
                raise BoxNotFound(f"no such file {path} in box {box_id}")
            if target.is_dir():
                raise BoxInvalid(f"{path} in box {box_id} is a directory, not a file")
            size = target.stat().st_size
            if size > max_bytes:
                raise BoxInvalid(f"{path} in box {box_id} is {size} bytes, more than the "
                                 f"{max_bytes}-byte limit")

        await asyncio.to_thread(check, target)
        sent = 0
        with target.open("rb") as fh:  # noqa: ASYNC230 - each read goes to a thread
            while piece := await asyncio.to_thread(fh.read, READ_SIZE):
                sent += len(piece)
                if sent > max_bytes:
                    raise BoxInvalid(f"{path} in box {box_id} grew past the {max_bytes}-byte "
                                     "limit")
                yield piece

    async def stats(self, box_id: str) -> dict[str, float | int]:
        box = self._box(box_id)
        running = [h for h in box.execs if not h.done]
        rss = await asyncio.to_thread(_rss_bytes, [h.proc.pid for h in running])
        return {"memory_bytes": rss, "memory_limit_bytes": box.spec.memory_bytes,
                "cpu_percent": 0.0, "pids": 1 + len(running)}

    async def reap(self, keep: set[str]) -> builtins.list[str]:
        removed = []
        for box_id in list(self._boxes):
            if box_id not in keep and await self.destroy(box_id):
                removed.append(box_id)
        return removed

    async def close(self) -> None:
        if self._closed:
            return
        for box in self._boxes.values():
            for handle in list(box.execs):
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(handle.abandon(), timeout=10)
        self._closed = True
        if self._own_root:
            await asyncio.to_thread(shutil.rmtree, self._root, True)


def _used_bytes(root: Path, replaced: Path) -> int:
    """Bytes of the files under ``root``, except ``replaced`` (a put overwrites it)."""
    total = 0
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            path = Path(dirpath) / name
            if path != replaced:
                with contextlib.suppress(OSError):
                    total += path.lstat().st_size
    return total


def _rss_bytes(pids: builtins.list[int]) -> int:
    """Resident memory of the box's running commands (what a container would account)."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = Path(f"/proc/{pid}/statm").read_text().split()
            total += int(fields[1]) * os.sysconf("SC_PAGE_SIZE")
    return total
