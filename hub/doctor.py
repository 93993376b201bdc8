"""``hub doctor``: what is wrong with a hub's data dir, certificate, database and process.

Each check is a small function of a :class:`HubContext` returning a
:class:`protocol.doctor.Check`; :data:`CHECKS` lists them in the order they print and
:func:`run` runs them. Everything here blocks (files, SQLite, a TLS connection, the Docker
engine): it is for the CLI command, never for the event loop of a serving hub.

Nothing is changed: the database is opened read-only (never migrated), modes are reported,
not fixed. Whether a hub runs on the data dir is the caller's to find out (``cli/runlock.py``
holds the run lock, and ``hub/`` imports nothing from ``cli/``): it passes :class:`Running`.

Every check and what to do when it fails: docs/troubleshooting.md. Pinned by
tests/test_doctor.py.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Callable
from pathlib import Path

from hub.doctor_facts import (
    HubContext,
    kernel_clock_synchronized,
    load_cert,
    mode_check,
    short_pin,
)
from protocol import doctor as d
from protocol.doctor import Check
from protocol.pins import cert_pin

SECRET_FILES = ("tls.key", "admin.json", "hub.db", "hub.db-wal", "hub.db-shm", "hub.lock")
FUTURE_SLACK_S = 60.0  # a record this far in the future means the clock went back
DOCS = d.TROUBLESHOOTING


# ------------------------------------------------------------------------- checks
def check_data_dir(ctx: HubContext) -> Check:
    path = ctx.data_dir
    if not path.exists():
        return d.fail("data-dir", f"{path} does not exist",
                      f"start a hub on it (`hub serve --data-dir {path}` or `hub up`), or point "
                      "--data-dir / SPOKEHUB_HUB_DIR at the hub's data dir")
    if not path.is_dir():
        return d.fail("data-dir", f"{path} is not a directory",
                      "point --data-dir / SPOKEHUB_HUB_DIR at the hub's data dir")
    problem = mode_check("data-dir", path, 0o700, f"chmod 700 {path}")
    return problem or d.ok("data-dir", f"{path} (owner only)")


def check_file_modes(ctx: HubContext) -> Check:
    """The files holding secrets are 0600 (the key, the admin key, the database, the lock)."""
    paths = [ctx.data_dir / name for name in SECRET_FILES]
    if ctx.tls_key is not None:
        paths[0] = ctx.tls_key
    loose: list[tuple[Path, int]] = []
    foreign: list[str] = []
    for path in paths:
        try:
            st = path.stat()
        except FileNotFoundError:
            continue
        if d.loose_mode(st.st_mode, 0o600):
            loose.append((path, st.st_mode))
        elif st.st_uid != os.geteuid():
            foreign.append(path.name)
    if loose:
        found = "; ".join(f"{p.name} ({d.describe_loose(m, 0o600)})" for p, m in loose)
        return d.fail("file-modes", f"open to others: {found}",
                      "chmod 600 " + " ".join(str(p) for p, _ in loose))
    if foreign:
        return d.warn("file-modes", f"not yours (uid {os.geteuid()}): {', '.join(foreign)}",
                      "run the doctor as the user that runs the hub")
    toml = ctx.data_dir / "hub.toml"
    if toml.exists() and d.loose_mode(toml.stat().st_mode, 0o600):
        return d.warn("file-modes", f"hub.toml: {d.describe_loose(toml.stat().st_mode, 0o600)} "
                      "(it may hold model API keys)", f"chmod 600 {toml}")
    return d.ok("file-modes", "keys, admin.json and the database are owner-only (0600)")


def check_tls(ctx: HubContext) -> Check:
    """Certificate and key present, the key is the certificate's, and the dates."""
    cert, key = ctx.cert_path, ctx.key_path
    plain = ctx.url.startswith("http://")
    if not cert.exists() and not key.exists():
        if plain:
            return d.ok("tls", "plain HTTP (--insecure-http): no certificate to check")
        if ctx.tls_cert is not None:
            return d.fail("tls", f"{cert} and {key} do not exist",
                          "give the files `hub serve --tls-cert/--tls-key` uses")
        return d.warn("tls", f"no tls.crt and tls.key in {ctx.data_dir} yet",
                      "`hub serve` makes them at its first start; a hub started with "
                      "--tls-cert/--tls-key: run `hub doctor --tls-cert FILE --tls-key FILE`")
    if not cert.exists() or not key.exists():
        there, gone = (cert, key) if cert.exists() else (key, cert)
        return d.fail("tls", f"{gone} is missing but {there} is there: the next `hub serve` "
                      "would make a new certificate, and every spoke's pin would break",
                      f"restore {gone.name} from a backup (operator-guide section 13); if it "
                      f"is lost for good, see {DOCS} (certificate changed)")
    from cryptography.hazmat.primitives import serialization

    try:
        certificate = load_cert(cert)
    except (OSError, ValueError) as err:
        return d.fail("tls", f"{cert} is not a PEM certificate ({err})",
                      f"restore it from a backup, see {DOCS}")
    try:
        private = serialization.load_pem_private_key(key.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as err:
        return d.fail("tls", f"{key} is not an unencrypted PEM private key ({err})",
                      f"restore it from a backup, see {DOCS}")
    spki = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    if private.public_key().public_bytes(*spki) != certificate.public_key().public_bytes(*spki):
        return d.fail("tls", f"{key.name} is not the key of {cert.name}: the hub cannot serve them",
                      "put back the key that belongs to the certificate (from the same backup)")
    now = dt.datetime.fromtimestamp(ctx.clock(), dt.UTC)
    status, detail = d.cert_dates(certificate.not_valid_before_utc,
                                  certificate.not_valid_after_utc, now, cert.name)
    pin = f"; pin {short_pin(ctx.file_pin)}"
    if status == d.OK:
        return d.ok("tls", f"{detail}, key matches{pin}")
    return d.Check("tls", status, detail + pin,
                   "renew it and restart the hub with the new files (spokes pin the "
                   f"certificate: see {DOCS}, certificate changed)")


def check_pin(ctx: HubContext) -> Check:
    """The certificate file, ``admin.json`` and the running hub all agree on one pin."""
    admin = ctx.admin
    if isinstance(admin, str):
        return d.fail("pin", admin, "restart the hub: it rewrites admin.json at start")
    served = ctx.served
    served_pin = cert_pin(served.der) if served is not None and served.der else None
    if admin is None:
        if ctx.running is not None:
            return d.fail("pin", f"{ctx.data_dir / 'admin.json'} is missing: the admin CLI "
                          "cannot find the hub", "a hub that just started writes it in a "
                          "moment: run the doctor again; else restart the hub (`hub down`, "
                          "then `hub up` or `hub serve`): it writes admin.json at start")
        return d.warn("pin", "no admin.json yet (the hub writes it at start)",
                      f"hub serve --data-dir {ctx.data_dir}")
    admin_pin = str(admin.get("pin") or "")
    file_pin = ctx.file_pin
    if served_pin and file_pin and served_pin != file_pin:
        return d.fail("pin", f"the running hub serves {short_pin(served_pin)}, {ctx.cert_path} is "
                      f"{short_pin(file_pin)}", "a hub started with --tls-cert: run `hub doctor "
                      "--tls-cert FILE --tls-key FILE`; else the file changed after the hub "
                      f"started: put the served one back (spokes pin it), see {DOCS}")
    if served_pin and admin_pin and served_pin != admin_pin:
        return d.fail("pin", f"the hub at {ctx.url} serves {short_pin(served_pin)}, admin.json "
                      f"pins {short_pin(admin_pin)}: the admin CLI will refuse it",
                      "another hub answers there, or restart this one (it rewrites admin.json)")
    if file_pin and admin_pin and file_pin != admin_pin:
        return d.fail("pin", f"admin.json (what the hub served last) pins {short_pin(admin_pin)}, "
                      f"{ctx.cert_path.name} is {short_pin(file_pin)}: the certificate changed, and "
                      "spokes enrolled before refuse the new one", "put the old tls.crt/tls.key "
                      f"back, or re-enroll every spoke (see {DOCS}); a hub started with "
                      "--tls-cert: run `hub doctor --tls-cert FILE --tls-key FILE`")
    if not admin_pin and not file_pin:
        return d.ok("pin", "no pin: plain HTTP (--insecure-http), clients trust the proxy's "
                    "certificate through their CAs")
    agree = [name for name, pin in (("admin.json", admin_pin), (ctx.cert_path.name, file_pin),
                                    ("the running hub", served_pin)) if pin]
    return d.ok("pin", f"{admin_pin or file_pin} ({', '.join(agree)} agree)")


def check_database(ctx: HubContext) -> Check:
    db = ctx.db
    if ctx.pg_url:
        from hub.store.pg_url import redact

        if db is None or db.error:
            return d.fail("database", f"PostgreSQL cannot be reached: {db.error if db else ''}",
                          "check the server, the URL (--database / SPOKEHUB_DATABASE_URL / "
                          f"[database] url) and the network, see {DOCS}")
        return d.ok("database", f"PostgreSQL at {redact(ctx.pg_url)} answers")
    path = ctx.data_dir / "hub.db"
    if db is None:
        return d.fail("database", f"{path} does not exist",
                      f"start the hub (`hub serve --data-dir {ctx.data_dir}`) to create it, or "
                      "restore it from a backup")
    if db.error:
        return d.fail("database", f"{path} cannot be read: {db.error}",
                      f"restore hub.db from a backup (operator-guide section 13), see {DOCS}")
    if db.quick_check != ["ok"]:
        return d.fail("database", f"{path} is damaged: {'; '.join(db.quick_check[:3])}",
                      "stop the hub, copy the data dir aside, then restore hub.db from a backup "
                      f"(or salvage with `sqlite3 hub.db .recover`), see {DOCS}")
    return d.ok("database", f"{path} opens read-only, quick_check ok")


def check_schema(ctx: HubContext) -> Check:
    from hub.store.migrations import MIGRATIONS

    db, known = ctx.db, len(MIGRATIONS)
    if db is None or db.error:
        return d.skip("schema", "no readable database")
    if db.version > known:
        return d.fail("schema", f"schema version {db.version}, newer than this hub knows (up to "
                      f"{known}): a newer spokehub used it, and this one refuses to start on it",
                      "run that spokehub version (or newer), or restore a backup made with "
                      "this one")
    if db.version < known:
        if ctx.running is not None:
            return d.warn("schema", f"schema version {db.version}; this installation knows "
                          f"{known}: the running hub is older than the installed code",
                          "restart the hub to upgrade (back up the data dir first)")
        return d.warn("schema", f"schema version {db.version}; the next `hub serve` migrates "
                      f"it to {known}", "back up the data dir first (operator-guide section 13)")
    return d.ok("schema", f"schema version {db.version} (current)")


def check_running(ctx: HubContext) -> Check:
    if ctx.running is None:
        return d.warn("hub", f"no hub is running on {ctx.data_dir}",
                      f"hub serve --data-dir {ctx.data_dir}  (or `hub up`)")
    who = f"pid {ctx.running.pid}"
    served = ctx.served
    if served is None:
        return d.warn("hub", f"a hub ({who}) holds the data dir but recorded no URL yet",
                      "run the doctor again in a moment")
    if served.error:
        return d.fail("hub", f"a hub ({who}) runs, but /healthz does not answer: {served.error}",
                      "read its log; restart it (`hub down`, then `hub up` or `hub serve`)")
    body = served.body if isinstance(served.body, dict) else {}
    if served.status != 200 or not body:
        return d.fail("hub", f"{served.url}/healthz answered HTTP {served.status}",
                      "another service answers there, or read the hub's log")
    spokes = body.get("spokes_connected")
    where = f"{who} at {served.url}, {spokes} spoke(s) connected"
    if body.get("status") == "degraded":
        reasons = [str(r) for r in body.get("reasons") or []]
        fixes = []
        if not spokes:
            fixes.append("join a spoke: `hub token create --name NAME`, then `spoke join TOKEN` "
                         "on its machine (or `hub up`)")
        if any("spoke" not in r for r in reasons):
            fixes.append("check the default model's endpoint and hub.toml (operator-guide "
                         "section 11)")
        return d.warn("hub", f"{where}; degraded: {'; '.join(reasons)}", "; ".join(fixes))
    return d.ok("hub", f"{where}; /healthz ok")


def check_docker(ctx: HubContext) -> Check:
    """Only a warning here: the hub needs no Docker, but `hub up`'s local spoke does."""
    try:
        import docker

        client = docker.from_env(timeout=int(max(ctx.timeout_s, 1)))
        try:
            client.ping()
            version = client.version()
        finally:
            client.close()
    except Exception as err:  # the SDK raises DockerException, requests' errors, OSError
        return d.warn("docker", f"the Docker engine is unreachable ({err}); the hub does not "
                      "need it, a spoke on this machine (`hub up`) does",
                      "start Docker (`systemctl start docker`) or set DOCKER_HOST")
    return d.ok("docker", f"Docker {version.get('Version')} (API {version.get('ApiVersion')})")


def check_clock(ctx: HubContext) -> Check:
    now = ctx.clock()
    db = ctx.db
    if db is not None and db.newest_ts is not None and db.newest_ts > now + FUTURE_SLACK_S:
        ahead = db.newest_ts - now
        return d.warn("clock", f"hub.db holds records {ahead:.0f}s in the future: this clock "
                      "went back", "set the clock right and keep it synchronized (chrony, "
                      "systemd-timesyncd); expiries and history are off until then")
    synced = kernel_clock_synchronized()
    if synced is False:
        return d.warn("clock", "the kernel says this clock is not synchronized (no NTP)",
                      "enable time synchronization (chrony, systemd-timesyncd or ntpd): "
                      "token expiries and spoke clocks are judged by it")
    return d.ok("clock", ("synchronized" if synced else "not known to be synchronized")
                + ", no records from the future in hub.db")


CHECKS: list[Callable[[HubContext], Check]] = [
    check_data_dir, check_file_modes, check_tls, check_pin, check_database, check_schema,
    check_running, check_docker, check_clock,
]


def run(ctx: HubContext) -> list[Check]:
    """Every check in order; with no data dir there is nothing else to look at."""
    return d.run_checks(CHECKS, ctx, runs_as="the hub",
                        alone=lambda first: first.status == d.FAIL and not ctx.data_dir.is_dir())
