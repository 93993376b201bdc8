"""``hub doctor`` and ``spoke doctor`` on real parts: a real hub and spoke (processes, wss,
TLS, SQLite, the Docker engine), then each broken the way operators break them; every failure
is a FAIL line with its fix and exit 1, never a traceback. docs/troubleshooting.md."""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
import subprocess
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from hub.doctor import check_tls
from hub.doctor_facts import HubContext
from hub.store.migrations import MIGRATIONS
from protocol import doctor as d
from spoke.boxes.image import DEFAULT_IMAGE
from spoke.doctor import HubProbe, clock_check, image_check, image_fix
from tests.cluster import HUB, SPOKE, Hub, Spoke

MAIN_HUB_CHECKS = ("data-dir", "file-modes", "tls", "pin", "database", "schema", "hub")
MAIN_SPOKE_CHECKS = ("data-dir", "enrolled", "identity", "running", "docker", "image",
                     "hub-tcp", "hub-tls", "hub-http", "clock")


def doctor(cmd: str, data_dir: Path, *extra: str) -> tuple[int, dict[str, dict[str, Any]]]:
    """Run ``hub|spoke doctor --json``: its exit code and checks by name."""
    res = subprocess.run([cmd, "doctor", "--data-dir", str(data_dir), "--json", *extra],
                         capture_output=True, text=True, timeout=120)
    assert "Traceback" not in res.stderr, res.stderr
    doc = json.loads(res.stdout)
    checks = {c["name"]: c for c in doc["checks"]}
    assert doc["ok"] == (res.returncode == 0), doc
    assert res.returncode == (1 if any(c["status"] == "fail" for c in checks.values()) else 0)
    return res.returncode, checks


def doctor_text(cmd: str, data_dir: Path) -> subprocess.CompletedProcess[str]:
    res = subprocess.run([cmd, "doctor", "--data-dir", str(data_dir)],
                         capture_output=True, text=True, timeout=120)
    assert "Traceback" not in res.stderr, res.stderr
    return res


def line(text: str, name: str) -> str:
    """The output line of check ``name``."""
    found = [ln for ln in text.splitlines() if ln[6:].split(" ", 1)[0] == name]
    assert len(found) == 1, text
    return found[0]


def test_a_healthy_hub_and_spoke_pass(hub: Hub, spoke: Spoke) -> None:
    code, checks = doctor(HUB, hub.dir)
    assert code == 0, checks
    for name in MAIN_HUB_CHECKS:
        assert checks[name]["status"] == "ok", checks[name]
    assert "the running hub" in checks["pin"]["detail"]  # the served certificate was compared
    assert f"schema version {len(MIGRATIONS)} (current)" in checks["schema"]["detail"]
    assert "1 spoke(s) connected" in checks["hub"]["detail"]

    code, checks = doctor(SPOKE, spoke.dir)
    assert code == 0, checks
    for name in MAIN_SPOKE_CHECKS:
        assert checks[name]["status"] == "ok", checks[name]
    assert checks["workspaces"]["status"] in ("ok", "warn")  # loop devices: up to the host
    assert spoke.name in checks["enrolled"]["detail"]

    text = doctor_text(SPOKE, spoke.dir)
    assert text.returncode == 0
    assert line(text.stdout, "hub-tls").startswith("ok    hub-tls")
    assert "FAIL" not in text.stdout and "no problems found" in text.stdout


def test_loose_modes_fail_with_the_chmod_that_fixes_them(hub: Hub, spoke: Spoke) -> None:
    key = spoke.dir / "identity.key"
    key.chmod(0o644)
    hub.dir.chmod(0o755)
    (hub.dir / "tls.key").chmod(0o644)

    code, checks = doctor(SPOKE, spoke.dir)
    assert code == 1
    assert checks["identity"]["status"] == "fail"
    assert "others may read" in checks["identity"]["detail"]
    assert checks["identity"]["fix"] == f"chmod 600 {key}"
    text = doctor_text(SPOKE, spoke.dir)
    assert text.returncode == 1
    assert line(text.stdout, "identity").startswith("FAIL  identity")
    assert f"fix: chmod 600 {key}" in line(text.stdout, "identity")

    code, checks = doctor(HUB, hub.dir)
    assert code == 1
    assert checks["data-dir"]["status"] == "fail"
    assert checks["data-dir"]["fix"] == f"chmod 700 {hub.dir}"
    assert checks["file-modes"]["status"] == "fail"
    assert "tls.key" in checks["file-modes"]["detail"]
    assert checks["file-modes"]["fix"] == f"chmod 600 {hub.dir / 'tls.key'}"

    # The fixes it gave are the whole story: applied, everything passes again.
    key.chmod(0o600)
    hub.dir.chmod(0o700)
    (hub.dir / "tls.key").chmod(0o600)
    assert doctor(SPOKE, spoke.dir)[0] == 0
    assert doctor(HUB, hub.dir)[0] == 0


