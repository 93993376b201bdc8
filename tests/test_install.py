"""``make up``'s install step on a stock Debian interpreter (issue 15, item 0).

Debian 12's ``/usr/bin/python3`` refuses ``pip install`` (PEP 668: externally managed), so the
install goes into a project virtualenv made from it; the system interpreter is left alone, the
run install carries only what the hub and spoke need (no test tools, no browser driver), and a
second run with nothing changed installs nothing.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SYSTEM_PYTHON = Path("/usr/bin/python3")


def _install(venv: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHON": str(SYSTEM_PYTHON), "VENV": str(venv)}
    env.pop("VIRTUAL_ENV", None)
    return subprocess.run(["bash", str(ROOT / "deploy" / "install-deps.sh")], capture_output=True,
                          text=True, env=env, timeout=900)


def test_install_makes_a_virtualenv_from_the_system_python(tmp_path: Path) -> None:
    if not SYSTEM_PYTHON.exists():
        pytest.skip("!!! SKIPPING: this machine has no /usr/bin/python3 (not a Debian-like system)")
    venv = tmp_path / "venv"
    first = _install(venv)
    assert first.returncode == 0, first.stdout + first.stderr
    assert f"==> creating the virtualenv {venv}" in first.stdout
    assert "==> installing spokehub and its dependencies" in first.stdout
    assert "externally-managed-environment" not in first.stdout + first.stderr
    assert Path(os.path.realpath(venv / "bin" / "python")).parent == Path("/usr/bin")
    for script in ("hub", "spoke"):
        res = subprocess.run([str(venv / "bin" / script), "--help"], capture_output=True, text=True,
                             timeout=60)
        assert res.returncode == 0 and "Usage:" in res.stdout, res.stderr
    # Only what the hub and spoke need: the test tools come with `make test`.
    probe = subprocess.run([str(venv / "bin" / "python"), "-c", "import playwright"],
                           capture_output=True, text=True, cwd="/")
    assert probe.returncode != 0
    # The system interpreter got nothing.
    system = subprocess.run([str(SYSTEM_PYTHON), "-m", "pip", "show", "spokehub"],
                            capture_output=True, text=True, cwd="/")
    assert system.returncode != 0
    again = _install(venv)
    assert again.returncode == 0 and "==> installing" not in again.stdout, again.stdout
