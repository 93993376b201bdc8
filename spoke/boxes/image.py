"""Building the default sandbox image on the spoke itself.

Where no registry is reachable (CI, air-gapped machines) nothing can be pulled, so the
spoke builds a small Debian image locally: ``debootstrap`` a minbase bookworm, add a
non-root ``sandbox`` user (uid/gid 1000) and a ``/workspace`` it owns, then ``docker import``
the tree. The rootfs tarball is cached so the second build is just an import, and a lock
file stops two processes (or pytest workers) from debootstrapping at the same time.

Everything here is synchronous and slow by design: callers run it in a thread.
``deploy/sandbox/build-image.sh`` is the same recipe as a shell script and
``deploy/sandbox/Dockerfile`` the registry-based equivalent.
"""

from __future__ import annotations

import collections
import contextlib
import fcntl
import hashlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import docker
import docker.errors

DEFAULT_IMAGE = "spokehub-sandbox:bookworm"
SUITE = "bookworm"
INCLUDE = "python3-minimal,procps,git,ca-certificates"
SANDBOX_UID = 1000
DEFAULT_MIRROR = "http://deb.debian.org/debian"
IMPORT_CHANGES = ["USER 1000:1000", "WORKDIR /workspace", 'CMD ["/bin/sh"]']
# Any change to the recipe must change the cached tarball's name, or an old rootfs is reused.
RECIPE_VERSION = hashlib.sha256(
    f"{SUITE}|{INCLUDE}|{SANDBOX_UID}|minbase|v1".encode()
).hexdigest()[:12]

Progress = Callable[[str], None]


class SandboxImageError(RuntimeError):
    """The sandbox image is missing and cannot be built here; the message says why."""


def _docker_client() -> docker.DockerClient:
    try:
        return docker.from_env()
    except docker.errors.DockerException as exc:
        raise SandboxImageError(f"the Docker engine is unreachable: {exc}") from exc


def image_present(name: str = DEFAULT_IMAGE) -> bool:
    """True if the local Docker engine has image ``name`` (never pulls)."""
    client = _docker_client()
    try:
        client.api.inspect_image(name)
        return True
    except docker.errors.ImageNotFound:
        return False
    except docker.errors.DockerException as exc:
        raise SandboxImageError(f"cannot inspect image {name}: {exc}") from exc
    finally:
        client.close()


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "spokehub"


def ensure_sandbox_image(
    name: str = DEFAULT_IMAGE,
    *,
    progress: Progress | None = None,
    cache_dir: Path | None = None,
) -> None:
    """Make sure image ``name`` exists locally, building it from Debian if it does not."""
    say: Progress = progress or (lambda _line: None)
    if image_present(name):
        return
    cache = cache_dir or default_cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    with _build_lock(cache / f"{_safe(name)}.lock", say):
        if image_present(name):  # another process built it while we waited
            say(f"image {name} was built by another process")
            return
        tarball = cache / f"rootfs-{SUITE}-{RECIPE_VERSION}.tar"
        if tarball.exists():
            say(f"using cached root filesystem {tarball}")
        else:
            _build_rootfs_tarball(tarball, say)
        _import(tarball, name, say)


@contextlib.contextmanager
def _build_lock(path: Path, say: Progress) -> Iterator[None]:
    with open(path, "a+b") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            say("another process is building the sandbox image; waiting for it")
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def _find_debootstrap() -> str:
    found = shutil.which("debootstrap") or shutil.which(
        "debootstrap", path="/usr/sbin:/sbin:/usr/local/sbin"
    )
    if not found:
        raise SandboxImageError(
            "debootstrap is not installed, so the sandbox image cannot be built: "
            "run `apt-get install -y debootstrap` (as root), or build "
            "deploy/sandbox/Dockerfile where a registry is reachable"
        )
    return found


