"""Helpers of the in-box supervisor (spoke/boxes/inbox/supervisor.py): a JSON codec for
pythons without the json module (Debian's python3-minimal), the process-tree kill, the
environment ``docker exec`` would give, terminal ioctls and shell-like start failures.

Stdlib only, Python 3.7+, like the supervisor: spoke/boxes/agent_boxes.py
``supervisor_source()`` puts this file's text in place of the supervisor's import of it, so
the box receives one script. Pinned by tests/boxes/test_exec_agent.py.
"""

from __future__ import annotations

import fcntl
import os
import re
import signal
import struct
import subprocess

try:  # Debian's python3-minimal (the sandbox image) has neither
    import json
except ImportError:  # pragma: no cover - exercised in the sandbox image
    json = None  # type: ignore[assignment]
try:
    import termios
    TIOCSWINSZ, TIOCSCTTY = termios.TIOCSWINSZ, termios.TIOCSCTTY
except ImportError:  # pragma: no cover - Linux's generic values
    TIOCSWINSZ, TIOCSCTTY = 0x5414, 0x540E

_ESC = {'"': '"', "\\": "\\", "/": "/", "b": "\b", "f": "\f", "n": "\n", "r": "\r",
        "t": "\t"}


def dumps(obj: object) -> str:
    """JSON text of ``obj`` (dict, list, str, int, bool, None), without the json module."""
    if json is not None:
        return json.dumps(obj)
    if obj is None:
        return "null"
    if obj is True or obj is False:
        return "true" if obj else "false"
    if isinstance(obj, int):
        return str(obj)
    if isinstance(obj, str):
        return '"' + "".join(_esc(c) for c in obj) + '"'
    if isinstance(obj, dict):
        return "{" + ",".join(dumps(str(k)) + ":" + dumps(v) for k, v in obj.items()) + "}"
    if isinstance(obj, (list, tuple)):
        return "[" + ",".join(dumps(v) for v in obj) + "]"
    raise ValueError(f"cannot encode {type(obj)!r}")


def _esc(c: str) -> str:
    n = ord(c)
    if 32 <= n < 127 and c not in '"\\':
        return c
    if n < 0x10000:
        return f"\\u{n:04x}"
    return f"\\u{0xD7C0 + (n >> 10):04x}\\u{0xDC00 + (n & 0x3FF):04x}"


def loads(text: str) -> object:
    """Parse JSON text (the subset the spoke sends), without the json module."""
    if json is not None:
        return json.loads(text)
    value, end = _parse(text, _skip(text, 0))
    if _skip(text, end) != len(text):
        raise ValueError("extra data after JSON value")
    return value


def _skip(s: str, i: int) -> int:
    while i < len(s) and s[i] in " \t\r\n":
        i += 1
    return i


def _parse(s: str, i: int) -> tuple[object, int]:
    if i >= len(s):
        raise ValueError("truncated JSON")
    c = s[i]
    if c == "{":
        out: dict[str, object] = {}
        i = _skip(s, i + 1)
        if s[i:i + 1] == "}":
            return out, i + 1
        while True:
            key, i = _parse(s, _skip(s, i))
            if not isinstance(key, str) or s[_skip(s, i):_skip(s, i) + 1] != ":":
                raise ValueError("bad JSON object")
            out[key], i = _parse(s, _skip(s, _skip(s, i) + 1))
            i = _skip(s, i)
            if s[i:i + 1] == "}":
                return out, i + 1
            if s[i:i + 1] != ",":
                raise ValueError("bad JSON object")
            i += 1
    if c == "[":
        items: list[object] = []
        i = _skip(s, i + 1)
        if s[i:i + 1] == "]":
            return items, i + 1
        while True:
            item, i = _parse(s, _skip(s, i))
            items.append(item)
            i = _skip(s, i)
            if s[i:i + 1] == "]":
                return items, i + 1
            if s[i:i + 1] != ",":
                raise ValueError("bad JSON array")
            i += 1
    if c == '"':
        parts: list[str] = []
        i += 1
        while True:
            j = i
            while j < len(s) and s[j] not in '"\\':
                j += 1
            parts.append(s[i:j])
            if j >= len(s):
                raise ValueError("unterminated JSON string")
            if s[j] == '"':
                text = "".join(parts)
                return text.encode("utf-16", "surrogatepass").decode("utf-16"), j + 1
            esc = s[j + 1:j + 2]
            if esc == "u":
                parts.append(chr(int(s[j + 2:j + 6], 16)))
                i = j + 6
            elif esc in _ESC:
                parts.append(_ESC[esc])
                i = j + 2
            else:
                raise ValueError("bad JSON escape")
    for word, value in (("true", True), ("false", False), ("null", None)):
        if s.startswith(word, i):
            return value, i + len(word)
    m = re.compile(r"-?\d+").match(s, i)
    if m is None:
        raise ValueError(f"bad JSON value at {i}")
    return int(m.group()), m.end()


