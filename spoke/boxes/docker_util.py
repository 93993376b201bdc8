"""Pure helpers for the Docker manager: names, labels, error mapping, tar and stats.

Kept free of I/O so they are cheap to test and so ``docker_boxes`` stays readable.
"""

from __future__ import annotations

import calendar
import hashlib
import re
import tarfile
import time
from typing import Any

import docker.errors
import requests.exceptions

from protocol.verbs import BOX_ID_RE
from spoke.boxes.base import BoxError, BoxInfo, BoxInvalid, BoxNotFound

LABEL_MANAGED = "spokehub.managed"
LABEL_SPOKE = "spokehub.spoke"
LABEL_BOX = "spokehub.box"
LABEL_CREATED = "spokehub.created_at"
LABEL_WORKSPACE_BYTES = "spokehub.workspace_bytes"
# A warm-pool box (spoke/boxes/warm_pool.py): made before the hub named it, so its LABEL_BOX
# (immutable) is its pool id, which also names its workspace; once claimed, its container is
# renamed to the hub's box and its box id is read from the name (box_id_of).
LABEL_POOL = "spokehub.pool"

# The box's main process: keeps the container alive with no entrypoint help, and exits
# promptly on SIGTERM (docker-init forwards it) so `docker stop` is not a 10 s wait.
KEEPALIVE_CMD = ["/bin/sh", "-c", "trap 'exit 0' TERM; while :; do sleep 3600 & wait $!; done"]
TMPFS = {
    "/tmp": "rw,nosuid,nodev,size=64m,mode=1777",
    "/run": "rw,nosuid,nodev,size=8m",
}
WORKSPACE = "/workspace"

_NAME_BAD = re.compile(r"[^a-zA-Z0-9_.-]+")
_GO_DIR_BIT = 1 << 31
_GO_SYMLINK_BIT = 1 << 27


def sanitize_spoke_name(spoke_name: str) -> str:
    """A Docker-safe rendering of the spoke name. If anything had to change, a short hash
    of the original is appended so two different spokes never share container names."""
    cleaned = _NAME_BAD.sub("-", spoke_name).strip("-._")[:40]
    if cleaned != spoke_name or not cleaned:
        digest = hashlib.sha256(spoke_name.encode()).hexdigest()[:8]
        cleaned = f"{cleaned}-{digest}" if cleaned else digest
    return cleaned


def own_filters(spoke_name: str, box_id: str | None = None) -> dict[str, list[str]]:
    labels = [f"{LABEL_MANAGED}=1", f"{LABEL_SPOKE}={spoke_name}"]
    if box_id is not None:
        labels.append(f"{LABEL_BOX}={box_id}")
    return {"label": labels}


def is_own(labels: dict[str, str] | None, spoke_name: str) -> bool:
    labels = labels or {}
    return labels.get(LABEL_MANAGED) == "1" and labels.get(LABEL_SPOKE) == spoke_name


def box_id_of(labels: dict[str, str] | None, name: str) -> str:
    """The box id of one of our containers: its label, except for a warm-pool box, whose
    current name says which box it is (``<prefix><box id>``, renamed when claimed). Pinned
    by tests/boxes/test_warm_pool.py."""
    labels = labels or {}
    if labels.get(LABEL_POOL):
        found = name.rsplit("-", 1)[-1] if name else ""
        return found if BOX_ID_RE.fullmatch(found) else ""  # renamed by hand: not a box
    return labels.get(LABEL_BOX, "")


def pool_ready(labels: dict[str, str] | None, name: str) -> bool:
    """A warm-pool box nobody claimed yet (still named after its pool id): not a box of
    the hub's, so ``list()`` does not report it."""
    labels = labels or {}
    return bool(labels.get(LABEL_POOL)) and box_id_of(labels, name) == labels.get(LABEL_BOX)


def workspace_key(labels: dict[str, str] | None) -> str:
    """Which id a container's workspace (volume, image) is named after: ``LABEL_BOX``, the
    pool id for a claimed warm-pool box."""
    return (labels or {}).get(LABEL_BOX, "")


def _networked(labels: dict[str, Any], host: dict[str, Any], settings: dict[str, Any]) -> bool:
    """Whether a box has a network: a warm-pool box is made on the box network and
    disconnected until a claim asks for it, so its endpoints tell, not its mode."""
    if labels.get(LABEL_POOL):
        return any(n != "none" for n in (settings.get("Networks") or {}))
    return host.get("NetworkMode", "none") != "none"


