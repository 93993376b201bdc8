"""The built-in tools over a BoxSandbox on the fake box manager (real local processes)."""

from __future__ import annotations

import asyncio
import os
import stat

from spoke.agent.tools import MAX_OUTPUT, TOOLS, BoxSandbox, run_tool, truncate
from tests.agent.helpers import box_path, process_exists, read_pid, until


async def test_write_then_bash_runs_it(sandbox: BoxSandbox) -> None:
    wrote = await run_tool(sandbox, "write_file", {"path": "src/hello.py",
                                                   "content": "print('hi there')\n"})
    assert not wrote.is_error and "/workspace/src/hello.py" in wrote.output
    ran = await run_tool(sandbox, "bash", {"command": "python3 src/hello.py; echo oops >&2"})
    assert not ran.is_error
    assert ran.output == "hi there\n[stderr]\noops\n[exit code 0]"
    failed = await run_tool(sandbox, "bash", {"command": "exit 3"})
    assert failed.is_error and failed.output.endswith("[exit code 3]")


async def test_bash_timeout_kills(sandbox: BoxSandbox) -> None:
    outcome = await run_tool(sandbox, "bash", {"command": "echo start; sleep 30",
                                               "timeout_s": 0.5})
    assert outcome.is_error and "start" in outcome.output and "timed out after 0.5 s" in outcome.output


async def test_read_file_whole_and_paged(sandbox: BoxSandbox) -> None:
    await sandbox.write("/workspace/lines.txt", "".join(f"line {i}\n" for i in range(1, 11)).encode())
    whole = await run_tool(sandbox, "read_file", {"path": "/workspace/lines.txt"})
    assert whole.output.startswith("line 1\n") and not whole.is_error
    page = await run_tool(sandbox, "read_file", {"path": "lines.txt", "offset": 3, "limit": 2})
    assert page.output == "[/workspace/lines.txt: lines 3-4 of 10]\nline 3\nline 4\n"
    missing = await run_tool(sandbox, "read_file", {"path": "nope.txt"})
    assert missing.is_error and "no such file" in missing.output


async def test_edit_file_exact_once(sandbox: BoxSandbox) -> None:
    await run_tool(sandbox, "write_file", {"path": "run.sh", "content": "echo a\necho b\necho a\n"})
    os.chmod(box_path(sandbox, "/workspace/run.sh"), 0o755)
    none = await run_tool(sandbox, "edit_file", {"path": "run.sh", "old": "echo c", "new": "x"})
    assert none.is_error and "was not found in /workspace/run.sh" in none.output
    many = await run_tool(sandbox, "edit_file", {"path": "run.sh", "old": "echo a", "new": "x"})
    assert many.is_error and "occurs 2 times" in many.output
    ok = await run_tool(sandbox, "edit_file", {"path": "run.sh", "old": "echo b", "new": "echo B"})
    assert not ok.is_error and "line 2" in ok.output
    assert box_path(sandbox, "/workspace/run.sh").read_text() == "echo a\necho B\necho a\n"
    mode = stat.S_IMODE(box_path(sandbox, "/workspace/run.sh").stat().st_mode)
    assert mode == 0o755  # an edit keeps the script executable
    ran = await run_tool(sandbox, "bash", {"command": "./run.sh"})
    assert ran.output == "a\nB\na\n[exit code 0]"


async def test_truncation_note(sandbox: BoxSandbox) -> None:
    outcome = await run_tool(sandbox, "bash", {"command": "head -c 100000 /dev/zero | tr '\\0' x"})
    assert len(outcome.output) < MAX_OUTPUT + 200
    assert "[... output truncated:" in outcome.output and "70014 of 100014 characters cut" in outcome.output
    assert outcome.output.endswith("[exit code 0]")  # the tail survives
    assert truncate("short") == "short"


async def test_search_and_list_dir(sandbox: BoxSandbox) -> None:
    await run_tool(sandbox, "write_file", {"path": "pkg/a.py", "content": "def alpha():\n  pass\n"})
    await run_tool(sandbox, "write_file", {"path": "pkg/b.py", "content": "alpha()\n"})
    found = await run_tool(sandbox, "search", {"pattern": "alpha\\("})
    assert sorted(line.split("/workspace/")[-1] for line in found.output.splitlines()) == [
        "pkg/a.py:1:def alpha():", "pkg/b.py:1:alpha()"]
    nothing = await run_tool(sandbox, "search", {"pattern": "zeta", "path": "pkg"})
    assert not nothing.is_error and nothing.output.startswith("no matches")
    listing = await run_tool(sandbox, "list_dir", {"path": "pkg"})
    assert "a.py" in listing.output and "b.py" in listing.output
    gone = await run_tool(sandbox, "list_dir", {"path": "missing"})
    assert gone.is_error


async def test_bad_calls_are_answers_not_exceptions(sandbox: BoxSandbox) -> None:
    unknown = await run_tool(sandbox, "rm_rf", {})
    assert unknown.is_error and "unknown tool 'rm_rf'" in unknown.output
    missing = await run_tool(sandbox, "bash", {})
    assert missing.is_error and "missing required argument(s): command" in missing.output
    wrong = await run_tool(sandbox, "read_file", {"path": "x", "limit": "ten"})
    assert wrong.is_error and "'limit' must be a integer" in wrong.output
    extra = await run_tool(sandbox, "list_dir", {"dir": "x"})
    assert extra.is_error and "unknown argument(s): dir" in extra.output
    assert {t["name"] for t in TOOLS} == {"bash", "read_file", "write_file", "edit_file",
                                          "search", "list_dir"}


async def test_cancelling_run_kills_the_process(sandbox: BoxSandbox) -> None:
    task = asyncio.create_task(run_tool(sandbox, "bash", {
        "command": "echo $$ > /workspace/pid; exec sleep 30"}))
    pid_file = box_path(sandbox, "/workspace/pid")
    await until(lambda: read_pid(pid_file) is not None, what="the pid file")
    pid = read_pid(pid_file)
    assert pid is not None
    assert process_exists(pid)
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass
    else:
        raise AssertionError("the cancel did not propagate")
    assert not process_exists(pid)  # killed and reaped before the cancel returned