def proc_tree(top: int) -> list[int]:
    """``top`` and every process in its session or process group or descended from one of
    them, each stopped (SIGSTOP) as found so nothing forks behind our back."""
    found = [top]
    seen = {top}
    me = os.getpid()
    try:
        os.kill(top, signal.SIGSTOP)
    except OSError:
        pass
    changed, rounds = True, 0
    while changed and rounds < 50:
        changed, rounds = False, rounds + 1
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            pid = int(name)
            if pid in seen or pid == me:
                continue
            try:
                with open(f"/proc/{pid}/stat") as fh:
                    rest = fh.read().rsplit(") ", 1)[1].split()
                ppid, pgrp, sid = int(rest[1]), int(rest[2]), int(rest[3])
            except (OSError, IndexError, ValueError):
                continue
            if sid == top or pgrp == top or ppid in seen:
                try:
                    os.kill(pid, signal.SIGSTOP)
                except OSError:
                    continue
                found.append(pid)
                seen.add(pid)
                changed = True
    return found


def kill_tree(top: int) -> None:
    for pid in proc_tree(top):
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


def base_env() -> dict[str, str]:
    """The environment the box gave us, as ``docker exec`` gives it to a command: read back
    from /proc (Python's locale coercion adds LC_CTYPE to ``os.environ``)."""
    try:
        with open("/proc/self/environ", "rb") as fh:
            raw = fh.read()
    except OSError:
        return dict(os.environ)
    env = {}
    for item in raw.split(b"\0"):
        key, sep, value = item.partition(b"=")
        if sep and key:
            env[os.fsdecode(key)] = os.fsdecode(value)
    return env


def obj(payload: bytes) -> dict:  # type: ignore[type-arg]
    value = loads(payload.decode("utf-8"))
    if not isinstance(value, dict):
        raise ValueError("a JSON object was expected")
    return value


def set_winsize(fd: int, rows: int, cols: int) -> None:
    rows, cols = max(1, min(rows, 10000)), max(1, min(cols, 10000))
    fcntl.ioctl(fd, TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def take_ctty() -> None:
    fcntl.ioctl(0, TIOCSCTTY, 0)


def spawn(kind: str, argv: list[str], env: dict[str, str], cwd: str | None,
          req: dict) -> tuple[subprocess.Popen, int]:  # type: ignore[type-arg]
    """Start a channel's child in a session of its own: on a new PTY (``pty``: returns the
    master, the slave closed here) or with pipes (``exec``: stdin piped only if asked; master
    -1). On OSError nothing is left open."""
    master = slave = -1
    try:
        if kind == "pty":
            master, slave = os.openpty()
            set_winsize(master, int(req.get("rows") or 24), int(req.get("cols") or 80))
            proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, env=env,
                                    cwd=cwd, start_new_session=True, close_fds=True,
                                    preexec_fn=take_ctty)
            os.close(slave)
            return proc, master
        stdin = subprocess.PIPE if req.get("stdin") else subprocess.DEVNULL
        proc = subprocess.Popen(argv, stdin=stdin, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, env=env, cwd=cwd,
                                start_new_session=True, close_fds=True)
        return proc, -1
    except OSError:
        for fd in (master, slave):
            if fd >= 0:
                os.close(fd)
        raise


def start_failure(exc: OSError, prog: str, cwd: str | None) -> tuple[int, str]:
    """Exit code and message of a command that could not start, as a shell says them
    (``docker exec`` runs ours through ``sh -c``: 127 not found, 126 not runnable)."""
    if cwd and getattr(exc, "filename", None) == cwd:
        return 126, f"cannot change directory to {cwd}: {exc.strerror}\n"
    if isinstance(exc, FileNotFoundError):
        return 127, f"sh: 1: exec: {prog}: not found\n"
    return 126, f"sh: 1: exec: {prog}: {exc.strerror or exc}\n"
