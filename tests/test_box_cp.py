"""``hub box cp`` on a real hub, spoke and Docker box: the first-hour cases of issue 15.

Directories on either side, relative box paths (the box's working directory), ``-p`` for
missing parents, and one-line errors that leave nothing behind.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.cluster import Hub, Spoke

IMAGE = "spokehub-sandbox:bookworm"


@pytest.fixture
def box(hub: Hub, spoke: Spoke) -> str:
    return str(hub.cli_json("box", "create", "--spoke", spoke.name, "--image", IMAGE)["id"])


@pytest.fixture
def notes(tmp_path: Path) -> Path:
    path = tmp_path / "notes.txt"
    path.write_text("first hour\n")
    return path


def _box_sh(hub: Hub, box: str, script: str) -> str:
    res = hub.cli("box", "exec", box, "--", "sh", "-c", script)
    assert res.returncode == 0, res.stderr
    return res.stdout


def _one_error_line(res: object, needle: str) -> None:
    stderr = getattr(res, "stderr", "")
    assert getattr(res, "returncode", None) == 2, stderr
    assert stderr.startswith("error: ") and stderr.count("\n") == 1, stderr
    assert "Traceback" not in stderr and needle in stderr, stderr


def test_download_into_a_missing_local_directory(hub: Hub, box: str, notes: Path,
                                                 tmp_path: Path) -> None:
    hub.cli("box", "cp", str(notes), f"{box}:/workspace/notes.txt", check=True)
    target = tmp_path / "nodir" / "x.txt"
    res = hub.cli("box", "cp", f"{box}:/workspace/notes.txt", str(target))
    _one_error_line(res, "nodir")
    assert not (tmp_path / "nodir").exists()
    # A failed fetch with -p leaves no directories behind either.
    missing = hub.cli("box", "cp", "-p", f"{box}:/workspace/nope", str(tmp_path / "a" / "b"))
    assert missing.returncode == 2 and "not_found" in missing.stderr
    assert not (tmp_path / "a").exists()
    res = hub.cli("box", "cp", "--parents", f"{box}:/workspace/notes.txt", str(target))
    assert res.returncode == 0, res.stderr
    assert target.read_text() == "first hour\n"
    assert sorted(p.name for p in target.parent.iterdir()) == ["x.txt"]
    # A local directory receives the file under its own name, like docker cp.
    res = hub.cli("box", "cp", f"{box}:notes.txt", str(tmp_path / "nodir"))
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "nodir" / "notes.txt").read_text() == "first hour\n"
    trailing = hub.cli("box", "cp", f"{box}:notes.txt", str(tmp_path / "newdir") + "/")
    _one_error_line(trailing, "newdir")
    assert not (tmp_path / "newdir").exists()
    res = hub.cli("box", "cp", "-p", f"{box}:notes.txt", str(tmp_path / "newdir") + "/")
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "newdir" / "notes.txt").read_text() == "first hour\n"


def test_upload_into_a_box_directory(hub: Hub, box: str, notes: Path) -> None:
    for dst in (f"{box}:/workspace/", f"{box}:/workspace"):
        res = hub.cli("box", "cp", str(notes), dst)
        assert res.returncode == 0, res.stderr
        assert f"to {box}:/workspace/notes.txt" in res.stderr
        assert _box_sh(hub, box, "cat /workspace/notes.txt") == "first hour\n"
        _box_sh(hub, box, "rm /workspace/notes.txt")
    as_json = hub.cli_json("box", "cp", str(notes), f"{box}:/workspace/")
    assert as_json == {"size": 11, "path": "/workspace/notes.txt"}
    missing_dir = hub.cli("box", "cp", str(notes), f"{box}:/workspace/sub/")
    _one_error_line(missing_dir, "/workspace/sub")
    assert "read-only" not in missing_dir.stderr
    res = hub.cli("box", "cp", "-p", str(notes), f"{box}:/workspace/sub/")
    assert res.returncode == 0, res.stderr
    assert _box_sh(hub, box, "cat /workspace/sub/notes.txt") == "first hour\n"


def test_relative_box_paths_mean_the_working_directory(hub: Hub, box: str, notes: Path,
                                                       tmp_path: Path) -> None:
    res = hub.cli("box", "cp", str(notes), f"{box}:notes.txt")
    assert res.returncode == 0, res.stderr
    assert f"to {box}:/workspace/notes.txt" in res.stderr
    assert _box_sh(hub, box, "cat /workspace/notes.txt") == "first hour\n"
    no_parent = hub.cli("box", "cp", str(notes), f"{box}:sub/x.txt")
    _one_error_line(no_parent, "does not exist")
    res = hub.cli("box", "cp", "-p", str(notes), f"{box}:sub/x.txt")
    assert res.returncode == 0, res.stderr
    assert f"to {box}:/workspace/sub/x.txt" in res.stderr
    res = hub.cli("box", "cp", f"{box}:sub/x.txt", str(tmp_path / "back.txt"))
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "back.txt").read_text() == "first hour\n"
    res = hub.cli("box", "cp", str(notes), f"{box}:")  # the working directory itself
    assert res.returncode == 0 and f"to {box}:/workspace/notes.txt" in res.stderr, res.stderr
    escape = hub.cli("box", "cp", str(notes), f"{box}:../etc/x")
    assert escape.returncode == 2 and ".." in escape.stderr


def test_parents_in_the_box_belong_to_the_box_user(hub: Hub, box: str, notes: Path) -> None:
    res = hub.cli("box", "cp", "-p", str(notes), f"{box}:/workspace/a/b/c.txt")
    assert res.returncode == 0, res.stderr
    out = _box_sh(hub, box, "id -u; stat -c %u /workspace/a /workspace/a/b /workspace/a/b/c.txt;"
                  " touch /workspace/a/b/more && echo writable")
    uid, *owners, last = out.split()
    assert owners == [uid, uid, uid] and last == "writable"


def test_usage_errors_are_one_line(hub: Hub, box: str, notes: Path, tmp_path: Path) -> None:
    both_local = hub.cli("box", "cp", str(notes), str(tmp_path / "y"))
    _one_error_line(both_local, "exactly one")
    bad_id = hub.cli("box", "cp", str(notes), "bx_nope:/workspace/x")
    assert bad_id.returncode == 2 and "not a box id" in bad_id.stderr
    is_dir = hub.cli("box", "cp", f"{box}:/workspace", str(tmp_path / "w"))
    assert is_dir.returncode == 2 and "directory" in is_dir.stderr
    assert not (tmp_path / "w").exists() and not (tmp_path / "w.part").exists()


def test_the_fast_path_and_click_copy_alike(hub: Hub, box: str, notes: Path,
                                            tmp_path: Path) -> None:
    """``hub box cp SRC DST`` runs without click (cli/hub_cli.py); ``hub box cp -- SRC DST``
    goes through click's command (the fast path leaves ``--`` to it). Both copy with the
    same code, so their results, messages and JSON must be the same."""
    runs = {}
    for how, sep in (("fast", []), ("click", ["--"])):
        up = hub.cli("box", "cp", *sep, str(notes), f"{box}:/workspace/{how}.txt")
        down = hub.cli("box", "cp", "--json", *sep, f"{box}:/workspace/{how}.txt",
                       str(tmp_path / f"{how}.back"))
        refused = hub.cli("box", "cp", *sep, str(notes), str(tmp_path / "both-local"))
        assert up.returncode == down.returncode == 0, (up.stderr, down.stderr)
        assert (tmp_path / f"{how}.back").read_text() == "first hour\n"
        runs[how] = (up.stderr.replace(how, "X"), json.loads(down.stdout)["size"],
                     refused.returncode, refused.stderr)
    assert runs["fast"] == runs["click"]
    assert runs["fast"][0] == f"copied 11 bytes to {box}:/workspace/X.txt\n"
    assert runs["fast"][2:] == (2, "error: exactly one of SRC and DST must name a box as "
                                   "BOX:PATH\n")
