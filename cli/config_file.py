"""Defaults for ``hub serve`` and ``spoke join|run`` from ``hub.toml``, and where each
effective value came from.

One precedence for every option, documented in docs/configuration.md:

    flag on the command line  >  environment variable  >  hub.toml  >  built-in default

click already orders the first, second and last (its ``ParameterSource``); the file comes in
as click's ``default_map``, which sits exactly between the environment and the default. The
file is the hub's own ``hub.toml`` (models and alerts live there too): ``[serve]`` holds
``hub serve`` options, ``[spoke]`` those of ``spoke join`` and ``spoke run``, keys named as
the options without dashes (``public_url = "https://…"``, ``max_boxes = 40``).

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
    return result
