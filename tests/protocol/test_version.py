"""One version string (protocol/version.py): package metadata, else the source tree's."""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

import pytest

from protocol import version


def test_version_is_the_installed_distributions() -> None:
    assert version.VERSION == metadata.version("spokehub")


def test_hub_and_spoke_use_it() -> None:
    import hub.app
    import spoke.service

    assert hub.app.VERSION is version.VERSION and spoke.service.VERSION is version.VERSION


def _not_installed(name: str) -> str:
    raise metadata.PackageNotFoundError(name)


def test_a_source_tree_that_is_not_installed_reads_its_pyproject(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    installed = metadata.version("spokehub")
    monkeypatch.setattr(version.metadata, "version", _not_installed)
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "spokehub"\nversion = "9.8.7"\n')
    assert version.read_version(tmp_path) == "9.8.7"
    assert version.read_version(tmp_path / "nowhere") == version.UNKNOWN
    (tmp_path / "pyproject.toml").write_text("not toml [")
    assert version.read_version(tmp_path) == version.UNKNOWN
    # this checkout's own pyproject.toml, as an uninstalled tree would find it
    assert version.read_version() == installed
