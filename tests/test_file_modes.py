"""The hub's data dir is 0700 and its database files 0600 (issue 8, item 10).

The database and its WAL used to be 0644: safe only while the data dir stayed 0700. At start
the hub now tightens both, and says so when it had to."""

from __future__ import annotations

from pathlib import Path

from tests.cluster import Hub


def _mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def test_the_data_dir_and_database_are_owner_only(tmp_path: Path, sandbox_image: str) -> None:
    hub = Hub(tmp_path)
    hub.start()
    hub.client().request("POST", "/api/tokens", {"name": "one"})  # something in the WAL
    try:
        assert _mode(hub.dir) == 0o700
        for name in ("hub.db", "hub.db-wal", "hub.db-shm"):
            assert _mode(hub.dir / name) == 0o600, name
    finally:
        hub.stop()
    # Loosened by hand (a copy, an old hub, a careless chmod): tightened at the next start.
    hub.dir.chmod(0o755)
    (hub.dir / "hub.db").chmod(0o644)
    hub.start()
    try:
        assert _mode(hub.dir) == 0o700 and _mode(hub.dir / "hub.db") == 0o600
        output = hub.proc.output() if hub.proc else ""
        assert "was open to others" in output and "was readable by others" in output
    finally:
        hub.stop()
