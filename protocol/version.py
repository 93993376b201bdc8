"""spokehub's version, read once from the installed package's metadata.

``pyproject.toml`` is the single place the version is written; the hub (``/api/info``, the
spoke handshake), the spoke (its handshake and ``spoke.info``) and the MCP front-ends all
import :data:`VERSION` from here, so they cannot disagree. A source tree that is not
installed (no ``spokehub`` distribution) reads the ``pyproject.toml`` beside this package
instead, and says ``0+unknown`` if there is none.

Pinned by ``tests/protocol/test_version.py``.
"""

from __future__ import annotations

import tomllib
from importlib import metadata
from pathlib import Path

DISTRIBUTION = "spokehub"
UNKNOWN = "0+unknown"


def _from_source_tree(root: Path) -> str:
    """The ``[project] version`` of ``root/pyproject.toml``, or :data:`UNKNOWN`."""
    try:
        doc = tomllib.loads((root / "pyproject.toml").read_text())
    except (OSError, ValueError):
        return UNKNOWN
    version = doc.get("project", {}).get("version")
    return version if isinstance(version, str) and version else UNKNOWN


def read_version(root: Path | None = None) -> str:
    """The installed distribution's version, else the source tree's (``root`` defaults to
    the directory holding this package)."""
    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return _from_source_tree(root or Path(__file__).resolve().parents[1])


VERSION = read_version()
