"""``hub backup`` / ``hub restore`` and the refusals around upgrades (issue 10): a backup of
a running hub restored into an empty data dir is the same hub (its spoke reconnects by
itself, tokens, spokes, workstreams and transcripts are all there); damaged or too-new
backups, non-empty data dirs and too-new databases are refused with clear messages. Real hub
and spoke processes, real SQLite; the scripted LLM is the only stand-in.
"""

from __future__ import annotations

import io
import json
import os
import sqlite3
import stat
import subprocess
import tarfile
from pathlib import Path

from hub.store.migrations import MIGRATIONS
from tests.cluster import HUB, Hub, Spoke
from tests.llm_server import Say
from tests.ws_helpers import ThreadedLLM, start_ws, wait_state, ws_events


def _hub(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([HUB, *args], capture_output=True, text=True, timeout=120,
                          env={"PATH": str(Path(HUB).parent), "HOME": os.environ.get("HOME", "/")})


def _state(hub: Hub) -> dict[str, object]:
    client = hub.client()
    return {
        "spokes": sorted(s["name"] for s in client.request("GET", "/api/spokes")),
        "tokens": sorted((t["id"], t["state"]) for t in client.request("GET", "/api/tokens")),
        "ws": sorted((w["id"], w["state"]) for w in client.request("GET", "/api/ws")),
    }


def test_a_backup_of_a_running_hub_restores_the_same_hub(
        tmp_path: Path, model_hub: Hub, model_spoke: Spoke, llm: ThreadedLLM) -> None:
    hub = model_hub
    hub.token("kept-token")
    ws_id = start_ws(hub, f"{llm.script('saved', [Say('remember me')])} hi")
    wait_state(hub, ws_id, "idle")
    before, events = _state(hub), ws_events(hub, ws_id)
    pin = hub.client().request("GET", "/api/info")["pin"]

    archive = tmp_path / "backups"
    archive.mkdir()
    made = _hub("backup", "--data-dir", str(hub.dir), str(archive))
    assert made.returncode == 0, made.stderr
    (written,) = archive.iterdir()
    assert "written to" in made.stdout and str(written) in made.stdout
    assert stat.S_IMODE(written.stat().st_mode) == 0o600, "it holds the TLS key"
    hub.token("after-the-backup")  # not in the backup: it is a snapshot of one moment

    hub.stop()
    restored = tmp_path / "restored"
    res = _hub("restore", "--data-dir", str(restored), str(written))
    assert res.returncode == 0, res.stderr
    assert f"hub serve --data-dir {restored}" in res.stdout and pin in res.stdout
    assert stat.S_IMODE(restored.stat().st_mode) == 0o700
    assert stat.S_IMODE((restored / "tls.key").stat().st_mode) == 0o600

    hub.dir = restored  # same port: the spoke dials the address in its state
    hub.start()
    model_spoke.wait_connected()  # by itself: the certificate, so the pin, is the same
    assert hub.client().request("GET", "/api/info")["pin"] == pin
    assert _state(hub) == before
    assert ws_events(hub, ws_id) == events

    again = _hub("restore", "--data-dir", str(restored), str(written))
    assert again.returncode == 1 and "a hub is running on" in again.stderr
    hub.stop()
    refused = _hub("restore", "--data-dir", str(restored), str(written))
    assert refused.returncode == 1 and "is not empty" in refused.stderr and "--force" in refused.stderr
    forced = _hub("restore", "--force", "--data-dir", str(restored), str(written))
    assert forced.returncode == 0, forced.stderr


def _rewrite(src: Path, dest: Path, change: dict[str, object] | None = None,
             damage: str | None = None) -> None:
    """Copy a backup, changing its manifest or damaging one member's bytes."""
    with tarfile.open(src, "r:gz") as old, tarfile.open(dest, "w:gz") as new:
        for member in old.getmembers():
            data = old.extractfile(member).read()  # type: ignore[union-attr]
            if member.name == "manifest.json" and change:
                data = json.dumps({**json.loads(data), **change}).encode()
            if member.name == damage:
                data = data[:-10] + b"x" * 10
            member.size = len(data)
            new.addfile(member, io.BytesIO(data))


def test_damaged_and_too_new_backups_and_databases_are_refused(tmp_path: Path, hub: Hub) -> None:
    good = tmp_path / "good.tar.gz"
    assert _hub("backup", "--data-dir", str(hub.dir), str(good)).returncode == 0
    hub.stop()

    damaged = tmp_path / "damaged.tar.gz"
    _rewrite(good, damaged, damage="hub.db")
    res = _hub("restore", "--data-dir", str(tmp_path / "d1"), str(damaged))
    assert res.returncode == 1 and "hub.db does not match its digest" in res.stderr
    assert not (tmp_path / "d1").exists(), "nothing is written when a check fails"

    newer = tmp_path / "newer.tar.gz"
    _rewrite(good, newer, change={"schema": len(MIGRATIONS) + 1, "version": "9.0.0"})
    res = _hub("restore", "--data-dir", str(tmp_path / "d2"), str(newer))
    assert res.returncode == 1 and "spokehub 9.0.0" in res.stderr
    assert f"up to {len(MIGRATIONS)}" in res.stderr

    not_ours = tmp_path / "other.tar.gz"
    not_ours.write_bytes(b"not a tarball")
    res = _hub("restore", "--data-dir", str(tmp_path / "d3"), str(not_ours))
    assert res.returncode == 1 and "is not a spokehub backup" in res.stderr

    res = _hub("backup", "--data-dir", str(tmp_path / "nothing-here"), str(tmp_path / "x.tgz"))
    assert res.returncode == 1 and "no hub database" in res.stderr

    # A database a newer hub has migrated: this hub refuses to serve it, and changes nothing.
    with sqlite3.connect(hub.dir / "hub.db") as db:
        db.execute(f"PRAGMA user_version={len(MIGRATIONS) + 2}")
    served = subprocess.run([HUB, "serve", "--data-dir", str(hub.dir), "--port", "0"],
                            capture_output=True, text=True, timeout=60)
    assert served.returncode == 1
    assert f"schema version is {len(MIGRATIONS) + 2}" in served.stderr
    assert "newer than this hub knows" in served.stderr and "Traceback" not in served.stderr
    with sqlite3.connect(hub.dir / "hub.db") as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS) + 2