def _parse_docker_time(text: str) -> float:
    """Docker's RFC 3339 with nanoseconds -> unix seconds (0.0 if unparseable)."""
    m = re.match(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?Z$", text or "")
    if not m:
        return 0.0
    base = calendar.timegm(time.strptime(m.group(1), "%Y-%m-%dT%H:%M:%S"))
    return base + (float(m.group(2)) if m.group(2) else 0.0)


def info_from_inspect(data: dict[str, Any]) -> BoxInfo:
    labels = data.get("Config", {}).get("Labels") or {}
    created = labels.get(LABEL_CREATED)
    return BoxInfo(
        id=box_id_of(labels, data.get("Name", "")),
        image=data.get("Config", {}).get("Image", ""),
        state=data.get("State", {}).get("Status", "unknown"),
        created_at=float(created) if created else _parse_docker_time(data.get("Created", "")),
        network=_networked(labels, data.get("HostConfig") or {},
                           data.get("NetworkSettings") or {}),
        container_id=data.get("Id", ""),
    )


def info_from_summary(data: dict[str, Any]) -> BoxInfo:
    labels = data.get("Labels") or {}
    created = labels.get(LABEL_CREATED)
    return BoxInfo(
        id=box_id_of(labels, (data.get("Names") or [""])[0]),
        image=data.get("Image", ""),
        state=data.get("State", "unknown"),
        created_at=float(created) if created else float(data.get("Created", 0)),
        network=_networked(labels, data.get("HostConfig") or {},
                           data.get("NetworkSettings") or {}),
        container_id=data.get("Id", ""),
    )


def workdir(data: dict[str, Any]) -> str:
    """A container's working directory (from its inspect data): where relative box paths
    point. The image's WORKDIR unless the box set one; ``/`` when neither did."""
    return str(data.get("Config", {}).get("WorkingDir") or "/")


def one_line(text: object, limit: int = 300) -> str:
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def map_docker_error(exc: BaseException, what: str) -> BoxError:
    """Translate a docker SDK / transport exception into a BoxError with a one-line message.

    ``what`` names the operation ("exec in box bx_…"), so messages read as sentences."""
    if isinstance(exc, BoxError):
        return exc
    if isinstance(exc, docker.errors.ImageNotFound):
        return BoxInvalid(f"{what}: {one_line(exc.explanation or exc)}")
    if isinstance(exc, docker.errors.NotFound):
        return BoxNotFound(f"{what}: not found ({one_line(exc.explanation or exc)})")
    if isinstance(exc, docker.errors.APIError):
        status = exc.status_code or 500
        text = one_line(exc.explanation or exc)
        lowered = text.lower()
        if "read-only" in lowered:
            return BoxError(f"{what}: read-only file system (write under /workspace)", "denied")
        if "no space left" in lowered:
            return BoxError(f"{what}: no space left on device (the box's workspace is full: "
                            "its size is limited, see box create --workspace)", "denied")
        if "not a directory" in lowered or "cannot overwrite" in lowered:
            return BoxInvalid(f"{what}: {text}")
        if status == 409:
            return BoxError(f"{what}: conflict: {text}", "busy")
        if status in (400, 422):
            return BoxInvalid(f"{what}: {text}")
        if status in (401, 403):
            return BoxError(f"{what}: refused by Docker: {text}", "denied")
        if status in (502, 503, 504):
            return BoxError(f"{what}: Docker engine unavailable: {text}", "unavailable")
        return BoxError(f"{what}: Docker error {status}: {text}", "internal")
    if isinstance(exc, requests.exceptions.Timeout):
        return BoxError(f"{what}: the Docker engine did not answer in time", "timeout")
    if isinstance(exc, requests.exceptions.ConnectionError | ConnectionError | FileNotFoundError):
        return BoxError(f"{what}: the Docker engine is unreachable ({one_line(exc)})",
                        "unavailable")
    if isinstance(exc, docker.errors.DockerException):
        lowered = str(exc).lower()
        code = "unavailable" if "connection" in lowered or "version" in lowered else "internal"
        return BoxError(f"{what}: {one_line(exc)}", code)
    return BoxError(f"{what}: {type(exc).__name__}: {one_line(exc)}", "internal")


def tar_head(name: str, size: int, mode: int, uid: int, gid: int,
             dirs: list[str] | tuple[str, ...] = ()) -> bytes:
    """The start of a tar holding ``dirs`` (mode 0755; outermost first) and then one file of
    ``size`` bytes, all owned by ``uid:gid``, up to the file's data: an upload's archive is
    this, the data as it arrives, then :func:`tar_tail` — made on the fly, never held whole.
    Pinned by tests/boxes/test_conformance_files.py (parents, modes, owners, sizes)."""
    now = int(time.time())
    head = b""
    for directory in dirs:
        entry = tarfile.TarInfo(directory)
        entry.type, entry.mode = tarfile.DIRTYPE, 0o755
        entry.uid, entry.gid, entry.mtime = uid, gid, now
        head += entry.tobuf(format=tarfile.PAX_FORMAT)
    info = tarfile.TarInfo(name)
    info.size, info.mode = size, mode & 0o7777
    info.uid, info.gid, info.mtime = uid, gid, now
    return head + info.tobuf(format=tarfile.PAX_FORMAT)


def tar_tail(size: int) -> bytes:
    """What follows a file of ``size`` bytes in :func:`tar_head`'s archive: the padding to a
    512-byte block, then the two zero blocks that end an archive."""
    return b"\0" * (-size % tarfile.BLOCKSIZE) + b"\0" * (2 * tarfile.BLOCKSIZE)


def stat_kind(stat: dict[str, Any]) -> str:
    """"dir", "symlink" or "file" from the Go FileMode bits docker's archive stat returns."""
    mode = int(stat.get("mode", 0))
    if mode & _GO_DIR_BIT:
        return "dir"
    if mode & _GO_SYMLINK_BIT or stat.get("linkTarget"):
        return "symlink"
    return "file"


def resolve_ids(user: str, passwd: str, group: str) -> tuple[int, int] | None:
    """uid and gid of Docker's ``User`` (``name|uid[:group|gid]``) from the image's
    ``/etc/passwd`` and ``/etc/group`` text, as Docker resolves them: a numeric uid missing
    from passwd gets gid 0 unless a group is given. None if a name is unknown there."""
    name, grp = parse_user(user)
    if name.isdigit():
        uid = int(name)
        entry = _uid_entry(passwd, uid)
        gid = entry[1] if entry is not None else 0
    else:
        found_user = lookup_id(passwd, name)
        if found_user is None:
            return None
        uid, gid = found_user
    if grp:
        if grp.isdigit():
            gid = int(grp)
        else:
            found = lookup_id(group, grp)
            if found is None:
                return None
            gid = found[0]
    return uid, gid


def _uid_entry(passwd: str, uid: int) -> tuple[int, int] | None:
    for line in passwd.splitlines():
        fields = line.split(":")
        if len(fields) >= 4 and fields[2] == str(uid) and fields[3].isdigit():
            return uid, int(fields[3])
    return None


def parse_user(user: str) -> tuple[str, str]:
    """Split Docker's ``user[:group]`` (names or numbers; empty means root)."""
    name, _, group = (user or "0").partition(":")
    return name or "0", group


def lookup_id(table: str, key: str) -> tuple[int, int] | None:
    """Find ``key`` (a name) in passwd/group text; return (id, primary gid-or-id)."""
    for line in table.splitlines():
        fields = line.split(":")
        if len(fields) >= 3 and fields[0] == key and fields[2].isdigit():
            gid = int(fields[3]) if len(fields) > 3 and fields[3].isdigit() else int(fields[2])
            return int(fields[2]), gid
    return None


def stats_from_docker(raw: dict[str, Any]) -> dict[str, float | int]:
    """Map ``container.stats(stream=False)`` to the small dict the hub shows."""
    mem = raw.get("memory_stats") or {}
    detail = mem.get("stats") or {}
    usage = int(mem.get("usage") or 0)
    # Page cache is reclaimable; `docker stats` subtracts it too (v1: cache, v2: inactive_file).
    cache = int(detail.get("total_inactive_file") or detail.get("inactive_file")
                or detail.get("cache") or 0)
    cpu = raw.get("cpu_stats") or {}
    pre = raw.get("precpu_stats") or {}
    cpu_delta = int((cpu.get("cpu_usage") or {}).get("total_usage") or 0) - int(
        (pre.get("cpu_usage") or {}).get("total_usage") or 0)
    sys_delta = int(cpu.get("system_cpu_usage") or 0) - int(pre.get("system_cpu_usage") or 0)
    online = int(cpu.get("online_cpus") or len((cpu.get("cpu_usage") or {})
                                               .get("percpu_usage") or []) or 1)
    cpu_percent = cpu_delta / sys_delta * online * 100.0 if sys_delta > 0 and cpu_delta > 0 else 0.0
    return {
        "memory_bytes": max(0, usage - cache),
        "memory_limit_bytes": int(mem.get("limit") or 0),
        "cpu_percent": round(cpu_percent, 3),
        "pids": int((raw.get("pids_stats") or {}).get("current") or 0),
    }
