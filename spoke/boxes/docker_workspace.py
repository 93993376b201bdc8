"""Size-limited box workspaces: an ext4 filesystem in a sparse file, mounted through a loop device.

Why (issue 8 item 7: a box wrote 1 GiB to the host's disk): this Docker engine (20.10) stores
containers with overlay2 / fuse-overlayfs on ext4, where ``--storage-opt size=`` is refused
(it needs overlay2 on xfs mounted with ``pquota``, and would limit only the container's own
layer, not a volume); a tmpfs workspace would cost RAM, be charged to the box's memory limit
and vanish when the box stops. So each box's ``/workspace`` is a Docker local-driver volume
of type ext4 on a sparse file ``<dir>/<box id>.img`` of exactly the limit's size, formatted by
the spoke, its root owned by the box's user: a write past the limit fails inside the box with
ENOSPC, and the host's disk holds only what was written (``discard`` gives blocks back).

The kernel mounts filesystems from block devices, so the image goes through a loop device,
attached by the spoke only while it creates or starts the box (:meth:`LoopImages.attached`),
with the kernel's *autoclear* flag: the device frees itself when the filesystem is unmounted,
i.e. when the container stops or is removed, whoever does it (``hub down --rm-boxes``
falling back to Docker, a test fixture, a reboot) — nothing to leak. The volume's ``device``
is a symlink ``<dir>/<box id>.dev`` that points at that loop device only during the spoke's
own create or start and dangles otherwise, so a ``docker start`` by hand fails instead of
mounting whatever filesystem a reused device number now holds.

It needs root, ``losetup``, ``mkfs.ext4`` and ``debugfs`` on the spoke's host and a local
Docker engine. Where any is missing :meth:`LoopImages.status` says why: the spoke warns at
start and boxes get an unlimited named volume (``spoke/service.py``; ``docs/security.md``).

Pinned by tests/boxes/test_docker_workspace.py (ENOSPC, host space, cleanup, restart) and
tests/test_box_hardening.py (``hub box create --workspace``, ``spoke join --max-workspace``).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import re
import secrets
import shutil
import struct
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import docker.errors

from protocol.verbs import BOX_ID_RE
from spoke.boxes import docker_util as du
from spoke.boxes import loop_device
from spoke.boxes.base import DEFAULT_WORKSPACE_BYTES, BoxError, BoxSpec
from spoke.boxes.workspace_stock import WorkspaceStock

Run = Callable[..., Awaitable[Any]]  # the manager's _run(what, fn, *args, **kwargs)
Call = Callable[..., Awaitable[Any]]  # the manager's _call(fn, *args, **kwargs)

TOOL_TIMEOUT_S = 60.0
PROBE_BYTES = 16 << 20
STOCK_COUNT = 2  # ready images of the default size (spoke/boxes/workspace_stock.py)
MOUNT_OPTIONS = "nosuid,nodev,discard"
DETACHED = "/nonexistent-spokehub-workspace-detached"  # where a resting symlink points
_DEVICE_RE = re.compile(r"^/dev/loop[0-9]+$")
# linux/loop.h: the ioctls, and struct loop_info64 (232 bytes; lo_flags after 5 u64 + 3 u32)
LOOP_SET_STATUS64, LOOP_GET_STATUS64 = 0x4C04, 0x4C05
LOOP_INFO64_SIZE, LO_FLAGS_OFFSET, LO_FLAGS_AUTOCLEAR = 232, 52, 4


class LoopImages:
    """The sparse images (and loop devices, while attached) of one spoke's workspaces."""

    def __init__(self, directory: Path, *, engine_local: bool = True) -> None:
        self.directory = directory.resolve()  # loop devices report resolved paths
        self.engine_local = engine_local
        self._status: str | None | bool = False  # False: not probed yet
        self._lock = asyncio.Lock()
        self._configure_off = False  # LOOP_CONFIGURE unsupported here: losetup
        # Formatted ahead of need, so a create of the default size skips mkfs and debugfs.
        self.stock = WorkspaceStock(self.directory, DEFAULT_WORKSPACE_BYTES, STOCK_COUNT,
                                    _format)

    def image(self, box_id: str) -> Path:
        if not BOX_ID_RE.fullmatch(box_id):
            raise ValueError(f"bad box id {box_id!r}")
        return self.directory / f"{box_id}.img"

    def link(self, box_id: str) -> Path:  # the volume's device: to the loop while attached
        return self.image(box_id).with_suffix(".dev")

    async def status(self) -> str | None:
        """None when size-limited workspaces work here, else the reason they do not (probed
        once: a small image is made, formatted, attached with autoclear, and let go)."""
        async with self._lock:
            if self._status is False:
                self._status = await self._probe()
            return self._status if isinstance(self._status, str) else None

    async def _probe(self) -> str | None:
        if not self.engine_local:
            return ("the Docker engine is not on this machine (DOCKER_HOST), so it cannot "
                    "mount this machine's loop devices")
        reason = await asyncio.to_thread(_host_reason)
        if reason is not None:
            return reason
        # Not in a directory of its own making: a join the hub refuses must leave the data
        # dir as it found it (tests/test_lifecycle.py).
        where = self.directory if self.directory.is_dir() else Path(tempfile.gettempdir())
        probe = where / f".spokehub-probe-{os.getpid()}-{secrets.token_hex(4)}.img"
        try:
            await asyncio.to_thread(_sparse, probe, PROBE_BYTES)
            await _tool("mkfs.ext4", "-q", "-F", str(probe))
            device = await _tool_device(probe)
            await asyncio.to_thread(_hold_autoclear, device, True)  # frees it on close
        except (OSError, BoxError) as exc:
            return f"loop devices do not work here ({exc})"
        finally:
            with contextlib.suppress(OSError):
                probe.unlink()
        return None

    async def make(self, box_id: str, size: int, uid: int, gid: int) -> dict[str, str]:
        """Make and format ``box_id``'s image, replacing a leftover one; return the Docker
        local-driver options of its volume (the caller holds :meth:`box_lock`)."""
        await self.release(box_id, drop_lock=False)
        image = self.image(box_id)
        await asyncio.to_thread(self.directory.mkdir, parents=True, exist_ok=True, mode=0o700)
        try:
            # A stock image (made ahead, spoke/boxes/workspace_stock.py) if one of this size
            # is ready; the owner is set after Docker's copy-up either way (own_root).
            if not await self.stock.take(image, size):
                await _format(image, size, uid, gid)
            await asyncio.to_thread(_point, self.link(box_id), DETACHED)
        except BaseException:
            await self.release(box_id, drop_lock=False)
            raise
        return {"type": "ext4", "device": str(self.link(box_id)), "o": MOUNT_OPTIONS}

    @contextlib.asynccontextmanager
    async def attached(self, box_id: str) -> AsyncIterator[str]:
        """While the caller creates or starts the box: ``box_id``'s image on a loop device
        (the one already there, if the box's filesystem is mounted), marked autoclear and
        held open, and its symlink pointing at it. Afterwards the mount (if any) holds the
        device, and the symlink dangles again."""
        image, link = self.image(box_id), self.link(box_id)
        if not await asyncio.to_thread(image.exists):
            raise BoxError(f"box {box_id}: its workspace image {image} is gone", "unavailable")
        async with self._lock:  # finding a free device is racy between concurrent calls
            device, fd = await self._attach(image)
        try:
            await asyncio.to_thread(_point, link, device)
            yield device
        finally:
            with contextlib.suppress(OSError):
                await asyncio.to_thread(_point, link, DETACHED)
            os.close(fd)

    async def _attach(self, image: Path) -> tuple[str, int]:
        """``image``'s loop device (the one it is on already, else a new one), autoclear,
        and an fd holding it: one ``LOOP_CONFIGURE`` (spoke/boxes/loop_device.py) where the
        kernel has it, else ``losetup`` then the flag."""
        if not self._configure_off and not await asyncio.to_thread(_devices_of, image):
            try:
                return await asyncio.to_thread(loop_device.attach_autoclear, image)
            except loop_device.Unsupported:
                self._configure_off = True
        device = await _tool_device(image)
        return device, await asyncio.to_thread(_hold_autoclear, device, False)

    async def own_root(self, device: str, uid: int, gid: int) -> None:
        """Make ``uid:gid`` own the filesystem's root directory on ``device`` (attached, not
        mounted): after Docker's copy-up of the image's ``/workspace`` (content and owner)
        into the new volume at container create, so the box's user can write there."""
        script = f"set_inode_field / uid {uid}\nset_inode_field / gid {gid}\n"
        await _tool("debugfs", "-w", "-f", "-", device, stdin=script.encode())  # one run

    async def release(self, box_id: str, *, drop_lock: bool = True) -> None:
        """Delete ``box_id``'s image and symlink, detaching any loop device still on it
        (idempotent); and its lock file, unless the caller holds that lock (a racing creator
        would otherwise lock a new file, and both would make the image)."""
        image = self.image(box_id)
        for device in await asyncio.to_thread(_devices_of, image):
            with contextlib.suppress(BoxError):
                await _tool("losetup", "-d", device)
        doomed = [image, self.link(box_id)] + ([image.with_suffix(".lock")] if drop_lock else [])
        for path in doomed:
            with contextlib.suppress(FileNotFoundError):
                await asyncio.to_thread(path.unlink)

    @contextlib.asynccontextmanager
    async def box_lock(self, box_id: str) -> AsyncIterator[None]:
        """An exclusive lock on ``box_id``'s workspace, across processes (``flock``): one
        creator at a time makes the image and attaches it. Not reentrant."""
        await asyncio.to_thread(self.directory.mkdir, parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.image(box_id).with_suffix(".lock"), os.O_CREAT | os.O_RDWR, 0o600)
        try:
            await asyncio.to_thread(fcntl.flock, fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def is_locked(self, box_id: str) -> bool:
        """Whether a create holds ``box_id``'s lock right now (the reap leaves it alone)."""
        try:
            fd = os.open(self.image(box_id).with_suffix(".lock"), os.O_RDWR)
        except OSError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return False
        except BlockingIOError:
            return True
        finally:
            os.close(fd)

    def box_ids(self) -> list[str]:
        """Boxes with files here (image, lock or symlink): the reap releases those it no
        longer keeps."""
        try:
            stems = {p.name.rpartition(".")[0] for p in self.directory.iterdir()
                     if p.suffix in (".img", ".lock", ".dev")}
        except OSError:
            return []
        return sorted(stem for stem in stems if BOX_ID_RE.fullmatch(stem))

    async def forget(self, box_id: str) -> None:  # a create failed before making an image
        if not await asyncio.to_thread(self.image(box_id).exists):
            with contextlib.suppress(FileNotFoundError):
                await asyncio.to_thread(self.image(box_id).with_suffix(".lock").unlink)


class WorkspaceVolumes:
    """The Docker side of workspaces: one volume per box, ``<prefix><box id>-ws``, labelled
    as the spoke's, size-limited through :class:`LoopImages` where the host allows."""

    def __init__(self, run: Run, call: Call, api: Callable[[], Awaitable[Any]],
                 spoke_name: str, volume_name: Callable[[str], str], images: LoopImages) -> None:
        self._run, self._call, self._api = run, call, api
        self.spoke_name, self.volume_name, self.images = spoke_name, volume_name, images

    async def _inspect(self, box_id: str) -> dict[str, Any] | None:
        api = await self._api()
        try:
            info: dict[str, Any] = await self._call(api.inspect_volume, self.volume_name(box_id))
            return info
        except docker.errors.NotFound:
            return None
        except Exception as exc:
            raise du.map_docker_error(exc, f"inspecting volume of box {box_id}") from exc

    async def make(self, box_id: str, spec: BoxSpec, uid: int, gid: int
                   ) -> tuple[str, dict[str, Any]]:
        """The box's workspace volume, size-limited where the host can (see the module
        docstring); an existing one of ours is reused. The caller holds the box's lock.
        Returns its name and what :meth:`attached` needs of an inspect (none is made)."""
        api = await self._api()
        volume = self.volume_name(box_id)
        labels = {du.LABEL_MANAGED: "1", du.LABEL_SPOKE: self.spoke_name, du.LABEL_BOX: box_id}
        reason = await self.images.status() if spec.workspace_bytes is not None else None
        if spec.require_workspace_limit and reason is not None:
            raise BoxError(f"this spoke cannot limit the size of a workspace: {reason}",
                           "unavailable")
        existing = await self._inspect(box_id)
        if existing is not None:  # a failed attempt's, or made by another spoke process
            if not du.is_own(existing.get("Labels"), self.spoke_name):
                raise BoxError(f"a volume named {volume} exists but is not managed by "
                               f"spoke {self.spoke_name}", "busy")
            return volume, existing
        if spec.workspace_bytes is None or reason is not None:
            await self._run(f"creating workspace volume for box {box_id}",
                            api.create_volume, name=volume, labels=labels)
            return volume, {"Labels": labels, "Options": {}}
        opts = await self.images.make(box_id, spec.workspace_bytes, uid, gid)
        labels[du.LABEL_WORKSPACE_BYTES] = str(spec.workspace_bytes)
        try:
            await self._run(f"creating workspace volume for box {box_id}", api.create_volume,
                            name=volume, driver="local", driver_opts=opts, labels=labels)
        except BaseException:
            await self.images.release(box_id, drop_lock=False)
            raise
        return volume, {"Labels": labels, "Options": opts}

    @contextlib.asynccontextmanager
    async def attached(self, box_id: str, info: dict[str, Any] | None = None
                       ) -> AsyncIterator[str | None]:
        """Around a create or start of the box: its size-limited workspace's loop device
        (None for a plain volume: nothing to do). The caller holds the box's lock; ``info``
        is the volume's inspect if the caller has it (:meth:`make`'s)."""
        info = info if info is not None else await self._inspect(box_id)
        device = ((info or {}).get("Options") or {}).get("device")
        if info is None or not du.is_own(info.get("Labels"), self.spoke_name) or \
                device != str(self.images.link(box_id)):
            yield None
            return
        async with self.images.attached(box_id) as loop_device:
            yield loop_device

    async def remove(self, box_id: str) -> None:
        """Remove the box's workspace volume, then free its loop device and image (only
        once the volume is gone: a volume still in use keeps its device)."""
        api = await self._api()
        info = await self._inspect(box_id)
        if info is not None:
            if not du.is_own(info.get("Labels"), self.spoke_name):
                return
            with contextlib.suppress(docker.errors.NotFound):
                await self._run(f"removing volume of box {box_id}", api.remove_volume,
                                self.volume_name(box_id), force=True)
        await self.images.release(box_id)

    async def reap(self, keep: set[str]) -> None:
        """Volumes whose container vanished (a crash between the two removals), and images
        whose volume was removed behind our back (``hub down --rm-boxes`` with Docker)."""
        api = await self._api()
        vols = await self._run("listing volumes", api.volumes,
                               filters=du.own_filters(self.spoke_name))
        with_volume: set[str] = set()
        for vol in (vols or {}).get("Volumes") or []:
            box_id = (vol.get("Labels") or {}).get(du.LABEL_BOX, "")
            if box_id and du.is_own(vol.get("Labels"), self.spoke_name):
                with_volume.add(box_id)
                # Not one a create is making (its container does not exist yet): removed,
                # Docker would give the box an unlabelled, unlimited volume of that name.
                if box_id not in keep and not self.images.is_locked(box_id):
                    with contextlib.suppress(BoxError):
                        await self.remove(box_id)
        for box_id in self.images.box_ids():
            if box_id not in keep and box_id not in with_volume \
                    and not self.images.is_locked(box_id):  # not a create in progress
                await self.images.release(box_id)
        await self.images.stock.reap()  # partial stock images of a crashed process


def _sparse(path: Path, size: int) -> None:
    """A sparse file of ``size`` bytes (no blocks yet), readable by root only."""
    with path.open("wb") as fh:
        fh.truncate(size)
    path.chmod(0o600)


def _point(link: Path, target: str) -> None:
    """Make symlink ``link`` point at ``target``, atomically."""
    temp = link.with_name(f".{link.name}.{os.getpid()}")
    with contextlib.suppress(FileNotFoundError):
        temp.unlink()
    os.symlink(target, temp)
    os.replace(temp, link)


def _hold_autoclear(device: str, close: bool) -> int:
    """Open loop ``device`` and set its autoclear flag, so it detaches by itself once nobody
    holds it (this fd, a mount). Returns the fd, or closes it at once if ``close``."""
    fd = os.open(device, os.O_RDWR | os.O_CLOEXEC)
    try:
        info = bytearray(LOOP_INFO64_SIZE)
        fcntl.ioctl(fd, LOOP_GET_STATUS64, info)
        flags = struct.unpack_from("I", info, LO_FLAGS_OFFSET)[0]
        if not flags & LO_FLAGS_AUTOCLEAR:
            struct.pack_into("I", info, LO_FLAGS_OFFSET, flags | LO_FLAGS_AUTOCLEAR)
            fcntl.ioctl(fd, LOOP_SET_STATUS64, info)
    except BaseException:
        os.close(fd)
        raise
    if close:
        os.close(fd)
    return fd


async def _tool_device(image: Path) -> str:
    """The loop device ``image`` is on: the existing one (``--nooverlap``), else a new one."""
    found = (await _tool("losetup", "--find", "--show", "--nooverlap", str(image))).strip()
    if not _DEVICE_RE.fullmatch(found):
        raise BoxError(f"losetup gave an unexpected device {found!r:.80}", "internal")
    return found


def _host_reason() -> str | None:
    """Why this host cannot make loop-device workspaces, from what can be seen at once."""
    if os.geteuid() != 0:
        return "the spoke does not run as root (loop devices need root)"
    missing = [t for t in ("losetup", "mkfs.ext4", "debugfs") if shutil.which(t) is None]
    if missing:
        return f"{' and '.join(missing)} not found (install util-linux and e2fsprogs)"
    with contextlib.suppress(OSError):
        if "ext4" not in Path("/proc/filesystems").read_text():
            return "the kernel has no ext4 support"
    return None


def _backing_file(device: str) -> str | None:
    """The file loop ``device`` is attached to (None: not attached)."""
    name = device.rsplit("/", 1)[-1]
    try:
        text = Path(f"/sys/block/{name}/loop/backing_file").read_text().strip()
    except OSError:
        return None
    return text.removesuffix(" (deleted)") or None


def _devices_of(image: Path) -> list[str]:
    found = []
    for entry in Path("/sys/block").glob("loop*"):
        backing = _backing_file(f"/dev/{entry.name}")
        if backing == str(image):
            found.append(f"/dev/{entry.name}")
    return found


async def _format(image: Path, size: int, uid: int = 0, gid: int = 0) -> None:
    """A sparse ``image`` of ``size`` bytes holding an empty ext4 filesystem whose root
    ``uid:gid`` own (for a box, :meth:`LoopImages.own_root` sets the owner after copy-up)."""
    await asyncio.to_thread(_sparse, image, size)
    await _tool("mkfs.ext4", "-q", "-F", "-m", "0", "-L", "spokehub-ws", "-E",
                f"root_owner={uid}:{gid},lazy_itable_init=1,lazy_journal_init=1,nodiscard",
                str(image))
    # Empty (no lost+found), so Docker copies the image's /workspace into it at create, as
    # it does for a plain volume.
    await _tool("debugfs", "-w", "-R", "rmdir lost+found", str(image))


async def _tool(*args: str, stdin: bytes | None = None) -> str:
    """Run a host tool (losetup, mkfs.ext4, debugfs); its stdout, or BoxError with stderr."""
    try:
        proc = await asyncio.create_subprocess_exec(
            *args, stdin=asyncio.subprocess.DEVNULL if stdin is None else asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    except OSError as exc:
        raise BoxError(f"{args[0]}: {exc}", "unavailable") from exc
    try:
        out, err = await asyncio.wait_for(proc.communicate(stdin), TOOL_TIMEOUT_S)
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        raise
    if proc.returncode != 0:
        text = " ".join(err.decode(errors="replace").split())[:300]
        raise BoxError(f"{' '.join(args[:2])} failed: {text or proc.returncode}", "unavailable")
    return out.decode(errors="replace")
