"""The cluster and exec tools of the hub's MCP front-end.

Each tool is a thin adapter over the hub's in-process services (registry, BoxService,
JobRunner), passed in one by one rather than the whole ``Hub``: the same code paths as the
REST API, so a chatbot gets exactly the checks, typed errors and reconciliation the CLI gets.
A :class:`RemoteError` becomes an MCP tool error (``isError``) whose text starts with the
typed code, so the model can read what went wrong and the session carries on. The registrar
(:func:`tool_registrar`), the error mapping and the annotations here are shared with
:mod:`hub.mcp.workstream_tools`. Pinned end to end by ``tests/test_mcp.py``.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import Annotated, Any, Literal, cast

from mcp.server.auth.middleware.auth_context import get_access_token
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp_types import ToolAnnotations
from pydantic import Field

from hub import roles
from hub.audit import ACTING
from hub.boxes import BoxService
from hub.disconnect import ClientGone, cancelled_on_disconnect
from hub.mcp.asgi import HTTP_REQUEST_KEY
from hub.mcp.jobs import MAX_READ_CHARS, MAX_WAIT_S, JobRunner
from hub.registry import Registry
from protocol import verbs
from protocol.errors import ErrorCode, RemoteError
from protocol.units import parse_size

DEFAULT_IMAGE = "spokehub-sandbox:bookworm"
EXEC_MAX_TIMEOUT_S = 600.0
EXEC_OUTPUT_CAP = 1024 * 1024  # bytes kept from a short exec (stdout + stderr)
READ_FILE_CAP = 1024 * 1024
WRITE_FILE_CAP = 4 * 1024 * 1024
PROGRESS_EVERY_S = 0.5

BoxArg = Annotated[str, Field(description="Box id (bx_ + 16 hex digits), from create_box or list_boxes.")]
JobArg = Annotated[str, Field(description="Job id returned by start_exec.")]
PathArg = Annotated[str, Field(description="Absolute path inside the box, e.g. /workspace/notes.txt.")]
CmdArg = Annotated[
    list[str] | str,
    Field(description="The command: an argv list such as [\"ls\", \"-la\"], or one string run "
                      "with /bin/sh -c (pipes, redirects and && work)."),
]
EnvArg = Annotated[dict[str, str] | None, Field(description="Extra environment variables.")]
WorkdirArg = Annotated[str | None, Field(description="Absolute working directory (default: the image's).")]
EncodingArg = Annotated[
    Literal["utf-8", "base64"],
    Field(description="utf-8 for text; base64 for binary content."),
]

READ_ONLY = ToolAnnotations(read_only_hint=True, destructive_hint=False, open_world_hint=False)
MUTATING = ToolAnnotations(read_only_hint=False, destructive_hint=False, open_world_hint=False)
DESTRUCTIVE = ToolAnnotations(read_only_hint=False, destructive_hint=True, open_world_hint=False)


def tool_errors(fn: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    """Turn the hub's typed errors into MCP tool errors the model can read and act on."""

    @functools.wraps(fn)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return await fn(*args, **kwargs)
        except RemoteError as err:
            raise ToolError(f"{err.code.value}: {err.message}") from None

    return wrapper


ToolFn = Callable[..., Awaitable[Any]]


def caller_role() -> str:
    """The role of the key (or user) behind this request: the access token's scope, set by
    :func:`hub.mcp.frontend._identity`; ``""`` (which allows nothing) if there is none."""
    token = get_access_token()
    found = [s for s in (token.scopes if token is not None else []) if s in roles.ROLES]
    return found[0] if found else ""


def role_required(needed: str, fn: ToolFn) -> ToolFn:
    """``fn`` behind a check that the caller's role is at least ``needed``; a lower role gets
    a ``denied`` tool error naming the role needed (the session carries on)."""

    @functools.wraps(fn)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        role = caller_role()
        if not roles.allows(role, needed):
            raise ToolError(f"denied: {fn.__name__} needs the {needed} role (you are "
                            f"{'a ' + role if role else 'without a role'})")
        token = get_access_token()
        if token is not None:  # who acts, for the audit rows the tool's work writes
            who = token.client_id
            ACTING.set(who if who.startswith("user:") else f"key:{who}")
        return await fn(*args, **kwargs)

    return wrapper


