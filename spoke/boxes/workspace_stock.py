"""A small stock of formatted, empty workspace images of the default size, made ahead of need.

Why (issue 14, follow-up: a cold box create through the hub took 1.4x a direct Docker create
+ start): making a size-limited workspace (:mod:`spoke.boxes.docker_workspace`) runs
``mkfs.ext4`` and ``debugfs`` on the create's critical path. A stock image is exactly that
work done earlier, in the background, so a create of the default size only renames a file.

The guarantees stay those of a freshly made image:

- *exact size*: an image is taken only for a create of the stock's size, and checked to be
  that size after it is taken (anything else is deleted, and the create formats its own);
- *root owned by the box user*: the create sets the owner after Docker's copy-up
  (:meth:`~spoke.boxes.docker_workspace.LoopImages.own_root`), for stock and fresh alike;
- *never shared*: taking is an atomic ``rename`` of ``stock-<token>.img`` onto the box's
  image path; of two takers (tasks or spoke processes) one wins, the other tries the next;
- *nothing leaked*: images are formatted under ``.stock-<pid>-<token>.tmp`` and renamed into
  the stock only when complete; :meth:`WorkspaceStock.drop` (the manager's close) deletes
  the stock and this process's partial images, and :meth:`WorkspaceStock.reap` (the
  manager's reap) deletes partial images of processes that are gone. A ready image left by a
  crash is simply used by the next process.

Pinned by tests/boxes/test_workspace_stock.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
from collections.abc import Awaitable, Callable
from pathlib import Path

log = logging.getLogger(__name__)

Format = Callable[[Path, int], Awaitable[None]]  # make a formatted, empty image at path
STOCK_PREFIX, PARTIAL_PREFIX = "stock-", ".stock-"
RETRY_S = 30.0  # after a failed refill (a full disk, a missing tool): try again later


class WorkspaceStock:
    """Up to ``count`` ready images of ``size`` bytes in ``directory`` (see the module)."""

    def __init__(self, directory: Path, size: int, count: int, format_image: Format) -> None:
        self.directory, self.size, self.count = directory, size, count
        self._format = format_image
        self._task: asyncio.Task[None] | None = None
        self._dropped = False

    def ready(self) -> list[Path]:
        """The stock's images now (whoever made them)."""
        try:
            return sorted(p for p in self.directory.iterdir()
                          if p.name.startswith(STOCK_PREFIX) and p.suffix == ".img")
        except OSError:
            return []

    async def take(self, target: Path, size: int) -> bool:
        """Move a ready image of ``size`` bytes to ``target`` (True), or do nothing (False:
        none of that size is ready; the caller formats its own). Refills in the background."""
        if self.count <= 0 or size != self.size:
            return False
        try:
            for image in await asyncio.to_thread(self.ready):
                if await asyncio.to_thread(_take_one, image, target, size):
                    return True
            return False
        finally:
            self.refill()

    async def settled(self) -> None:
        """Until a refill in progress is done (tests and benchmarks: a full stock)."""
        if self._task is not None:
            await asyncio.shield(self._task)

    def refill(self) -> None:
        """Start topping the stock up, in the background, unless that is already running."""
        if self.count > 0 and not self._dropped and (self._task is None or self._task.done()):
            self._task = asyncio.get_running_loop().create_task(self._refill())

    async def _refill(self) -> None:
        while not self._dropped and len(await asyncio.to_thread(self.ready)) < self.count:
            partial = self.directory / f"{PARTIAL_PREFIX}{os.getpid()}-{secrets.token_hex(6)}.tmp"
            try:
                await self._format(partial, self.size)
                await asyncio.to_thread(os.rename, partial,
                                        self.directory / f"{STOCK_PREFIX}{secrets.token_hex(8)}.img")
            except asyncio.CancelledError:
                _unlink(partial)
                raise
            except Exception as exc:  # the create path formats its own meanwhile
                _unlink(partial)
                log.warning("could not stock a workspace image (retrying in %.0f s): %s",
                            RETRY_S, exc)
                await asyncio.sleep(RETRY_S)

    async def drop(self) -> None:
        """Stop refilling; delete the stock and this process's partial images (the spoke is
        stopping: its data dir keeps no workspace it does not need)."""
        self._dropped = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        mine = f"{PARTIAL_PREFIX}{os.getpid()}-"
        for path in await asyncio.to_thread(self._files):
            if path.name.startswith(STOCK_PREFIX) or path.name.startswith(mine):
                _unlink(path)

    async def reap(self) -> None:
        """Delete partial images whose process is gone (a crash mid-format)."""
        for path in await asyncio.to_thread(self._files):
            if path.name.startswith(PARTIAL_PREFIX):
                pid = path.name[len(PARTIAL_PREFIX):].partition("-")[0]
                if not pid.isdigit() or not _alive(int(pid)):
                    _unlink(path)

    def _files(self) -> list[Path]:
        try:
            return [p for p in self.directory.iterdir()
                    if p.name.startswith((STOCK_PREFIX, PARTIAL_PREFIX))]
        except OSError:
            return []


def _take_one(image: Path, target: Path, size: int) -> bool:
    """Rename ``image`` to ``target`` if nobody took it first; keep it only if it is
    ``size`` bytes (a stock of another size, from a process with another default)."""
    try:
        os.rename(image, target)
    except FileNotFoundError:
        return False  # another taker won
    if target.stat().st_size != size:
        _unlink(target)
        return False
    return True


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _unlink(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
