"""The configuration reference is generated from the commands (cli/config_reference.py) and
every option of the long-running commands has an environment variable that really works."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from cli.config_reference import render
from tests.cluster import HUB

DOC = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"


def test_docs_configuration_md_is_current() -> None:
    assert DOC.read_text() == render(), (
        "docs/configuration.md is stale: python -m cli.config_reference > docs/configuration.md")


def test_every_option_has_an_environment_variable_or_a_documented_reason() -> None:
    text = render()
    rows = [line for line in text.splitlines() if line.startswith("| `")]
    without = [row.split("|")[1].strip() for row in rows if row.split("|")[3].strip() == "—"]
    # The model choice has its own variables (SPOKEHUB_MODEL_DEFAULT / _FALLBACK, agents.md).
    assert without == ["`--default-model`", "`--fallback-model`"], without
    assert "`SPOKEHUB_JOIN_TOKEN`" in text and "`SPOKEHUB_HUB_PUBLIC_URL`" in text


def test_an_environment_variable_is_read_and_a_flag_beats_it(tmp_path: Path) -> None:
    env = {**os.environ, "SPOKEHUB_HUB_HISTORY_INTERVAL": "from-env"}
    args = [HUB, "serve", "--data-dir", str(tmp_path / "hub"), "--port", "0"]
    res = subprocess.run(args, env=env, capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and "--history-interval: bad duration 'from-env'" in res.stderr
    res = subprocess.run([*args, "--history-interval", "from-flag"], env=env,
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and "bad duration 'from-flag'" in res.stderr
    assert not (tmp_path / "hub").exists(), "refused before anything was written"
