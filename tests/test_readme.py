"""The README, followed as written (issue 15, "done means"): so it cannot drift from the code.

``make up`` is ``make install`` (tests/test_install.py covers it) and then ``hub up``, which runs
here for real on a free port, with the scripted LLM behind the hub's models. Its printed usage
must be the README's sample. Then every ``sh`` block after the two commands runs, in order, in
one bash session with ``set -euo pipefail`` (a failing command fails the test), and the
``python`` block with the project's interpreter. The ``toml`` block must be a model
configuration the hub accepts. A second machine is a second spoke joining with the token the
README's ``hub token create`` printed. The cluster is stopped with the README's own
``hub down``; nothing along the way may print a traceback.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import docker

from hub import model_config
from tests.cluster import free_port, wait_until
from tests.llm_server import Call, Echo
from tests.ws_helpers import ThreadedLLM, write_hub_models

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
BLOCK_RE = re.compile(r"^```(\w+)\n(.*?)^```$", re.M | re.S)


def _blocks(kind: str) -> list[str]:
    return [body for lang, body in BLOCK_RE.findall((ROOT / "README.md").read_text()) if lang == kind]


def _env(data_home: Path) -> dict[str, str]:
    """A user's shell: default data dirs (under a private XDG_DATA_HOME), and a PATH without
    the project's commands until the README's own `export PATH=…` puts them there."""
    path = [p for p in os.environ["PATH"].split(os.pathsep) if Path(p) != VENV_BIN]
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPOKEHUB_")}
    return {**env, "XDG_DATA_HOME": str(data_home), "PATH": os.pathsep.join(path)}


def test_the_model_config_in_the_readme_is_accepted(tmp_path: Path) -> None:
    (toml,) = _blocks("toml")
    tomllib.loads(toml)
    (tmp_path / "hub.toml").write_text(toml)
    config = model_config.load(tmp_path / "hub.toml", env={})
    assert config.default == "local" and config.fallback == ("claude",)


def test_following_the_readme(tmp_path: Path, sandbox_image: str, llm: ThreadedLLM) -> None:
    data_home, work = tmp_path / "data", tmp_path / "work"
    work.mkdir()
    (work / ".venv").symlink_to(VENV_BIN.parent)  # "from this directory": a clone with its .venv
    env = _env(data_home)
    hub_dir = data_home / "spokehub" / "hub"
    write_hub_models(hub_dir, llm)
    llm.script("default", [
        Call("bash", {"command": "cat > fizzbuzz.py <<'EOF'\nfor i in range(1, 31):\n"
                                 "    print('FizzBuzz' if i % 15 == 0 else i)\nEOF\n"
                                 "python3 fizzbuzz.py | sed -n 15p"}),
        Echo("line 15 is {last_tool_result}"),
    ])
    port = free_port()
    up_log = tmp_path / "up.log"
    with up_log.open("wb") as log:
        up = subprocess.Popen([str(VENV_BIN / "hub"), "up", "--port", str(port)], cwd=work, env=env,
                              stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    laptop: subprocess.Popen[bytes] | None = None
    try:
        wait_until(lambda: "spokehub is up" in up_log.read_text() or up.poll() is not None,
                   timeout=180, what="hub up")
        printed = up_log.read_text()
        assert up.poll() is None, printed
        (readme_sample,) = _blocks("text")
        shown = (printed[printed.index("spokehub is up"):]
                 .replace(f"https://127.0.0.1:{port}", "https://127.0.0.1:8443")
                 .replace(str(data_home), "~/.local/share")
                 .replace(str(VENV_BIN), "$PWD/.venv/bin"))
        assert shown.startswith(readme_sample), f"README sample:\n{readme_sample}\nprinted:\n{shown}"

        make_block, *blocks = _blocks("sh")
        assert "make up" in make_block and "make test" in make_block
        script = "set -euo pipefail\n" + "\n".join(b for b in blocks if "hub down" not in b)
        ran = subprocess.run(["bash", "-c", script], cwd=work, env=env, capture_output=True,
                             text=True, timeout=600)
        assert ran.returncode == 0, f"stdout:\n{ran.stdout}\nstderr:\n{ran.stderr}"
        assert "hello from " in ran.stdout and "some notes" in ran.stdout
        assert (work / "copy.txt").read_text() == "some notes\n"
        assert "line 15 is FizzBuzz" in ran.stdout, ran.stdout
        assert "Traceback" not in ran.stdout + ran.stderr

        (python_block,) = _blocks("python")
        py = subprocess.run([sys.executable, "-c", python_block], cwd=work, env=env,
                            capture_output=True, text=True, timeout=300)
        assert py.returncode == 0 and "line 15 is" in py.stdout, py.stdout + py.stderr

        # The laptop: a second spoke joins with the token the README's command printed.
        token = re.findall(r"^(shj1\.\S+)$", ran.stdout, re.M)[-1]
        laptop = subprocess.Popen([str(VENV_BIN / "spoke"), "join", "--data-dir",
                                   str(tmp_path / "laptop"), token], env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        hub_cli = [str(VENV_BIN / "hub"), "spoke", "list", "--json"]

        def laptop_connected() -> bool:
            listed = subprocess.run(hub_cli, env=env, capture_output=True, text=True, timeout=60)
            return '"name": "laptop"' in listed.stdout and '"connected": true' in listed.stdout

        wait_until(laptop_connected, what="the laptop spoke")

        (stop_block,) = [b for b in blocks if "hub down" in b]
        stopped = subprocess.run(["bash", "-c", f'export PATH="$PWD/.venv/bin:$PATH"\n{stop_block}'],
                                 cwd=work, env=env, capture_output=True, text=True, timeout=300)
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr
        assert up.wait(60) == 0
        everything = up_log.read_text() + stopped.stdout + stopped.stderr
        assert "Traceback" not in everything, everything
    finally:
        for proc in (laptop, up):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                proc.wait(30)
        client = docker.from_env()
        for name in ("local", "laptop"):
            for c in client.containers.list(all=True, filters={"label": f"spokehub.spoke={name}"}):
                c.remove(force=True)
            for v in client.volumes.list(filters={"label": f"spokehub.spoke={name}"}):
                v.remove(force=True)
