"""Spoke-side policy: limits the hub cannot override, whatever it sends.

Pinned by tests/test_spoke_options.py (options → policy), tests/test_box_hardening.py (root
refused unless ``--allow-root``, the workspace ceiling, the transfer cap, end to end) and the
hub tests over the in-memory pipe."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from protocol.errors import ErrorCode, RemoteError
from spoke.boxes.base import DEFAULT_WORKSPACE_BYTES, is_root_user

DEFAULT_MEMORY = 512 * 1024 * 1024
DEFAULT_MAX_WORKSPACE = 10 * 1024**3


@dataclass(frozen=True)
class Policy:
    allowed_images: tuple[str, ...]
    max_boxes: int = 20
    max_memory_bytes: int = 4 * 1024 * 1024 * 1024
    max_cpus: float = 2.0
    max_pids: int = 1024
    allow_network: bool = True
    max_file_bytes: int = 256 * 1024 * 1024
    default_memory_bytes: int = DEFAULT_MEMORY
    default_cpus: float = 1.0
    default_pids: int = 256
    labels: tuple[str, ...] = field(default_factory=tuple)
    allow_root: bool = False  # boxes may run as root only if asked for and this is set
    max_workspace_bytes: int = DEFAULT_MAX_WORKSPACE  # ceiling on a box's /workspace size
    default_workspace_bytes: int = DEFAULT_WORKSPACE_BYTES  # when a create names none
    max_transfers: int = 8  # concurrent file transfers (busy beyond)

    def check_create(self, req: Any, live_boxes: int) -> dict[str, Any]:
        """Validate a create (a ``BoxCreate`` or anything with its fields) against the policy and
        return the effective limits."""
        if req.image not in self.allowed_images:
            raise RemoteError(
                ErrorCode.DENIED,
                f"image {req.image!r} is not allowed on this spoke "
                f"(allowed: {', '.join(self.allowed_images) or 'none'})",
            )
        if live_boxes >= self.max_boxes:
            raise RemoteError(
                ErrorCode.DENIED, f"this spoke already runs its maximum of {self.max_boxes} boxes"
            )
        if req.network and not self.allow_network:
            raise RemoteError(ErrorCode.DENIED, "network access is not allowed on this spoke")
        memory = req.memory_bytes or self.default_memory_bytes
        cpus = req.cpus or self.default_cpus
        pids = req.pids or self.default_pids
        if memory > self.max_memory_bytes:
            raise RemoteError(
                ErrorCode.DENIED,
                f"memory {memory} bytes exceeds this spoke's ceiling of {self.max_memory_bytes}",
            )
        if cpus > self.max_cpus:
            raise RemoteError(
                ErrorCode.DENIED, f"cpus {cpus} exceeds this spoke's ceiling of {self.max_cpus}"
            )
        if pids > self.max_pids:
            raise RemoteError(
                ErrorCode.DENIED, f"pids {pids} exceeds this spoke's ceiling of {self.max_pids}"
            )
        user = getattr(req, "user", None)
        if user is not None and is_root_user(user) and not self.allow_root:
            raise RemoteError(
                ErrorCode.DENIED,
                f"box user {user!r} is root, which this spoke does not allow "
                "(its operator can: spoke join --allow-root)",
            )
        asked = getattr(req, "workspace_bytes", None)
        workspace = asked or min(self.default_workspace_bytes, self.max_workspace_bytes)
        if workspace > self.max_workspace_bytes:
            raise RemoteError(
                ErrorCode.DENIED,
                f"workspace of {workspace} bytes exceeds this spoke's ceiling of "
                f"{self.max_workspace_bytes} (spoke join --max-workspace)",
            )
        return {"memory_bytes": memory, "cpus": cpus, "pids": pids, "workspace_bytes": workspace}

    def describe(self) -> dict[str, Any]:
        return {
            "allowed_images": list(self.allowed_images),
            "max_boxes": self.max_boxes,
            "max_memory_bytes": self.max_memory_bytes,
            "max_cpus": self.max_cpus,
            "max_pids": self.max_pids,
            "allow_network": self.allow_network,
            "allow_root": self.allow_root,
            "max_workspace_bytes": self.max_workspace_bytes,
            "default_workspace_bytes": min(self.default_workspace_bytes,
                                           self.max_workspace_bytes),
            "max_transfers": self.max_transfers,
        }
