"""A spoke of another release is refused by a real hub with both versions named (issue 10):
a real ``spoke join`` process announcing a newer release exits 3 with the hub's reason, and
the join token it tried is still good for a spoke of the right release."""

from __future__ import annotations

import subprocess
from pathlib import Path

from protocol.version import VERSION
from tests.cluster import SPOKE, Hub, Spoke

# The real `spoke` CLI, announcing another release (protocol.version.VERSION is read by the
# spoke's modules when they are imported, so it is set before they are).
AS_RELEASE = ("import sys, protocol.version as v; v.VERSION = sys.argv.pop(1); "
              "from cli.spoke_cli import main; main()")


def test_a_spoke_of_a_newer_release_is_refused_naming_both(
        tmp_path: Path, hub: Hub, spokes: list[Spoke]) -> None:
    token = hub.token("later")
    python = str(Path(SPOKE).parent / "python")
    res = subprocess.run([python, "-c", AS_RELEASE, "99.0.0", "join", "--data-dir",
                          str(tmp_path / "newer"), token],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 3, (res.stdout, res.stderr)
    assert f"spoke version 99.0.0 is newer than the hub's {VERSION}" in res.stderr, res.stderr
    assert "upgrade the hub first" in res.stderr and "Traceback" not in res.stderr
    assert hub.spoke_row("later") is None

    right = Spoke(tmp_path, hub, name="later")
    spokes.append(right)
    right.join(token)  # the refused attempt did not spend the token
    assert (hub.spoke_row("later") or {}).get("version") == VERSION


# The real `spoke` CLI speaking only protocol 1 (base64 chunks in JSON), as a spoke of an
# earlier release does: protocol 2 carries chunks as binary frames (issue 14).
AS_PROTOCOL_1 = ("import protocol.messages as m; m.PROTOCOL_VERSION = 1; "
                 "m.SUPPORTED_VERSIONS = (1,); from cli.spoke_cli import main; main()")


def test_a_spoke_of_the_old_protocol_is_refused_naming_both(
        tmp_path: Path, hub: Hub, spokes: list[Spoke]) -> None:
    token = hub.token("old")
    python = str(Path(SPOKE).parent / "python")
    res = subprocess.run([python, "-c", AS_PROTOCOL_1, "join", "--data-dir",
                          str(tmp_path / "old"), token],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 3, (res.stdout, res.stderr)
    assert "no common protocol version (hub [2], spoke [1])" in res.stderr, res.stderr
    assert "upgrade one side — the spoke is the older one" in res.stderr
    assert "Traceback" not in res.stderr and hub.spoke_row("old") is None