def tool_registrar(
    server: MCPServer,
) -> Callable[..., Callable[[ToolFn], ToolFn]]:
    """The ``@tool(annotations, role=None)`` decorator every tool module registers with: it
    adds ``fn`` to ``server`` behind :func:`role_required` and :func:`tool_errors` and returns
    ``fn`` unchanged. One registrar, so every tool (cluster and workstream alike) reports
    typed errors the same way and checks the caller's role: ``viewer`` for read-only tools,
    ``operator`` for the others (boxes, exec, files, jobs, workstreams) unless ``role`` says
    otherwise. Pinned by ``tests/test_mcp.py`` (tool list with annotations, ``isError`` results
    with typed codes) and ``tests/test_roles.py::test_mcp_tools_check_the_role``."""

    def tool(annotations: ToolAnnotations, role: str | None = None) -> Callable[[ToolFn], ToolFn]:
        needed = role or (roles.VIEWER if annotations.read_only_hint else roles.OPERATOR)

        def register(fn: ToolFn) -> ToolFn:
            server.add_tool(tool_errors(role_required(needed, fn)), annotations=annotations)
            return fn

        return register

    return tool


def caller() -> str:
    """The id of the API key that authenticated this request (jobs are scoped to it)."""
    token = get_access_token()
    if token is None:
        raise ToolError("denied: this request carries no API key identity")
    return token.client_id


def as_argv(cmd: list[str] | str) -> list[str]:
    if isinstance(cmd, str):
        if not cmd.strip():
            raise ToolError("invalid: cmd must not be empty")
        return ["/bin/sh", "-c", cmd]
    if not cmd:
        raise ToolError("invalid: cmd must not be empty")
    return list(cmd)


