"""Which database a hub uses (``hub serve --database``), and how its URL is shown.

One spelling for every place that takes a database (``hub serve --database``,
``SPOKEHUB_DATABASE_URL``, ``[database] url`` in ``hub.toml``, ``hub migrate-store``):

- nothing (``None`` or ``""``): SQLite at ``DATA_DIR/hub.db``, the default;
- ``sqlite:PATH``: SQLite at ``PATH`` (``sqlite:///abs/path`` also works);
- ``postgresql://…`` or ``postgres://…``: PostgreSQL (a libpq URL).

A URL's password is never printed or logged: :func:`redact` shows ``***`` in its place.
Pinned by tests/hub/test_pg_engine.py::test_database_choices_and_bad_ones and
::test_urls_are_shown_without_their_password.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

PG_SCHEMES = ("postgresql://", "postgres://")


class DatabaseUnreachable(RuntimeError):
    """The database cannot be reached, or refused us, at open: one line for the operator,
    the URL's password hidden (raised by :mod:`hub.store.pg_engine`; here so the CLI can
    catch it without importing psycopg). Pinned by
    tests/hub/test_pg_engine.py::test_an_unreachable_database_is_one_clear_error."""


@dataclass(frozen=True)
class Database:
    """A parsed ``--database``: ``kind`` ``sqlite`` (with ``path``) or ``postgresql`` (with
    ``url``)."""

    kind: str
    path: Path | None = None
    url: str = ""

    def shown(self) -> str:
        """How to name it in logs and messages (no password)."""
        return str(self.path) if self.kind == "sqlite" else redact(self.url)


def parse_database(database: str | None, data_dir: Path) -> Database:
    """``database`` as a :class:`Database`; ValueError (naming the accepted forms) for
    anything else."""
    text = (database or "").strip()
    if not text:
        return Database("sqlite", path=data_dir / "hub.db")
    if text.startswith(PG_SCHEMES):
        if not urlsplit(text).hostname and "host=" not in text:
            raise ValueError(f"database URL {redact(text)} names no host "
                             "(postgresql://USER:PASSWORD@HOST:5432/DB)")
        return Database("postgresql", url=text)
    if text.startswith("sqlite:"):
        rest = text[len("sqlite:"):]
        if rest.startswith("//"):
            rest = rest[2:]
        if not rest:
            raise ValueError("sqlite: needs a path, e.g. sqlite:/var/lib/spokehub/hub.db")
        return Database("sqlite", path=Path(rest).expanduser())
    raise ValueError(f"unknown database {redact(text)!r}: use postgresql://USER:PASSWORD@HOST/DB, "
                     "sqlite:PATH, or nothing for DATA_DIR/hub.db")


_PASSWORD_PARAM = re.compile(r"(password=)[^&\s]*", re.I)


def redact(url: str) -> str:
    """``url`` with its password (in the authority or a ``password=`` parameter) as ``***``."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return _PASSWORD_PARAM.sub(r"\1***", re.sub(r"//[^@/]*@", "//***@", url))
    netloc = parts.netloc
    if "@" in netloc:
        creds, host = netloc.rsplit("@", 1)
        if ":" in creds:
            creds = creds.split(":", 1)[0] + ":***"
        netloc = f"{creds}@{host}"
    shown = urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
    return _PASSWORD_PARAM.sub(r"\1***", shown)