def test_backup_and_restore_refuse_a_postgresql_hub(tmp_path: Path) -> None:
    """A hub whose store is PostgreSQL (flag, env or hub.toml) is backed up with pg_dump:
    both commands say so in one line, with the URL's password hidden, and write nothing."""
    url = "postgresql://hub:s3cret-pw@db.example:5432/spokehub"
    data = tmp_path / "hub"
    data.mkdir()
    res = _hub("backup", "--data-dir", str(data), "--database", url, str(tmp_path / "b.tgz"))
    assert res.returncode == 1 and "pg_dump" in res.stderr and "PostgreSQL" in res.stderr
    assert "s3cret-pw" not in res.stderr and "hub:***@db.example" in res.stderr
    assert not (tmp_path / "b.tgz").exists()

    (data / "hub.toml").write_text(f'[database]\nurl = "{url}"\n')
    res = _hub("backup", "--data-dir", str(data), str(tmp_path / "b.tgz"))
    assert res.returncode == 1 and "pg_dump" in res.stderr and "s3cret-pw" not in res.stderr

    archive = tmp_path / "any.tar.gz"
    archive.write_bytes(b"never read")
    res = _hub("restore", "--data-dir", str(tmp_path / "fresh"), "--database", url, str(archive))
    assert res.returncode == 1 and "pg_restore" in res.stderr and "s3cret-pw" not in res.stderr
    assert not (tmp_path / "fresh").exists()

    res = _hub("backup", "--data-dir", str(data), "--database", "mysql://x", str(tmp_path / "c"))
    assert res.returncode == 2 and "unknown database" in res.stderr
