"""Who runs on a data dir: an exclusive ``flock`` held for a process's whole lifetime.

Two processes on one data dir hurt each other: a second hub rewrites ``admin.json`` and fights
for the port; a second spoke with the same identity replaces the first one's connection at the
hub, and the two then knock each other off in turn. So ``hub serve`` holds ``hub.lock`` in its
data dir and ``spoke run|join`` holds ``spoke.lock`` in theirs, with a small JSON record (pid,
URL or spoke name) inside. The kernel drops a lock however its process ends, so a stale file
never blocks a restart, and a record is only believed while its lock is held. ``hub up`` and
``hub down`` read these records to find what runs where.

Standard library only: ``hub down`` and ``hub up`` read them before loading anything heavy.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HUB_LOCK = "hub.lock"
SPOKE_LOCK = "spoke.lock"


@dataclass
class Holder:
    """The live process holding a data dir's lock, and what it recorded about itself."""

    pid: int
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return str(self.info.get("url") or "")

    @property
    def name(self) -> str:
        return str(self.info.get("name") or "")


class Busy(Exception):
    """Another live process holds the lock; ``holder`` says which."""

    def __init__(self, holder: Holder) -> None:
        super().__init__(f"held by pid {holder.pid}")
        self.holder = holder


def _read_record(fd: int) -> dict[str, Any]:
    """The holder writes its record just after taking the lock: wait a moment for it."""
    deadline = time.monotonic() + 1.0
    while True:
        raw = os.pread(fd, 65536, 0)
        try:
            doc = json.loads(raw.decode()) if raw else None
        except ValueError:
            doc = None
        if isinstance(doc, dict) or time.monotonic() > deadline:
            return doc if isinstance(doc, dict) else {}
        time.sleep(0.02)


def holder(data_dir: Path, name: str) -> Holder | None:
    """The live process holding ``data_dir/name``, or None if nobody does (never creates it)."""
    try:
        fd = os.open(data_dir / name, os.O_RDONLY | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError):
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            info = _read_record(fd)
            pid = info.get("pid")
            return Holder(pid if isinstance(pid, int) else 0, info)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


class RunLock:
    """The lock a serving process holds on its data dir (see the module docstring)."""

    def __init__(self, data_dir: Path, name: str) -> None:
        self.path = data_dir / name
        self._fd: int | None = None
        self._record: dict[str, Any] = {}

    def acquire(self, **info: Any) -> None:
        """Take the lock (creating the data dir, mode 0700, if needed) and record ``info``;
        raises :class:`Busy` naming the live holder."""
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        # A reader probing with a shared lock holds it for microseconds: try a few times.
        for _attempt in range(20):
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                live = holder(self.path.parent, self.path.name)
                if live is not None:
                    os.close(fd)
                    raise Busy(live) from None
                time.sleep(0.01)
        else:
            os.close(fd)
            raise Busy(Holder(0))
        self._fd = fd
        self._record = {"pid": os.getpid(), "started_at": time.time()}
        self.update(**info)

    def update(self, **info: Any) -> None:
        """Rewrite the record (e.g. once the URL is known)."""
        assert self._fd is not None, "lock not held"
        self._record.update(info)
        doc = json.dumps(self._record).encode()
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, doc, 0)

    def release(self, remove: bool = False) -> None:
        """Drop the lock; ``remove`` deletes the file too (a join undoing itself)."""
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            if remove:
                self.path.unlink()
            else:
                os.ftruncate(self._fd, 0)
        os.close(self._fd)
        self._fd = None