def register_cluster_tools(server: MCPServer, registry: Registry, boxes: BoxService,
                           jobs: JobRunner) -> None:
    """Spokes, boxes, files and execs (short and as durable jobs), over exactly the services
    they use: the registry (spoke list), the box service and the job runner."""
    tool = tool_registrar(server)

    @tool(READ_ONLY)
    async def list_spokes() -> dict[str, Any]:
        """List the machines (spokes) enrolled at this hub: whether each is connected now,
        its labels, models it offers, live box count and when it was last seen. Boxes can only
        be created on a connected spoke."""
        return {"spokes": await registry.spoke_summaries()}

    @tool(READ_ONLY)
    async def list_boxes(
        spoke: Annotated[str | None, Field(description="Only boxes on this spoke.")] = None,
    ) -> dict[str, Any]:
        """List live boxes (sandboxed containers) across the cluster or on one spoke."""
        return {"boxes": await boxes.list(spoke)}

    @tool(MUTATING)
    async def create_box(
        spoke: Annotated[str, Field(description="Name of a connected spoke (see list_spokes).")],
        image: Annotated[str, Field(description="Image with /bin/sh; the spoke's policy decides "
                                                "which images are allowed.")] = DEFAULT_IMAGE,
        network: Annotated[bool, Field(description="Give the box network access.")] = False,
        memory: Annotated[str | None, Field(description="Memory limit, e.g. 512m or 2g.")] = None,
        cpus: Annotated[float | None, Field(gt=0, le=256, description="CPU limit.")] = None,
        env: EnvArg = None,
    ) -> dict[str, Any]:
        """Create a box: a hardened container on a spoke (no network unless asked, read-only
        root, writable /workspace). Returns its id for the other tools. Destroy it when done."""
        params: dict[str, Any] = {"image": image, "network": network, "env": env or {}}
        if memory is not None:
            params["memory_bytes"] = parse_size(memory)
        if cpus is not None:
            params["cpus"] = cpus
        return await boxes.create(spoke, params)

    @tool(DESTRUCTIVE)
    async def destroy_box(box: BoxArg) -> dict[str, Any]:
        """Destroy a box and everything in it. Destroying an already destroyed box is a no-op."""
        return await boxes.destroy(box)

    @tool(READ_ONLY)
    async def box_logs(
        box: BoxArg,
        tail: Annotated[int, Field(ge=1, le=100_000, description="Last N lines.")] = 200,
    ) -> dict[str, Any]:
        """The box container's own log (its main process), last ``tail`` lines. Output of
        exec/start_exec is returned by those tools, not here."""
        data = await boxes.logs(box, tail)
        return {"box": box, "logs": data.decode(errors="replace")}

    @tool(MUTATING)
    async def write_file(
        box: BoxArg,
        path: PathArg,
        content: Annotated[str, Field(description="The file content (text, or base64 if "
                                                  "encoding is base64).")],
        encoding: EncodingArg = "utf-8",
        mode: Annotated[str, Field(pattern=r"^[0-7]{3,4}$", description="Octal permissions.")] = "644",
    ) -> dict[str, Any]:
        """Create or replace a file in a box (parent directories must exist; /workspace is
        writable). At most 4 MiB per call."""
        try:
            data = base64.b64decode(content, validate=True) if encoding == "base64" else content.encode()
        except ValueError:
            raise ToolError("invalid: content is not valid base64") from None
        if len(data) > WRITE_FILE_CAP:
            raise ToolError(f"invalid: content is {len(data)} bytes; write_file takes at most "
                            f"{WRITE_FILE_CAP} bytes per call")

        async def source() -> AsyncIterator[bytes]:
            yield data

        result = await boxes.put_file(box, path, len(data), int(mode, 8), source())
        return {"box": box, "path": path, "size": result.get("size", len(data))}

    @tool(READ_ONLY, role=roles.OPERATOR)  # a box's files are its commands' data, not cluster state
    async def read_file(
        box: BoxArg,
        path: PathArg,
        encoding: EncodingArg = "utf-8",
        max_bytes: Annotated[int, Field(ge=1, le=READ_FILE_CAP, description="Refuse files "
                                        "larger than this (at most 1 MiB).")] = READ_FILE_CAP,
    ) -> dict[str, Any]:
        """Read a whole file from a box, up to 1 MiB. A larger file is refused with an error;
        read a part of it with exec instead (head -c, tail -n, sed -n, grep)."""
        parts: list[bytes] = []
        try:
            download = cast(AsyncGenerator[bytes, None], boxes.get_file(box, path, max_bytes))
            async with contextlib.aclosing(download) as stream:
                async for chunk in stream:
                    parts.append(chunk)
        except RemoteError as err:
            if err.code is ErrorCode.INVALID:
                raise ToolError(
                    f"invalid: {err.message} (read_file returns at most {max_bytes} bytes; read a "
                    "part with exec, e.g. head -c 100000 FILE or sed -n 1,200p FILE)"
                ) from None
            raise
        data = b"".join(parts)
        if encoding == "base64":
            return {"box": box, "path": path, "size": len(data), "encoding": "base64",
                    "content": base64.b64encode(data).decode()}
        try:
            text = data.decode()
        except UnicodeDecodeError:
            raise ToolError(f"invalid: {path} is not UTF-8 text; call read_file with "
                            "encoding='base64'") from None
        return {"box": box, "path": path, "size": len(data), "encoding": "utf-8", "content": text}

    @tool(MUTATING)
    async def exec(
        box: BoxArg,
        cmd: CmdArg,
        ctx: Context,
        timeout_s: Annotated[float, Field(gt=0, le=EXEC_MAX_TIMEOUT_S, description="Kill the "
                                          "command after this many seconds.")] = 60.0,
        workdir: WorkdirArg = None,
        env: EnvArg = None,
    ) -> dict[str, Any]:
        """Run a short command in a box and wait for it: returns stdout, stderr and the exit
        code (a non-zero exit is a normal result, not an error). The process is killed at the
        timeout or if the call is cancelled. Output past 1 MiB is cut (truncated: true). For
        anything that may take more than a minute or two, use start_exec instead."""
        params = boxes.exec_params(box, {"cmd": as_argv(cmd), "env": env or {},
                                         "workdir": workdir, "timeout_s": timeout_s})
        kept: dict[str, bytearray] = {"stdout": bytearray(), "stderr": bytearray()}
        seen, truncated, last_report = 0, False, float("-inf")  # first output: report at once
        done: dict[str, Any] = {}

        async def consume() -> None:
            nonlocal seen, truncated, last_report, done
            async with contextlib.aclosing(boxes.exec(params)) as stream:
                async for kind, value in stream:
                    if kind == "exit":
                        done = value
                        continue
                    room = EXEC_OUTPUT_CAP - len(kept["stdout"]) - len(kept["stderr"])
                    truncated = truncated or len(value) > room
                    kept[kind] += value[: max(room, 0)]
                    seen += len(value)
                    if time.monotonic() - last_report >= PROGRESS_EVERY_S:
                        last_report = time.monotonic()
                        await ctx.report_progress(seen, None, f"{seen} bytes of output so far")

        # The exec dies with its caller (long work that must outlive it is start_exec's).
        http = getattr(ctx.request_context, "request", None)
        origin = http.scope.get(HTTP_REQUEST_KEY) if http is not None else None
        try:
            await (cancelled_on_disconnect(origin, consume()) if origin is not None else consume())
        except ClientGone:
            raise ToolError("cancelled: the client went away") from None
        return {
            "exit_code": done.get("exit_code"),
            "timed_out": bool(done.get("timed_out")),
            "stdout": kept["stdout"].decode(errors="replace"),
            "stderr": kept["stderr"].decode(errors="replace"),
            "truncated": truncated,
        }

    @tool(MUTATING)
    async def start_exec(
        box: BoxArg,
        cmd: CmdArg,
        timeout_s: Annotated[float, Field(gt=0, le=verbs.MAX_EXEC_TIMEOUT_S, description="Kill "
                                          "the command after this many seconds.")] = 3600.0,
        workdir: WorkdirArg = None,
        env: EnvArg = None,
    ) -> dict[str, Any]:
        """Start a long command in a box as a job and return its id at once; it keeps running
        at the hub whatever happens to this conversation. Follow it with read_output (new
        output since a cursor), job_status, and cancel_job. Jobs belong to your API key."""
        params = boxes.exec_params(box, {"cmd": as_argv(cmd), "env": env or {},
                                         "workdir": workdir, "timeout_s": timeout_s})
        return await jobs.start(caller(), params)

    @tool(READ_ONLY)
    async def read_output(
        job: JobArg,
        cursor: Annotated[int, Field(ge=0, description="0 at first, then the cursor the "
                                     "previous read_output returned.")] = 0,
        wait_s: Annotated[float, Field(ge=0, le=MAX_WAIT_S, description="If there is no new "
                                       "output yet, wait up to this long for some.")] = 0.0,
        max_chars: Annotated[int, Field(ge=1, le=MAX_READ_CHARS, description="Return at most "
                                        "about this much output.")] = 65536,
    ) -> dict[str, Any]:
        """New output of a job since ``cursor``: stdout, stderr, the next cursor to pass back,
        ``more`` (more output is already waiting) and ``done`` (the job ended and all its
        output has been read). Output stays readable after the job ends, even across a hub
        restart."""
        return await jobs.read(job, caller(), cursor, max_chars, wait_s)

    @tool(READ_ONLY)
    async def job_status(job: JobArg) -> dict[str, Any]:
        """State of a job: running, exited (see exit_code), failed, cancelled, timed_out, or
        interrupted (the hub restarted while it ran)."""
        return await jobs.status(job, caller())

    @tool(READ_ONLY)
    async def list_jobs(
        limit: Annotated[int, Field(ge=1, le=500, description="Most recent first.")] = 50,
    ) -> dict[str, Any]:
        """Jobs started with your API key, most recent first."""
        return {"jobs": await jobs.recent(caller(), limit)}

    @tool(DESTRUCTIVE)
    async def cancel_job(job: JobArg) -> dict[str, Any]:
        """Cancel a running job: its process is killed in the box. Returns the final status;
        output produced so far stays readable. Cancelling an ended job changes nothing."""
        return await jobs.cancel(job, caller())