def _build_rootfs_tarball(tarball: Path, say: Progress) -> None:
    debootstrap = _find_debootstrap()
    if os.geteuid() != 0:
        raise SandboxImageError(
            "building the sandbox image runs debootstrap, which needs root: "
            "run `sudo deploy/sandbox/build-image.sh` once, or run the spoke as root"
        )
    mirror = os.environ.get("SPOKEHUB_DEBIAN_MIRROR", DEFAULT_MIRROR)
    work = Path(tempfile.mkdtemp(prefix="rootfs-", dir=tarball.parent))
    rootfs = work / "rootfs"
    try:
        say(f"debootstrap {SUITE} (minbase + {INCLUDE}) from {mirror}; takes about a minute")
        _run_logged(
            [debootstrap, "--variant=minbase", f"--include={INCLUDE}", SUITE, str(rootfs), mirror],
            say,
            "debootstrap",
        )
        say("adding user sandbox (1000:1000) and /workspace")
        customize_rootfs(rootfs)
        say(f"packing root filesystem into {tarball}")
        partial = tarball.with_suffix(".tar.partial")
        _run_logged(["tar", "--numeric-owner", "-C", str(rootfs), "-cf", str(partial), "."],
                    say, "tar")
        partial.replace(tarball)
    finally:
        _remove_tree(work, say)


def customize_rootfs(rootfs: Path) -> None:
    """Add the non-root user and the workspace; trim caches the image never needs."""
    etc = rootfs / "etc"
    _append_once(etc / "passwd", "sandbox:", f"sandbox:x:{SANDBOX_UID}:{SANDBOX_UID}:"
                 "spokehub sandbox:/workspace:/bin/sh")
    _append_once(etc / "group", "sandbox:", f"sandbox:x:{SANDBOX_UID}:")
    if (etc / "shadow").exists():
        _append_once(etc / "shadow", "sandbox:", "sandbox:!:19000:0:99999:7:::")
    workspace = rootfs / "workspace"
    workspace.mkdir(mode=0o755, exist_ok=True)
    os.chown(workspace, SANDBOX_UID, SANDBOX_UID)
    for sub in ("var/cache/apt/archives", "var/lib/apt/lists", "usr/share/doc",
                "usr/share/man", "usr/share/info"):
        d = rootfs / sub
        if d.is_dir():
            for child in d.iterdir():
                if child.is_file() or child.is_symlink():
                    child.unlink()
                elif child.is_dir() and child.name != "partial":
                    shutil.rmtree(child)
    for cache_file in (rootfs / "var/cache/apt").glob("*.bin"):
        cache_file.unlink()


def _append_once(path: Path, prefix: str, line: str) -> None:
    text = path.read_text() if path.exists() else ""
    if any(existing.startswith(prefix) for existing in text.splitlines()):
        return
    if text and not text.endswith("\n"):
        text += "\n"
    path.write_text(text + line + "\n")


def _run_logged(cmd: list[str], say: Progress, what: str) -> None:
    """Run ``cmd``, forwarding its output as progress; on failure say how it ended."""
    tail: collections.deque[str] = collections.deque(maxlen=15)
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          stdin=subprocess.DEVNULL, text=True, errors="replace") as proc:
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.rstrip()
            if line:
                tail.append(line)
                say(f"{what}: {line}")
        rc = proc.wait()
    if rc != 0:
        details = " | ".join(tail)
        raise SandboxImageError(f"{what} failed with exit code {rc}: {details}")


def _mounts_under(path: Path) -> list[str]:
    prefix = str(path.resolve()) + "/"
    try:
        lines = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return []
    points = [ln.split()[1] for ln in lines if len(ln.split()) > 1]
    return sorted((p for p in points if p.startswith(prefix)), key=len, reverse=True)


def _remove_tree(path: Path, say: Progress) -> None:
    """Delete a build tree, but never through a mount debootstrap left behind (/proc!)."""
    for point in _mounts_under(path):
        subprocess.run(["umount", "-l", point], check=False, capture_output=True)
    if _mounts_under(path):
        say(f"warning: {path} still has mounts; leaving it in place")
        return
    shutil.rmtree(path, ignore_errors=True)


def _split_name(name: str) -> tuple[str, str]:
    repo, sep, tag = name.rpartition(":")
    if not sep or "/" in tag:
        return name, "latest"
    return repo, tag


def _import(tarball: Path, name: str, say: Progress) -> None:
    repo, tag = _split_name(name)
    say(f"docker import {tarball.name} as {name}")
    client = _docker_client()
    try:
        client.api.import_image_from_file(
            str(tarball), repository=repo, tag=tag, changes=IMPORT_CHANGES
        )
    except docker.errors.DockerException as exc:
        raise SandboxImageError(f"docker import of {tarball} failed: {exc}") from exc
    finally:
        client.close()
    if not image_present(name):
        raise SandboxImageError(f"docker import reported success but {name} is not present")
    say(f"image {name} is ready")
