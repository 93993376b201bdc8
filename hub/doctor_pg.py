"""``hub doctor`` on a hub whose store is PostgreSQL: what it can see from this machine (the
server's own integrity checks are the server's). Split from :mod:`hub.doctor` so psycopg is
imported only for such a hub."""

from __future__ import annotations

import psycopg

from hub.doctor_facts import DbFacts
from hub.store.pg_url import redact


def read_pg(url: str, timeout_s: float) -> DbFacts:
    """Connect to a PostgreSQL store and look: its schema version and newest timestamp (its
    integrity is the server's business). Pinned by
    tests/hub/test_pg_engine.py::test_doctor_checks_a_postgresql_store."""
    facts = DbFacts()
    try:
        conn = psycopg.connect(url, autocommit=True, connect_timeout=max(1, int(timeout_s)))
    except psycopg.Error as err:
        facts.error = f"{redact(url)}: {(str(err).strip() or type(err).__name__).splitlines()[0]}"
        return facts
    with conn:
        facts.quick_check = ["ok"]
        newest = []
        for sql in ("SELECT version FROM spokehub_schema", "SELECT ts FROM audit ORDER BY id DESC LIMIT 1",
                    "SELECT max(ts) FROM history"):
            try:
                row = conn.execute(sql).fetchone()  # type: ignore[arg-type]  # constant SQL
            except psycopg.Error:
                continue  # no such table yet: a database no hub has served
            if row and row[0] is not None:
                if sql.startswith("SELECT version"):
                    facts.version = int(row[0])
                else:
                    newest.append(float(row[0]))
        facts.newest_ts = max(newest, default=None)
    return facts
