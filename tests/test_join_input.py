"""How ``spoke join`` takes its token (issue 8, items 9 and 11): from a file or standard input
so it never shows in ``ps``; a pinned token with an ``http://`` URL refused; a plain-HTTP hub
joined only with ``--insecure-http``. Real hub and spoke processes.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from protocol.tokens import JoinToken
from tests.cluster import SPOKE, Hub, Proc, Spoke, wait_until


def _join(data_dir: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([SPOKE, "join", "--data-dir", str(data_dir), *args], input=stdin,
                          capture_output=True, text=True, timeout=60)


def _cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()


def test_the_token_from_stdin_or_a_file_never_shows_in_ps(tmp_path: Path, hub: Hub,
                                                           spokes: list[Spoke]) -> None:
    token = hub.token("quiet")
    secret = JoinToken.decode(token).secret
    proc = subprocess.Popen([SPOKE, "join", "--data-dir", str(tmp_path / "quiet"), "--token-file", "-"],
                            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, text=True)
    assert proc.stdin is not None
    proc.stdin.write(token + "\n")
    proc.stdin.close()
    try:
        wait_until(lambda: hub.connected("quiet"), what="the spoke joined from stdin")
        assert secret not in _cmdline(proc.pid) and token not in _cmdline(proc.pid)
    finally:
        proc.terminate()
        proc.wait(30)

    saved = tmp_path / "token.txt"
    saved.write_text(hub.token("filed") + "\n")
    filed = Spoke(tmp_path, hub, name="filed", extra=["--token-file", str(saved)])
    spokes.append(filed)
    filed.proc = Proc([SPOKE, "join", "--data-dir", str(filed.dir), *filed.extra],
                      tmp_path / "filed.log")
    filed.wait_connected()


def test_token_arguments_are_checked_before_anything_happens(tmp_path: Path, hub: Hub) -> None:
    token = hub.token("either")
    both = _join(tmp_path / "a", token, "--token-file", "-", stdin=token)
    assert both.returncode == 2 and "not both" in both.stderr
    neither = _join(tmp_path / "b")
    assert neither.returncode == 2 and "no join token" in neither.stderr
    empty = _join(tmp_path / "c", "--token-file", "-", stdin="\n")
    assert empty.returncode == 2 and "no join token" in empty.stderr
    assert not (tmp_path / "a").exists() and not (tmp_path / "c").exists()
    assert "Traceback" not in both.stderr + neither.stderr + empty.stderr


def test_a_pinned_token_for_a_plain_http_url_is_refused(tmp_path: Path, hub: Hub) -> None:
    good = JoinToken.decode(hub.token("edited"))
    edited = JoinToken(good.url.replace("https://", "http://"), good.pin, good.token_id,
                       good.secret, good.name).encode()
    refused = _join(tmp_path / "edited", edited)
    assert refused.returncode == 2
    assert "certificate pin but a plain http:// hub URL: refusing to send its secret in clear" \
        in refused.stderr
    assert hub.client().request("GET", "/api/tokens")[0]["state"] == "valid", "nothing was sent"


def test_a_plain_http_hub_is_joined_only_when_asked(tmp_path: Path, spokes: list[Spoke],
                                                    sandbox_image: str) -> None:
    hub = Hub(tmp_path)
    hub.extra = ["--insecure-http"]
    hub.start()
    try:
        token = hub.token("plain")
        assert JoinToken.decode(token).url.startswith("http://")
        refused = _join(tmp_path / "plain", token)
        assert refused.returncode == 2 and "add --insecure-http" in refused.stderr
        assert "unencrypted" in refused.stderr
        spoke = Spoke(tmp_path, hub, name="plain", extra=["--insecure-http"])
        spokes.append(spoke)
        spoke.join(token)
    finally:
        hub.stop()
