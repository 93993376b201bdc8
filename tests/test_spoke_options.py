"""``spoke join|run`` options (spoke/service.py SpokeOptions.from_cli, one table row each):
given ones override the saved ones, which are checked and saved again. No processes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from spoke.boxes.image import DEFAULT_IMAGE
from spoke.service import CLI_OPTIONS, OPTIONS_FILE, SpokeOptions

NOTHING: dict[str, Any] = {"allow_image": (), "max_boxes": None, "max_memory": None, "max_cpus": None,
                           "no_network": None, "labels": (), "runtime": None, "default_image": None,
                           "max_workstreams": None, "models_file": None, "allow_root": None,
                           "max_workspace": None, "max_transfers": None,
                           "drain_timeout": None, "warm": ()}


def test_every_click_option_has_a_row() -> None:
    assert sorted(row.name for row in CLI_OPTIONS) == sorted(NOTHING)
    assert all(hasattr(SpokeOptions(Path(".")), row.field) for row in CLI_OPTIONS)


def test_defaults(tmp_path: Path) -> None:
    options = SpokeOptions.from_cli(tmp_path, dict(NOTHING))
    assert options.allow_images == [DEFAULT_IMAGE]
    assert (options.max_boxes, options.max_memory_bytes, options.max_cpus) == (20, 4 * 1024**3, 2.0)
    assert (options.allow_network, options.labels, options.runtime) == (True, [], None)
    assert (options.default_image, options.max_workstreams, options.models_file) == (None, 4, None)
    saved = json.loads((tmp_path / OPTIONS_FILE).read_text())
    assert saved["allow_images"] == [DEFAULT_IMAGE] and "data_dir" not in saved


def test_given_options_override_saved_ones(tmp_path: Path) -> None:
    models = tmp_path / "models.toml"
    models.write_text("")
    first = SpokeOptions.from_cli(tmp_path, {
        **NOTHING, "allow_image": ("a:1", "b:2"), "max_boxes": 3, "max_memory": "512m", "max_cpus": 0.5,
        "no_network": True, "labels": ("gpu", "eu-west.1"), "runtime": "runsc",
        "default_image": "b:2", "max_workstreams": 0, "models_file": str(models)})
    assert first.allow_images == ["a:1", "b:2"] and first.max_memory_bytes == 512 * 1024**2
    assert (first.max_boxes, first.max_cpus, first.allow_network) == (3, 0.5, False)
    assert (first.labels, first.runtime, first.default_image) == (["gpu", "eu-west.1"], "runsc", "b:2")
    assert first.max_workstreams == 0  # a number counts even when 0
    assert first.models_file == str(models.resolve())
    again = SpokeOptions.from_cli(tmp_path, dict(NOTHING))  # `spoke run` with no options
    assert again == first
    changed = SpokeOptions.from_cli(tmp_path, {**NOTHING, "max_boxes": 7, "labels": ("cpu",)})
    assert (changed.max_boxes, changed.labels, changed.allow_images) == (7, ["cpu"], ["a:1", "b:2"])


@pytest.mark.parametrize(("opts", "message"), [
    ({"default_image": "other:1"}, "--default-image other:1 is not among the allowed images"),
    ({"labels": ("ok", "Bad Label")}, "bad label 'Bad Label'"),
    ({"max_memory": "lots"}, "bad size 'lots' (use e.g. 512m, 2g)"),
    ({"default_image": "other:1", "labels": ("Bad",)}, "--default-image other:1 is not among"),
])
def test_errors(tmp_path: Path, opts: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError) as caught:
        SpokeOptions.from_cli(tmp_path, {**NOTHING, **opts})
    assert str(caught.value).startswith(message)
    assert not (tmp_path / OPTIONS_FILE).exists()  # nothing saved


def test_saved_values_are_checked_too(tmp_path: Path) -> None:
    (tmp_path / OPTIONS_FILE).write_text(json.dumps({"labels": ["NOPE"]}))
    with pytest.raises(ValueError, match="bad label 'NOPE'"):
        SpokeOptions.from_cli(tmp_path, dict(NOTHING))


def test_root_and_workspace_options_reach_the_policy(tmp_path: Path) -> None:
    """``--allow-root`` and ``--max-workspace`` (issue 8 items 2 and 7) land in the policy the
    hub cannot override, and are kept for ``spoke run``."""
    default = SpokeOptions.from_cli(tmp_path, dict(NOTHING)).policy()
    assert (default.allow_root, default.max_workspace_bytes) == (False, 10 * 1024**3)
    given = SpokeOptions.from_cli(tmp_path, {**NOTHING, "allow_root": True,
                                             "max_workspace": "2g"})
    assert (given.policy().allow_root, given.policy().max_workspace_bytes) == (True, 2 * 1024**3)
    again = SpokeOptions.from_cli(tmp_path, dict(NOTHING))
    assert (again.allow_root, again.max_workspace_bytes) == (True, 2 * 1024**3)
    with pytest.raises(ValueError, match="max-workspace"):
        SpokeOptions.from_cli(tmp_path, {**NOTHING, "max_workspace": "1m"})


def test_max_transfers_reaches_the_policy(tmp_path: Path) -> None:
    assert SpokeOptions.from_cli(tmp_path, dict(NOTHING)).policy().max_transfers == 8
    given = SpokeOptions.from_cli(tmp_path, {**NOTHING, "max_transfers": 2})
    assert given.policy().max_transfers == 2
    assert SpokeOptions.from_cli(tmp_path, dict(NOTHING)).max_transfers == 2, "kept for spoke run"
