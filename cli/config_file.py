"""Defaults for ``hub serve`` and ``spoke join|run`` from ``hub.toml``, and where each
effective value came from.

One precedence for every option, documented in docs/configuration.md:

    flag on the command line  >  environment variable  >  hub.toml  >  built-in default

click already orders the first, second and last (its ``ParameterSource``); the file comes in
as click's ``default_map``, which sits exactly between the environment and the default. The
file is the hub's own ``hub.toml`` (models and alerts live there too): ``[serve]`` holds
``hub serve`` options, ``[spoke]`` those of ``spoke join`` and ``spoke run``, keys named as
the options without dashes (``public_url = "https://…"``, ``max_boxes = 40``). One table
more: ``[database] url`` is ``hub serve --database`` (:data:`TABLE_KEYS`).

Which file: ``SPOKEHUB_CONFIG`` when set; else, for ``hub`` commands, ``--config`` /
``SPOKEHUB_HUB_CONFIG`` or ``hub.toml`` in the hub's data dir (``--data-dir`` /
``SPOKEHUB_HUB_DIR`` / the default); for ``spoke`` commands, ``hub.toml`` in the hub's data
dir found the same way (on a machine that runs both, as ``hub up`` does, they share it; a
spoke-only machine sets ``SPOKEHUB_CONFIG``).

Pinned by tests/test_config_file.py.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

from client.http_client import local_hub_dir

# Which file section feeds which command, per CLI.
SECTIONS = {"hub": {"serve": "serve"}, "spoke": {"join": "spoke", "run": "spoke"}}
SECRET = {"token", "token_file"}  # never from a file
# Options that live in a table of their own: (CLI, table, key) -> (command, parameter).
TABLE_KEYS = {("hub", "database", "url"): ("serve", "database")}


class ConfigFileError(Exception):
    """The file cannot be used: one line for the operator."""


def _flag_value(args: list[str], flag: str) -> str | None:
    for index, arg in enumerate(args):
        if arg == flag and index + 1 < len(args):
            return args[index + 1]
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    return None


def config_path(kind: str, args: list[str]) -> Path:
    """The file ``hub`` (kind "hub") or ``spoke`` commands read, given their arguments."""
    explicit = os.environ.get("SPOKEHUB_CONFIG")
    if explicit:
        return Path(explicit)
    if kind == "hub":
        given = _flag_value(args, "--config") or os.environ.get("SPOKEHUB_HUB_CONFIG")
        if given:
            return Path(given)
        data_dir = _flag_value(args, "--data-dir")
        return local_hub_dir(Path(data_dir) if data_dir else None) / "hub.toml"
    return local_hub_dir() / "hub.toml"


def load(path: Path) -> dict[str, Any]:
    """The file's tables, or {} when there is no file."""
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        return {}
    except (OSError, tomllib.TOMLDecodeError) as err:
        raise ConfigFileError(f"{path}: {err}") from None


def default_map(kind: str, args: list[str], commands: dict[str, Any]) -> dict[str, Any]:
    """click's ``default_map`` for a group: ``{command: {param: value}}`` from the file's
    sections, checked against the commands' parameters so that a misspelt key is an error,
    not a setting silently ignored. The join token never comes from the file (it is a secret
    for one use: the command line, ``--token-file`` or ``SPOKEHUB_JOIN_TOKEN``)."""
    path = config_path(kind, args)
    doc = load(path)
    result: dict[str, Any] = {}
    for section in sorted(set(SECTIONS[kind].values())):
        table = doc.get(section)
        if table is None:
            continue
        if not isinstance(table, dict):
            raise ConfigFileError(f"{path}: [{section}] must be a table")
        users = [c for c, s in SECTIONS[kind].items() if s == section]
        allowed = {name: {p.name for p in commands[c].params if p.name} - SECRET for c, name
                   in ((c, c) for c in users)}
        unknown = sorted(set(table) - set().union(*allowed.values()))
        if unknown:
            raise ConfigFileError(f"{path}: unknown key(s) in [{section}]: {', '.join(unknown)} "
                                  "(keys are option names without dashes, with _ for -: "
                                  "see docs/configuration.md)")
        for command in users:
            result[command] = {k: v for k, v in table.items() if k in allowed[command]}
    _table_keys(kind, path, doc, commands, result)
    return result


def _table_keys(kind: str, path: Path, doc: dict[str, Any], commands: dict[str, Any],
                result: dict[str, Any]) -> None:
    """Fill ``result`` from the :data:`TABLE_KEYS` tables (``[database] url``), refusing
    unknown keys there too. Pinned by tests/test_config_file.py::test_database_url_from_its_own_table."""
    tables = {t for (k, t, _) in TABLE_KEYS if k == kind}
    for name in sorted(tables):
        table = doc.get(name)
        if table is None:
            continue
        if not isinstance(table, dict):
            raise ConfigFileError(f"{path}: [{name}] must be a table")
        known = {key for (k, t, key) in TABLE_KEYS if (k, t) == (kind, name)}
        unknown = sorted(set(table) - known)
        if unknown:
            raise ConfigFileError(f"{path}: unknown key(s) in [{name}]: {', '.join(unknown)} "
                                  f"(known: {', '.join(sorted(known))})")
        for key, value in table.items():
            command, param = TABLE_KEYS[(kind, name, key)]
            if command in commands:
                result.setdefault(command, {})[param] = value


def database_for(data_dir: Path, given: str | None) -> str | None:
    """The database ``hub serve`` on ``data_dir`` would use, for the commands that work on
    its store offline (``hub backup``, ``hub restore``, ``hub doctor``): ``given`` (their own
    ``--database`` / ``SPOKEHUB_DATABASE_URL``), else ``hub.toml``'s ``[database] url`` or
    ``[serve] database``; None for the data dir's ``hub.db``. Pinned by
    tests/test_backup.py::test_backup_and_restore_refuse_a_postgresql_hub."""
    if given:
        return given
    try:
        doc = load(config_path("hub", ["--data-dir", str(data_dir)]))
    except ConfigFileError:
        return None
    for table, key in (("database", "url"), ("serve", "database")):
        section = doc.get(table)
        if isinstance(section, dict) and isinstance(section.get(key), str):
            return str(section[key])
    return None
