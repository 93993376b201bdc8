"""Built-in tools. Everything runs inside the workstream's box, never on the spoke itself.

Tools talk to a :class:`Sandbox` (three operations: run a command, write a file, read a file)
rather than to the box manager directly, so the lead can put policy, accounting or a remote
box behind it; :class:`BoxSandbox` is the plain one over a :class:`BoxManager`.

Tool failures are *answers*, not exceptions: :func:`run_tool` returns
``ToolOutcome(is_error=True)`` with a message the model can act on (wrong path, no match,
bad arguments), because the model is the one who must fix it. Only cancellation propagates.
"""

from __future__ import annotations

import asyncio
import contextlib
import posixpath
from dataclasses import dataclass
from typing import Any, Protocol

from spoke.boxes.base import BoxManager, ExecHandle, one_chunk, read_all

WORKSPACE = "/workspace"
MAX_OUTPUT = 30_000  # characters of tool output the model sees
MAX_CAPTURE = 4 * 1024 * 1024  # bytes of a command's stdout/stderr kept in memory
MAX_READ = 16 * 1024 * 1024  # largest file read_file/edit_file will load
DEFAULT_BASH_TIMEOUT = 120.0
MAX_BASH_TIMEOUT = 3600.0
SEARCH_MAX_LINES = 200
LIST_MAX_LINES = 500

DEFAULT_POLICY = {"read_file": "auto", "search": "auto", "list_dir": "auto",
                  "bash": "ask", "write_file": "ask", "edit_file": "ask"}


class Sandbox(Protocol):
    """Where tools run: the workstream's box."""

    async def run(self, cmd: list[str], timeout: float | None = None
                  ) -> tuple[int, bytes, bytes, bool]:
        """Run ``cmd``; return (exit code, stdout, stderr, timed_out).

        Cancelling the awaiting task must kill the process: that is how a workstream's
        cancel reaches a ``sleep 3600`` in the box."""
        ...

    async def write(self, path: str, data: bytes) -> None: ...

    async def read(self, path: str, max_bytes: int) -> bytes: ...


class BoxSandbox(Sandbox):
    """A :class:`Sandbox` over one box of a :class:`BoxManager`."""

    def __init__(self, manager: BoxManager, box_id: str) -> None:
        self.manager = manager
        self.box_id = box_id

    async def run(self, cmd: list[str], timeout: float | None = None
                  ) -> tuple[int, bytes, bytes, bool]:
        # Shielded so a cancel that lands while the exec is being set up still gets a handle
        # to kill: otherwise the process would start after we gave up and run on unowned.
        starting = asyncio.ensure_future(self.manager.exec(self.box_id, cmd, timeout=timeout))
        try:
            handle = await asyncio.shield(starting)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await (await starting).kill()
            raise
        out, err = _Capture(), _Capture()
        try:
            async for stream, data in handle.chunks():
                (out if stream == "stdout" else err).add(data)
            result = await handle.wait()
        except BaseException:
            # Cancelled (or failed): kill, and wait a little for the end to be confirmed so
            # that whoever cancelled us can say "stopped" and mean it. Shielded: a second
            # cancel must not abandon the kill half-way.
            await asyncio.shield(_kill_and_confirm(handle))
            raise
        return result.exit_code, out.value(), err.value(), result.timed_out

    async def write(self, path: str, data: bytes) -> None:
        await self.manager.put_file(self.box_id, path, one_chunk(data), len(data))

    async def read(self, path: str, max_bytes: int) -> bytes:
        return await read_all(self.manager.get_file(self.box_id, path, max_bytes))


async def _kill_and_confirm(handle: ExecHandle, grace: float = 5.0) -> None:
    with contextlib.suppress(Exception):
        await handle.kill()
        async with asyncio.timeout(grace):
            await handle.wait()