def test_the_spoke_doctor_sees_the_hub_stop_and_return_with_another_certificate(
        hub: Hub, spoke: Spoke) -> None:
    spoke.stop()
    hub.stop()
    code, checks = doctor(SPOKE, spoke.dir)
    assert code == 1
    assert checks["hub-tcp"]["status"] == "fail"
    assert f"127.0.0.1:{hub.port}" in checks["hub-tcp"]["detail"]
    assert "hub doctor" in checks["hub-tcp"]["fix"]
    assert checks["hub-tls"]["status"] == checks["clock"]["status"] == "skip"
    assert checks["running"]["status"] == "warn"  # stopped: `spoke run` says the fix
    assert "spoke run" in checks["running"]["fix"]

    # A stopped hub is not broken: a warning with the command that starts it.
    code, checks = doctor(HUB, hub.dir)
    assert code == 0
    assert checks["hub"]["status"] == "warn" and "hub serve" in checks["hub"]["fix"]
    assert checks["database"]["status"] == "ok"

    # The hub comes back with a new certificate (its files were lost): the spoke's pin is wrong.
    (hub.dir / "tls.crt").unlink()
    (hub.dir / "tls.key").unlink()
    hub.start()
    code, checks = doctor(SPOKE, spoke.dir)
    assert code == 1
    assert checks["hub-tcp"]["status"] == "ok"
    assert checks["hub-tls"]["status"] == "fail"
    assert "this spoke pinned" in checks["hub-tls"]["detail"]
    assert f"hub spoke revoke {spoke.name}" in checks["hub-tls"]["fix"]
    assert checks["hub-http"]["status"] == "skip"  # nothing is sent to a certificate not pinned
    # The hub itself is consistent again (it rewrote admin.json with the new pin).
    code, checks = doctor(HUB, hub.dir)
    assert checks["pin"]["status"] == "ok", checks["pin"]


def test_a_database_newer_than_this_hub_fails(hub: Hub) -> None:
    hub.stop()
    db = hub.dir / "hub.db"
    with sqlite3.connect(db) as conn:
        conn.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    conn.close()
    before = sorted(p.name for p in hub.dir.iterdir())

    code, checks = doctor(HUB, hub.dir)
    assert code == 1
    assert checks["database"]["status"] == "ok"
    assert checks["schema"]["status"] == "fail"
    assert f"schema version {len(MIGRATIONS) + 1}, newer than this hub knows" in checks["schema"]["detail"]
    assert "restore a backup" in checks["schema"]["fix"]
    # Read-only: nothing migrated, nothing created beside it.
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS) + 1
    conn.close()
    assert sorted(p.name for p in hub.dir.iterdir()) == before


def test_a_missing_default_image_fails(tmp_path: Path, sandbox_image: str) -> None:
    missing = "spokehub-doctor-no-such-image:never"
    data = tmp_path / "spoke"
    data.mkdir(mode=0o700)
    (data / "options.json").write_text(json.dumps(
        {"allow_images": [sandbox_image, missing], "default_image": missing}))

    code, checks = doctor(SPOKE, data)
    assert code == 1
    assert checks["image"]["status"] == "fail"
    assert missing in checks["image"]["detail"]
    assert f"docker pull {missing}" in checks["image"]["fix"]
    assert checks["enrolled"]["status"] == "fail"  # and a data dir nobody joined says so
    assert "spoke join" in checks["enrolled"]["fix"]
    assert checks["hub-tcp"]["status"] == "skip"

    # The check itself, for any image: the default missing fails, another allowed one warns.
    assert image_check(missing, []).status == "fail"
    found = image_check(sandbox_image, [sandbox_image, missing])
    assert found.status == "warn" and missing in found.detail
    assert image_check(sandbox_image, [sandbox_image]).status == "ok"
    assert "deploy/sandbox/build-image.sh" in image_fix(DEFAULT_IMAGE)


