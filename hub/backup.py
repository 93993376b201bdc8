"""One file that makes a restored hub the same hub: ``hub backup`` and ``hub restore``.

What "the same hub" needs, and why each part is in the archive:

- ``hub.db``: every token, key, user, spoke, box, workstream, transcript and audit row. Taken
  with SQLite's online backup API, so a *running* hub is copied consistently (a snapshot of one
  moment, WAL included) without stopping it or blocking it for more than page copies.
- ``tls.crt`` and ``tls.key``: every enrolled spoke pins the certificate's SHA-256. A restored
  hub with another certificate would be refused by all of them; with this one they reconnect
  on their own.
- ``hub.toml`` (models, alerts) and ``admin.json`` (the local admin CLI's key) when present.

The archive is a gzip'd tar with ``manifest.json`` first (format, spokehub version, schema
version, pin, each file's size and SHA-256). It holds private keys and credentials: it is
written 0600, and restore checks every digest, the database's integrity and its schema
version before anything in the data dir is touched. Blocking (files, SQLite): meant for the
CLI, never the hub's event loop. Pinned by tests/test_backup.py.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import sqlite3
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hub.store.engine import SchemaTooNew
from hub.store.migrations import MIGRATIONS
from hub.tls import certificate_pin
from protocol.version import VERSION

FORMAT = "spokehub-backup/1"
DATABASE = "hub.db"
# Copied as they are, when present. The database is taken through the backup API instead.
FILES = ("tls.crt", "tls.key", "hub.toml", "admin.json")
# Left by SQLite or a running hub beside the database: never restored over a fresh copy.
STALE = ("hub.db-wal", "hub.db-shm", "hub.db-journal", "hub.lock")


class BackupError(Exception):
    """What went wrong, in one line for the operator; nothing was changed."""


@dataclass
class Manifest:
    version: str
    schema: int
    pin: str
    created_at: float
    files: dict[str, dict[str, Any]]  # name -> {"size", "sha256"}

    def to_json(self) -> bytes:
        return json.dumps({"format": FORMAT, "version": self.version, "schema": self.schema,
                           "pin": self.pin, "created_at": self.created_at,
                           "files": self.files}, indent=2).encode()


def backup(data_dir: Path, dest: Path) -> tuple[Path, Manifest]:
    """Write the archive of ``data_dir`` to ``dest`` (a file, or an existing directory to put
    ``spokehub-backup-<UTC time>.tar.gz`` in); returns where it went and what it holds."""
    db = data_dir / DATABASE
    if not db.is_file():
        raise BackupError(f"no hub database in {data_dir} ({DATABASE} is missing): "
                          "is this a hub's data dir? (--data-dir / SPOKEHUB_HUB_DIR)")
    if dest.is_dir():
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        dest = dest / f"spokehub-backup-{stamp}.tar.gz"
    if not dest.parent.is_dir():
        raise BackupError(f"{dest.parent} is not a directory")
    with tempfile.TemporaryDirectory(prefix="spokehub-backup-") as tmp:
        snapshot = Path(tmp) / DATABASE
        schema = _snapshot(db, snapshot)
        parts = {DATABASE: snapshot}
        parts.update({name: data_dir / name for name in FILES if (data_dir / name).is_file()})
        cert = parts.get("tls.crt")
        manifest = Manifest(version=VERSION, schema=schema,
                            pin=certificate_pin(cert) if cert else "",
                            created_at=time.time(),
                            files={name: _describe(path) for name, path in parts.items()})
        partial = dest.with_name(dest.name + ".partial")
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            with os.fdopen(fd, "wb") as raw, tarfile.open(fileobj=raw, mode="w:gz") as tar:
                _add_bytes(tar, "manifest.json", manifest.to_json())
                for name, path in parts.items():
                    tar.add(path, arcname=name, recursive=False, filter=_owner_only)
            os.replace(partial, dest)
        except BaseException:
            with contextlib.suppress(OSError):
                partial.unlink()
            raise
    return dest, manifest


def _snapshot(db: Path, out: Path) -> int:
    """A consistent copy of the live database through SQLite's backup API; its schema."""
    try:
        src = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    except sqlite3.Error as err:
        raise BackupError(f"cannot open {db}: {err}") from None
    try:
        dst = sqlite3.connect(out)
        try:
            src.backup(dst, pages=1024)
            schema = int(dst.execute("PRAGMA user_version").fetchone()[0])
        finally:
            dst.close()
    except sqlite3.Error as err:
        raise BackupError(f"copying {db} failed: {err}") from None
    finally:
        src.close()
    return schema