class _Capture:
    """Keeps the first :data:`MAX_CAPTURE` bytes and counts the rest, so a command that
    prints gigabytes costs the spoke a bounded amount of memory."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.dropped = 0

    def add(self, chunk: bytes) -> None:
        room = MAX_CAPTURE - len(self.data)
        self.data += chunk[:max(room, 0)]
        self.dropped += max(len(chunk) - max(room, 0), 0)

    def value(self) -> bytes:
        if self.dropped:
            return bytes(self.data) + f"\n[... {self.dropped} more bytes discarded ...]".encode()
        return bytes(self.data)


@dataclass
class ToolOutcome:
    output: str
    is_error: bool = False


class ToolFailure(Exception):
    """Raised inside a tool to answer the model with an error message."""


def _tool(name: str, description: str, properties: dict[str, Any],
          required: list[str]) -> dict[str, Any]:
    return {"name": name, "description": description,
            "parameters": {"type": "object", "properties": properties, "required": required,
                           "additionalProperties": False}}


_STR, _INT = {"type": "string"}, {"type": "integer"}
TOOLS: list[dict[str, Any]] = [
    _tool("bash", "Run a shell command in the sandbox (working directory /workspace). Returns "
          "stdout, stderr and the exit code. Long outputs are truncated.",
          {"command": {**_STR, "description": "The command line, run with bash -c (sh -c if "
                       "the image has no bash)."},
           "timeout_s": {"type": "number", "description": "Kill the command after this many "
                         f"seconds (default {DEFAULT_BASH_TIMEOUT:.0f}, max "
                         f"{MAX_BASH_TIMEOUT:.0f})."}}, ["command"]),
    _tool("read_file", "Read a text file. Relative paths are under /workspace.",
          {"path": _STR,
           "offset": {**_INT, "description": "First line to return, 1-based (default 1)."},
           "limit": {**_INT, "description": "How many lines to return (default: all)."}},
          ["path"]),
    _tool("write_file", "Create or overwrite a file with the given content (parent "
          "directories are created).", {"path": _STR, "content": _STR}, ["path", "content"]),
    _tool("edit_file", "Replace one exact occurrence of `old` with `new` in a file. `old` must "
          "match exactly once, including whitespace; add surrounding lines to make it unique.",
          {"path": _STR, "old": _STR, "new": _STR}, ["path", "old", "new"]),
    _tool("search", "Search file contents for a regular expression (grep -rn, extended "
          "syntax). Returns matching lines as path:line:text.",
          {"pattern": _STR, "path": {**_STR, "description": "Directory or file (default "
                                     "/workspace)."}}, ["pattern"]),
    _tool("list_dir", "List a directory (ls -lA).",
          {"path": {**_STR, "description": "Default /workspace."}}, []),
]
_SCHEMAS = {t["name"]: t["parameters"] for t in TOOLS}


def truncate(text: str, limit: int = MAX_OUTPUT) -> str:
    """Keep the head and the tail (errors tend to be at the end) and say how much was cut."""
    if len(text) <= limit:
        return text
    head, tail = limit * 2 // 3, limit // 3
    cut = len(text) - head - tail
    return (f"{text[:head]}\n[... output truncated: {cut} of {len(text)} characters cut ...]\n"
            f"{text[-tail:]}")


def resolve(path: str) -> str:
    """An absolute, normalised box path; relative paths are under /workspace."""
    if not path or "\x00" in path:
        raise ToolFailure(f"invalid path {path!r}")
    return posixpath.normpath(posixpath.join(WORKSPACE, path))


def _check_args(name: str, args: dict[str, Any]) -> None:
    schema = _SCHEMAS[name]
    props: dict[str, Any] = schema["properties"]
    missing = [k for k in schema["required"] if k not in args]
    if missing:
        raise ToolFailure(f"{name}: missing required argument(s): {', '.join(missing)}")
    unknown = sorted(set(args) - set(props))
    if unknown:
        raise ToolFailure(f"{name}: unknown argument(s): {', '.join(unknown)} "
                          f"(accepted: {', '.join(props)})")
    for key, value in args.items():
        kind = props[key]["type"]
        ok = {"string": isinstance(value, str),
              "integer": isinstance(value, int) and not isinstance(value, bool),
              "number": isinstance(value, int | float) and not isinstance(value, bool)}[kind]
        if not ok:
            raise ToolFailure(f"{name}: argument {key!r} must be a {kind}, got {value!r:.80}")


async def run_tool(sandbox: Sandbox, name: str, arguments: dict[str, Any]) -> ToolOutcome:
    """Run one built-in tool; never raises for tool-level failures (only on cancellation)."""
    impl = _IMPLS.get(name)
    if impl is None:
        return ToolOutcome(f"unknown tool {name!r}; available tools: {', '.join(_IMPLS)}", True)
    try:
        if not isinstance(arguments, dict):
            raise ToolFailure(f"{name}: arguments must be a JSON object")
        _check_args(name, arguments)
        outcome = await impl(sandbox, arguments)
    except ToolFailure as err:
        return ToolOutcome(truncate(str(err)), True)
    except Exception as err:  # a box error, a dead box: tell the model, keep the loop alive
        message = getattr(err, "message", None) or str(err) or type(err).__name__
        return ToolOutcome(truncate(f"{name} failed: {message}"), True)
    outcome.output = truncate(outcome.output)
    return outcome


def _text(data: bytes) -> str:
    return data.decode("utf-8", errors="replace")


async def _bash(sandbox: Sandbox, args: dict[str, Any]) -> ToolOutcome:
    raw_timeout = args.get("timeout_s")
    timeout = DEFAULT_BASH_TIMEOUT if raw_timeout is None else float(raw_timeout)
    if not 0 < timeout <= MAX_BASH_TIMEOUT:
        raise ToolFailure(f"bash: timeout_s must be between 0 and {MAX_BASH_TIMEOUT:.0f}")
    # bash if the image has it (the tool's name promises it), plain sh otherwise.
    script = 'if command -v bash >/dev/null 2>&1; then exec bash -c "$1"; else exec sh -c "$1"; fi'
    code, out, err, timed_out = await sandbox.run(["/bin/sh", "-c", script, "sh",
                                                   args["command"]], timeout=timeout)
    parts = [_text(out)] if out else []
    if err:
        parts.append("[stderr]\n" + _text(err))
    if timed_out:
        parts.append(f"[timed out after {timeout:g} s: the command was killed]")
    else:
        parts.append(f"[exit code {code}]")
    return ToolOutcome("\n".join(p.rstrip("\n") for p in parts), is_error=timed_out or code != 0)


async def _read_text(sandbox: Sandbox, path: str) -> str:
    data = await sandbox.read(path, MAX_READ)
    if b"\x00" in data[:8192]:
        raise ToolFailure(f"{path} looks like a binary file ({len(data)} bytes); inspect it "
                          "with bash (e.g. xxd or file) instead")
    return _text(data)


async def _read_file(sandbox: Sandbox, args: dict[str, Any]) -> ToolOutcome:
    path = resolve(args["path"])
    text = await _read_text(sandbox, path)
    offset, limit = args.get("offset"), args.get("limit")
    if offset is None and limit is None:
        return ToolOutcome(text if text else f"({path} is empty)")
    lines = text.splitlines(keepends=True)
    start = max(int(offset or 1), 1)
    end = len(lines) if limit is None else min(len(lines), start - 1 + max(int(limit), 0))
    if start > len(lines):
        raise ToolFailure(f"{path} has only {len(lines)} lines; offset {start} is past the end")
    body = "".join(lines[start - 1:end])
    return ToolOutcome(f"[{path}: lines {start}-{end} of {len(lines)}]\n{body}")


async def _write_keeping_mode(sandbox: Sandbox, path: str, data: bytes) -> None:
    """Write ``data``, creating parent directories and keeping an existing file's mode.

    ``put_file`` always writes 0644; without this, editing a script would make it lose its
    executable bit and the next ``./script.sh`` would fail for no reason the model can see."""
    probe = 'mkdir -p "$(dirname "$1")" && { stat -c %a "$1" 2>/dev/null || true; }'
    code, out, err, _ = await sandbox.run(["/bin/sh", "-c", probe, "sh", path], timeout=60)
    if code != 0:
        raise ToolFailure(f"cannot create the directory for {path}: {_text(err).strip()}")
    mode = _text(out).strip()
    await sandbox.write(path, data)
    if mode and mode != "644":
        await sandbox.run(["chmod", mode, path], timeout=60)


async def _write_file(sandbox: Sandbox, args: dict[str, Any]) -> ToolOutcome:
    path = resolve(args["path"])
    data = args["content"].encode()
    await _write_keeping_mode(sandbox, path, data)
    return ToolOutcome(f"wrote {len(data)} bytes to {path}")


async def _edit_file(sandbox: Sandbox, args: dict[str, Any]) -> ToolOutcome:
    path, old, new = resolve(args["path"]), args["old"], args["new"]
    if not old:
        raise ToolFailure("edit_file: `old` must not be empty (use write_file to create a file)")
    text = await _read_text(sandbox, path)
    count = text.count(old)
    if count == 0:
        raise ToolFailure(f"edit_file: `old` was not found in {path}. It must match exactly, "
                          "including whitespace and indentation; read the file and copy the "
                          "text from it.")
    if count > 1:
        raise ToolFailure(f"edit_file: `old` occurs {count} times in {path}; include more "
                          "surrounding lines so that it matches exactly once.")
    updated = text.replace(old, new, 1)
    await _write_keeping_mode(sandbox, path, updated.encode())
    line = text[:text.index(old)].count("\n") + 1
    return ToolOutcome(f"edited {path}: replaced 1 occurrence at line {line}")


async def _search(sandbox: Sandbox, args: dict[str, Any]) -> ToolOutcome:
    path = resolve(args.get("path") or WORKSPACE)
    cmd = ["grep", "-rnIE", "--exclude-dir=.git", "-m", "50", "-e", args["pattern"], "--", path]
    code, out, err, timed_out = await sandbox.run(cmd, timeout=60)
    if code == 1 and not out:
        return ToolOutcome(f"no matches for {args['pattern']!r} in {path}")
    lines = _text(out).splitlines()
    note = ""
    if len(lines) > SEARCH_MAX_LINES:
        note = (f"\n[... {len(lines) - SEARCH_MAX_LINES} more matching lines not shown; "
                "narrow the pattern or the path ...]")
        lines = lines[:SEARCH_MAX_LINES]
    if timed_out:
        note += "\n[search timed out after 60 s; results are incomplete]"
    if code > 1 and not lines:
        raise ToolFailure(f"search failed: {_text(err).strip() or f'grep exit code {code}'}")
    return ToolOutcome("\n".join(lines) + note)


async def _list_dir(sandbox: Sandbox, args: dict[str, Any]) -> ToolOutcome:
    path = resolve(args.get("path") or WORKSPACE)
    code, out, err, _ = await sandbox.run(["ls", "-lA", "--", path], timeout=60)
    if code != 0:
        raise ToolFailure(f"list_dir {path}: {_text(err).strip() or f'exit code {code}'}")
    lines = _text(out).splitlines()
    if len(lines) > LIST_MAX_LINES:
        cut = len(lines) - LIST_MAX_LINES
        lines = lines[:LIST_MAX_LINES] + [f"[... {cut} more entries not shown ...]"]
    return ToolOutcome("\n".join(lines) or f"({path} is empty)")


_IMPLS = {"bash": _bash, "read_file": _read_file, "write_file": _write_file,
          "edit_file": _edit_file, "search": _search, "list_dir": _list_dir}
