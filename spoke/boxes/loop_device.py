"""Attaching a workspace image to a free loop device with the autoclear flag, in one ioctl.

Why (issue 14, follow-up: where a cold box create's time went): ``losetup --find`` (a
process) followed by ``LOOP_SET_STATUS64`` to set autoclear (the kernel freezes the device's
queue for it) cost ~20 ms of each create; ``LOOP_CONFIGURE`` (Linux 5.8) binds the file and
sets the flag at once, in well under a millisecond. Blocking: call it in a thread.
:mod:`spoke.boxes.docker_workspace` falls back to ``losetup`` where this is unavailable.
Pinned by tests/boxes/test_workspace_stock.py and tests/boxes/test_docker_workspace.py.
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct
from pathlib import Path

# linux/loop.h: struct loop_config is fd (u32), block_size (u32), struct loop_info64 (232
# bytes; lo_flags at 52) and 8 reserved u64.
LOOP_CTL_GET_FREE, LOOP_CONFIGURE = 0x4C82, 0x4C0A
LOOP_CONFIG_SIZE, INFO_OFFSET, LO_FLAGS_OFFSET, LO_FLAGS_AUTOCLEAR = 304, 8, 52, 4
ATTEMPTS = 8  # another process may bind the free device we were told of first


class Unsupported(Exception):
    """This kernel (or /dev) cannot do it: use losetup."""


def attach_autoclear(image: Path) -> tuple[str, int]:
    """Bind ``image`` to a free loop device marked autoclear; return the device and an open
    fd on it (the caller closes it: with no mount holding it, the device then frees itself)."""
    backing = os.open(image, os.O_RDWR | os.O_CLOEXEC)
    try:
        config = bytearray(LOOP_CONFIG_SIZE)
        struct.pack_into("I", config, 0, backing)
        struct.pack_into("I", config, INFO_OFFSET + LO_FLAGS_OFFSET, LO_FLAGS_AUTOCLEAR)
        for _ in range(ATTEMPTS):
            device = f"/dev/loop{_free_number()}"
            try:
                fd = os.open(device, os.O_RDWR | os.O_CLOEXEC)
            except FileNotFoundError as exc:  # no devtmpfs node
                raise Unsupported(str(exc)) from exc
            try:
                fcntl.ioctl(fd, LOOP_CONFIGURE, bytes(config))
                return device, fd
            except OSError as exc:
                os.close(fd)
                if exc.errno in (errno.EINVAL, errno.ENOTTY):
                    raise Unsupported(str(exc)) from exc
                if exc.errno != errno.EBUSY:
                    raise
        raise OSError(errno.EBUSY, "no free loop device stayed free")
    finally:
        os.close(backing)


def _free_number() -> int:
    try:
        control = os.open("/dev/loop-control", os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError as exc:
        raise Unsupported(str(exc)) from exc
    try:
        return int(fcntl.ioctl(control, LOOP_CTL_GET_FREE))
    finally:
        os.close(control)