def read_manifest(archive: Path) -> Manifest:
    """The archive's manifest, after checking it is one of ours."""
    try:
        with tarfile.open(archive, "r:gz") as tar:
            member = tar.extractfile("manifest.json")
            if member is None:
                raise KeyError("manifest.json")
            doc = json.loads(member.read())
    except (OSError, tarfile.TarError, KeyError, ValueError) as err:
        raise BackupError(f"{archive} is not a spokehub backup ({err})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise BackupError(f"{archive} is not a spokehub backup (format "
                          f"{doc.get('format') if isinstance(doc, dict) else '?'!r})")
    return Manifest(version=str(doc["version"]), schema=int(doc["schema"]), pin=str(doc["pin"]),
                    created_at=float(doc["created_at"]), files=dict(doc["files"]))


def restore(archive: Path, data_dir: Path, *, force: bool = False) -> Manifest:
    """Bring ``archive`` into ``data_dir``: refused when the directory holds anything (unless
    ``force``: then the archive's files replace those there and the database's leftovers go),
    and when any part fails its digest, integrity or schema check."""
    manifest = read_manifest(archive)
    if manifest.schema > len(MIGRATIONS):
        raise BackupError(str(SchemaTooNew(manifest.schema, len(MIGRATIONS))).replace(
            "the database's", f"the backup's database (made by spokehub {manifest.version})"))
    if data_dir.exists() and any(data_dir.iterdir()) and not force:
        raise BackupError(f"{data_dir} is not empty: restore into an empty data dir, or pass "
                          "--force to replace the hub there (stop it first)")
    with tempfile.TemporaryDirectory(prefix="spokehub-restore-") as tmp:
        staged = Path(tmp)
        _extract_checked(archive, manifest, staged)
        _check_database(staged / DATABASE)
        data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(data_dir, 0o700)
        for name in STALE:
            with contextlib.suppress(FileNotFoundError):
                (data_dir / name).unlink()
        for name in manifest.files:
            target = data_dir / name
            partial = target.with_name(name + ".restoring")
            shutil.copyfile(staged / name, partial)
            os.chmod(partial, 0o600)
            os.replace(partial, target)
    return manifest


def _extract_checked(archive: Path, manifest: Manifest, into: Path) -> None:
    expected = set(manifest.files)
    if DATABASE not in expected or not expected <= {DATABASE, *FILES}:
        raise BackupError(f"{archive}: unexpected contents {sorted(expected)}")
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar.getmembers():
                if member.name == "manifest.json":
                    continue
                if member.name not in expected or not member.isfile():
                    raise BackupError(f"{archive}: unexpected member {member.name!r}")
                source = tar.extractfile(member)
                assert source is not None  # a regular file, checked above
                digest = hashlib.sha256()
                with open(into / member.name, "wb") as out:
                    while block := source.read(1 << 20):
                        digest.update(block)
                        out.write(block)
                if digest.hexdigest() != manifest.files[member.name]["sha256"]:
                    raise BackupError(f"{archive}: {member.name} does not match its digest "
                                      "(the file is damaged)")
                expected.discard(member.name)
    except (OSError, tarfile.TarError) as err:
        raise BackupError(f"{archive}: cannot read it ({err})") from None
    if expected:
        raise BackupError(f"{archive}: missing {sorted(expected)}")


def _check_database(path: Path) -> None:
    try:
        with contextlib.closing(sqlite3.connect(path)) as db:
            verdict = db.execute("PRAGMA integrity_check").fetchone()[0]
    except sqlite3.Error as err:
        raise BackupError(f"the backup's database does not open: {err}") from None
    if verdict != "ok":
        raise BackupError(f"the backup's database fails its integrity check: {verdict}")


def _describe(path: Path) -> dict[str, Any]:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return {"size": path.stat().st_size, "sha256": digest.hexdigest()}


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), 0o600, int(time.time())
    tar.addfile(info, io.BytesIO(data))


def _owner_only(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.mode, info.uid, info.gid, info.uname, info.gname = 0o600, 0, 0, "", ""
    return info