def test_a_missing_data_dir_is_one_clear_failure(tmp_path: Path) -> None:
    for cmd in (HUB, SPOKE):
        gone = tmp_path / f"no-{Path(cmd).name}"
        code, checks = doctor(cmd, gone)
        assert code == 1
        assert list(checks) == ["data-dir"]
        assert checks["data-dir"]["status"] == "fail"
        assert "does not exist" in checks["data-dir"]["detail"]
        assert "--data-dir" in checks["data-dir"]["fix"]
        text = doctor_text(cmd, gone)
        assert text.returncode == 1
        assert text.stdout.startswith(f"FAIL  data-dir  {gone} does not exist  -- fix: ")
        assert not gone.exists()  # the doctor creates nothing


# ------------------------------------------------------------- the checks, directly
def _write_pair(where: Path, not_before: dt.datetime, not_after: dt.datetime,
                key_of_another: bool = False) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "doctor test")])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(not_before).not_valid_after(not_after)
            .sign(key, hashes.SHA256()))
    if key_of_another:
        key = ec.generate_private_key(ec.SECP256R1())
    where.mkdir(mode=0o700, exist_ok=True)
    (where / "tls.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (where / "tls.key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    (where / "tls.key").chmod(0o600)


NOW = dt.datetime(2030, 6, 1, tzinfo=dt.UTC)


@pytest.mark.parametrize("days_left,status,words", [
    (-1, "fail", "expired on"), (10, "warn", "expires in 10 day(s)"), (400, "ok", "key matches"),
])
def test_certificate_dates(tmp_path: Path, days_left: int, status: str, words: str) -> None:
    _write_pair(tmp_path, NOW - dt.timedelta(days=400), NOW + dt.timedelta(days=days_left, hours=1))
    result = check_tls(HubContext(tmp_path, clock=NOW.timestamp))
    assert result.status == status, result
    assert words in result.detail
    assert "pin sha256:" in result.detail
    if status != "ok":
        assert "restart the hub" in result.fix


def test_a_key_that_is_not_the_certificates_fails(tmp_path: Path) -> None:
    _write_pair(tmp_path, NOW - dt.timedelta(days=1), NOW + dt.timedelta(days=900),
                key_of_another=True)
    result = check_tls(HubContext(tmp_path, clock=NOW.timestamp))
    assert result.status == "fail" and "is not the key of tls.crt" in result.detail
    (tmp_path / "tls.key").unlink()
    result = check_tls(HubContext(tmp_path, clock=NOW.timestamp))
    assert result.status == "fail" and "every spoke's pin would break" in result.detail


def test_clock_skew_against_the_hubs_date() -> None:
    # The hub stamped 1000 (truncated to the second); we asked at 1100.0 and heard at 1100.2.
    ahead = clock_check(HubProbe("https://h", date=1000.0, sent_at=1100.0, answered_at=1100.2))
    assert ahead.status == "warn" and "ahead of the hub's" in ahead.detail and ahead.fix
    close = clock_check(HubProbe("https://h", date=1100.0, sent_at=1100.0, answered_at=1100.2))
    assert close.status == "ok"
    # A slow answer widens the uncertainty instead of inventing a skew.
    slow = clock_check(HubProbe("https://h", date=1040.0, sent_at=1000.0, answered_at=1100.0))
    assert slow.status == "ok"
    assert d.clock_skew(-45, 0.5)[0] == "warn" and "behind" in d.clock_skew(-45, 0.5)[1]


def test_modes_and_rendering() -> None:
    assert d.loose_mode(0o644, 0o600) == 0o044
    assert d.describe_loose(0o640, 0o600) == "mode 0640: group may read it"
    checks = [d.ok("a", "fine"), d.fail("bee", "broken", "mend it"), d.skip("c", "later")]
    assert d.render(checks) == ["ok    a    fine", "FAIL  bee  broken  -- fix: mend it",
                                "skip  c    later"]
    assert d.exit_code(checks) == 1 and d.exit_code(checks[:1]) == 0
    assert d.summary(checks).startswith("problems found: 1 failed")
