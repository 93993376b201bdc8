"""The verb table: the single allowlist of what a hub may ask of a spoke.

Both ends validate against this table: the hub before it sends, the spoke when it receives
(the spoke trusts the hub for nothing more than what is listed here). Each verb names its
parameter and result models, whether it streams, and which parameter makes a retry of a
creating verb idempotent.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Annotated, Any, Generic, Literal, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from protocol.errors import ErrorCode, RemoteError

BOX_ID_RE = re.compile(r"^bx_[0-9a-f]{16}$")
SPOKE_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
# A box's user: uid[:gid] or name[:group] (each part digits or a POSIX-ish name): it ends up
# in the container's config, so no control characters, spaces or other punctuation.
_USER_PART = r"(?:[0-9]{1,10}|[A-Za-z_][A-Za-z0-9_.-]{0,31})"
BOX_USER_RE = re.compile(rf"^{_USER_PART}(?::{_USER_PART})?$")
MIN_WORKSPACE_BYTES = 16 * 1024 * 1024
MAX_WORKSPACE_BYTES = 1024**4
MAX_EXEC_TIMEOUT_S = 24 * 3600.0
MAX_FILE_BYTES = 256 * 1024 * 1024



def _box_id(value: str) -> str:
    if not BOX_ID_RE.fullmatch(value):
        raise ValueError(f"{value[:80]!r} is not a box id (bx_ + 16 hex digits)")
    return value


# The one definition of a box id, for both ends (spoke/boxes/base.py uses BOX_ID_RE too).
BoxId = Annotated[str, AfterValidator(_box_id)]
AbsPath = Annotated[str, Field(min_length=1, max_length=4096, pattern=r"^/")]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Empty(_Model):
    pass


class BoxCreate(_Model):
    box_id: BoxId
    image: str = Field(min_length=1, max_length=512)
    network: bool = False
    memory_bytes: int | None = Field(default=None, gt=0)
    cpus: float | None = Field(default=None, gt=0, le=256)
    pids: int | None = Field(default=None, gt=0, le=1_000_000)
    env: dict[str, str] = Field(default_factory=dict)
    # None: the image's USER if it is not root, else 1000:1000 (root only if the spoke allows)
    user: str | None = Field(default=None, max_length=65, pattern=BOX_USER_RE.pattern)
    # Size limit of /workspace; None: the spoke's default (1 GiB), under its ceiling
    workspace_bytes: int | None = Field(default=None, ge=MIN_WORKSPACE_BYTES,
                                        le=MAX_WORKSPACE_BYTES)

    @field_validator("env")
    @classmethod
    def _env_names(cls, value: dict[str, str]) -> dict[str, str]:
        for key in value:
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,127}", key):
                raise ValueError(f"bad environment variable name {key!r}")
        return value


class BoxInfoModel(_Model):
    box_id: str
    image: str
    state: str
    created_at: float
    network: bool = False


class BoxRef(_Model):
    box_id: BoxId


class BoxList(_Model):
    boxes: list[BoxInfoModel]


# A hub-chosen exec id (``ex_…``, an MCP job's ``job_…``): with one, an exec survives a short
# break of the connection and is re-attached with ``box.attach`` (spoke/exec_sessions.py).
ExecId = Annotated[str, Field(pattern=r"^[a-z]{2,4}_[0-9a-f]{16}$")]


class BoxExec(_Model):
    box_id: BoxId
    cmd: list[str] = Field(min_length=1, max_length=4096)
    env: dict[str, str] = Field(default_factory=dict)
    workdir: AbsPath | None = None
    timeout_s: float | None = Field(default=None, gt=0, le=MAX_EXEC_TIMEOUT_S)
    exec_id: ExecId | None = None


class ExecAttach(_Model):
    """Re-attach to a resumable exec after a reconnect: its output from byte ``offset`` of
    its combined stdout/stderr (what the hub had delivered), then its result."""

    box_id: BoxId
    exec_id: ExecId
    offset: int = Field(ge=0)


class ExecDone(_Model):
    exit_code: int
    timed_out: bool = False
    cancelled: bool = False


# A hub-chosen channel id (``ch_…``): names a PTY session or a port connection on its spoke
# while its ``box.open`` call runs; ``box.input`` sends to it.
ChannelId = Annotated[str, Field(pattern=r"^ch_[0-9a-f]{16}$")]
MAX_INPUT_BYTES = 48 * 1024  # raw bytes per box.input (base64 in params)
MAX_CHANNEL_ROWS = 1000
MAX_CHANNEL_COLS = 1000


class BoxOpen(_Model):
    """Open a channel into a box: a PTY running ``cmd`` (like ``docker exec -it``), or a TCP
    connection to ``port`` inside it (port previews). The call streams the box's output
    down (first an empty ``ready`` chunk once the channel is open) and ends with the PTY's
    ExecDone (exit code 0 for a port). Pinned by tests/protocol/test_channel_verbs.py."""

    box_id: BoxId
    channel_id: ChannelId
    kind: Literal["pty", "port"]
    cmd: list[str] = Field(default_factory=list, max_length=4096)
    env: dict[str, str] = Field(default_factory=dict)
    workdir: AbsPath | None = None
    rows: int = Field(default=24, ge=1, le=MAX_CHANNEL_ROWS)
    cols: int = Field(default=80, ge=1, le=MAX_CHANNEL_COLS)
    port: int | None = Field(default=None, ge=1, le=65535)

    @field_validator("env")
    @classmethod
    def _env_names(cls, value: dict[str, str]) -> dict[str, str]:
        for key in value:
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,127}", key):
                raise ValueError(f"bad environment variable name {key!r}")
        return value

    @model_validator(mode="after")
    def _kind_fields(self) -> BoxOpen:
        if self.kind == "pty":
            if not self.cmd or self.port is not None:
                raise ValueError("a pty needs cmd and no port")
            if any("\x00" in arg for arg in self.cmd):
                raise ValueError("cmd must not contain NUL bytes")
        elif self.port is None or self.cmd or self.env or self.workdir is not None:
            raise ValueError("a port channel needs port (1-65535) and no cmd, env or workdir")
        return self


class ChannelInput(_Model):
    """Input for an open channel: ``data`` (base64) written in order, then a resize, then
    ``eof`` (no more input), then ``close`` (end it now). Unknown channel: not_found."""

    channel_id: ChannelId
    data: str = Field(default="", max_length=(MAX_INPUT_BYTES * 4) // 3 + 4)
    rows: int | None = Field(default=None, ge=1, le=MAX_CHANNEL_ROWS)
    cols: int | None = Field(default=None, ge=1, le=MAX_CHANNEL_COLS)
    eof: bool = False
    close: bool = False

    @field_validator("data")
    @classmethod
    def _base64(cls, value: str) -> str:
        try:
            base64.b64decode(value, validate=True)
        except ValueError:
            raise ValueError("data must be base64") from None
        return value

    @model_validator(mode="after")
    def _both_or_neither(self) -> ChannelInput:
        if (self.rows is None) != (self.cols is None):
            raise ValueError("a resize needs both rows and cols")
        return self


class BoxLogs(_Model):
    box_id: BoxId
    tail: int = Field(default=200, ge=1, le=100_000)


class LogsResult(_Model):
    data: str  # base64


class Destroyed(_Model):
    existed: bool


# A path inside a box for the file verbs: absolute, or relative to the box's working
# directory. Only the spoke knows that directory (the container's config), so it resolves
# and normalises the path; both ends refuse NUL bytes and overlong paths.
BoxPath = Annotated[str, Field(min_length=1, max_length=4096, pattern=r"^[^\x00]+$")]
# One path component: the name a file gets when its target is a directory.
FileName = Annotated[str, Field(min_length=1, max_length=255, pattern=r"^[^/\x00]+$")]


class PutFile(_Model):
    """Write one file. If ``path`` is a directory (or ends in '/'), the file goes inside it
    as ``into_dir_name``, like ``docker cp``; ``parents`` creates missing directories."""

    box_id: BoxId
    path: BoxPath
    size: int = Field(ge=0, le=MAX_FILE_BYTES)
    mode: int = Field(default=0o644, ge=0, le=0o7777)
    parents: bool = False
    into_dir_name: FileName | None = None

    @field_validator("into_dir_name")
    @classmethod
    def _one_component(cls, value: str | None) -> str | None:
        if value in (".", ".."):
            raise ValueError("must be a file name, not . or ..")
        return value


class GetFile(_Model):
    box_id: BoxId
    path: BoxPath
    max_bytes: int = Field(default=64 * 1024 * 1024, ge=0, le=MAX_FILE_BYTES)


class FileDone(_Model):
    size: int
    path: str = ""  # the absolute path written or read, as the spoke resolved it


class StatsResult(_Model):
    memory_bytes: int = 0
    cpu_percent: float = 0.0
    pids: int = 0


class Reap(_Model):
    keep: list[BoxId] = Field(max_length=100_000)


class Reaped(_Model):
    removed: list[str]


class SpokeInfo(_Model):
    name: str
    version: str
    boxes: list[BoxInfoModel]
    labels: list[str] = Field(default_factory=list)
    policy: dict[str, Any] = Field(default_factory=dict)
    capacity: dict[str, Any] = Field(default_factory=dict)
    workstreams: list[str] = Field(default_factory=list)


WsId = Annotated[str, Field(pattern=r"^ws_[0-9a-f]{16}$")]
MAX_MESSAGE_CHARS = 200_000


class ModelRef(_Model):
    """A model the spoke may call: ``via`` hub (the hub's relay holds the key) or spoke (its own)."""

    alias: str = Field(min_length=1, max_length=100)
    provider: Literal["openai", "anthropic"]
    via: Literal["hub", "spoke"] = "hub"
    context_window: int = Field(default=128_000, gt=0)


class WsStart(_Model):
    ws_id: WsId
    box_id: BoxId  # chosen by the hub: a retried start never makes a second box
    # The message to answer; empty only with ``continue_turn``: a turn its spoke lost is
    # continued from ``history`` (the interrupted tool call answered as interrupted).
    message: str = Field(default="", max_length=MAX_MESSAGE_CHARS)
    models: list[ModelRef] = Field(min_length=1, max_length=10)
    image: str | None = Field(default=None, max_length=512)
    auto_approve: bool = False
    seq_base: int = Field(default=0, ge=0)
    # The conversation so far (protocol/transcript.py), when the hub resumes a workstream
    # whose agent loop a spoke lost; empty for a new one.
    history: list[dict[str, Any]] = Field(default_factory=list, max_length=10_000)
    continue_turn: bool = False

    @model_validator(mode="after")
    def _message_or_continue(self) -> WsStart:
        if self.continue_turn:
            if self.message or not self.history:
                raise ValueError("continue_turn needs history and no message")
        elif not self.message:
            raise ValueError("message must not be empty")
        return self


class WsStarted(_Model):
    box_id: str
    image: str
    box_reused: bool = True  # False: a resumed workstream's old box was gone, this one is new


class WsSend(_Model):
    ws_id: WsId
    message: str = Field(min_length=1, max_length=MAX_MESSAGE_CHARS)


class WsApprove(_Model):
    ws_id: WsId
    call_id: str = Field(min_length=1, max_length=200)
    approved: bool
    reason: str = Field(default="", max_length=2000)


class WsRef(_Model):
    ws_id: WsId


class WsAck(_Model):
    known: bool = True


Stream = Literal["none", "down", "up"]
P = TypeVar("P", bound=_Model)
R = TypeVar("R", bound=_Model)


@dataclass(frozen=True)
class Verb(Generic[P, R]):
    """One allowlisted verb, typed by its parameter and result models.

    A call site names the constant (``BOX_DESTROY``), hands it a ``BoxRef`` and gets a
    ``Destroyed`` back: mypy checks both ends (``HubLink.call`` in protocol/link.py, the
    handlers in spoke/dispatcher.py). ``stream`` says which way chunk frames flow during the
    call: ``down`` from spoke to hub (exec output, file download), ``up`` from hub to spoke
    (file upload). ``idempotency_field`` names the hub-chosen id that makes a retried create
    a no-op. Pinned by tests/protocol/test_verbs.py.
    """

    name: str
    params: type[P]
    result: type[R]
    stream: Stream = "none"
    default_timeout_s: float = 30.0
    idempotency_field: str | None = None
    # "control": cheap and quick (pings, listings, stats, messages to an agent); "work": what
    # may run long or hold resources. Each class has reserved call slots (Limits.room).
    kind: Literal["control", "work"] = "work"


BOX_CREATE = Verb("box.create", BoxCreate, BoxInfoModel, default_timeout_s=120.0,
                  idempotency_field="box_id")
BOX_LIST = Verb("box.list", Empty, BoxList, kind="control")
BOX_EXEC = Verb("box.exec", BoxExec, ExecDone, stream="down", default_timeout_s=3600.0)
BOX_ATTACH = Verb("box.attach", ExecAttach, ExecDone, stream="down", default_timeout_s=3600.0)
BOX_LOGS = Verb("box.logs", BoxLogs, LogsResult, kind="control")
BOX_DESTROY = Verb("box.destroy", BoxRef, Destroyed, default_timeout_s=60.0)
BOX_PUT_FILE = Verb("box.put_file", PutFile, FileDone, stream="up", default_timeout_s=300.0)
BOX_GET_FILE = Verb("box.get_file", GetFile, FileDone, stream="down", default_timeout_s=300.0)
BOX_STATS = Verb("box.stats", BoxRef, StatsResult, kind="control")
BOX_REAP = Verb("box.reap", Reap, Reaped, default_timeout_s=120.0)
# Docker's freezer: a paused box keeps its memory and refuses work until resumed.
BOX_PAUSE = Verb("box.pause", BoxRef, BoxInfoModel, default_timeout_s=60.0)
BOX_RESUME = Verb("box.resume", BoxRef, BoxInfoModel, default_timeout_s=60.0)
WS_START = Verb("ws.start", WsStart, WsStarted, default_timeout_s=180.0, idempotency_field="ws_id")
WS_SEND = Verb("ws.send", WsSend, WsAck, kind="control")
WS_APPROVE = Verb("ws.approve", WsApprove, WsAck, kind="control")
WS_CANCEL = Verb("ws.cancel", WsRef, WsAck, kind="control")
WS_CLOSE = Verb("ws.close", WsRef, WsAck, default_timeout_s=60.0)
# PTY sessions and port previews: the channel lives as long as its box.open call.
BOX_OPEN = Verb("box.open", BoxOpen, ExecDone, stream="down", default_timeout_s=24 * 3600.0)
BOX_INPUT = Verb("box.input", ChannelInput, Empty, kind="control")
SPOKE_INFO = Verb("spoke.info", Empty, SpokeInfo, kind="control")
SPOKE_PING = Verb("spoke.ping", Empty, Empty, default_timeout_s=10.0, kind="control")

# The allowlist itself: nothing else is ever sent or served.
VERBS: dict[str, Verb[Any, Any]] = {
    v.name: v
    for v in (BOX_CREATE, BOX_LIST, BOX_EXEC, BOX_ATTACH, BOX_LOGS, BOX_DESTROY, BOX_PUT_FILE, BOX_GET_FILE,
              BOX_STATS, BOX_REAP, BOX_PAUSE, BOX_RESUME, BOX_OPEN, BOX_INPUT, WS_START, WS_SEND, WS_APPROVE, WS_CANCEL, WS_CLOSE,
              SPOKE_INFO, SPOKE_PING)
}


def _explain(err: ValidationError) -> str:
    parts = []
    for item in err.errors()[:3]:
        where = ".".join(str(p) for p in item.get("loc", ())) or "params"
        message = str(item.get("msg", "invalid")).removeprefix("Value error, ")
        parts.append(f"{where}: {message}")
    return "; ".join(parts)


def lookup(name: str) -> Verb[Any, Any]:
    """Return the verb or raise a typed ``denied`` error: unknown verbs are refused."""
    verb = VERBS.get(name)
    if verb is None:
        raise RemoteError(ErrorCode.DENIED, f"verb {name!r} is not on the allowlist")
    return verb


def parse_params(verb: Verb[P, R], params: Any) -> P:
    """Validate untrusted ``params`` (a spoke receiving, or the hub building from a dict)."""
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise RemoteError(ErrorCode.INVALID, f"{verb.name}: params must be an object")
    try:
        return verb.params.model_validate(params)
    except ValidationError as err:
        raise RemoteError(ErrorCode.INVALID, f"{verb.name}: {_explain(err)}") from None


def parse_result(verb: Verb[P, R], result: Any) -> R:
    try:
        return verb.result.model_validate(result)
    except ValidationError as err:
        raise RemoteError(ErrorCode.INTERNAL, f"{verb.name} result: {_explain(err)}") from None


def build(verb: Verb[P, R], fields: dict[str, Any]) -> P:
    """The hub's one validation of parameters that arrive as a user's JSON (``box create``,
    ``box exec``): the model, or a typed ``invalid`` error naming the bad field (never a
    pydantic traceback). Where the hub has typed values, it constructs the model under
    :func:`validating` instead, so mypy checks the field names and types. Pinned by
    tests/protocol/test_verbs.py."""
    return parse_params(verb, fields)


@contextmanager
def validating(verb: Verb[Any, Any]) -> Iterator[None]:
    """Construct ``verb``'s params model in this block (typed, checked by mypy); a value the
    model refuses (a malformed box id from a URL) becomes a typed ``invalid`` error.
    Pinned by tests/protocol/test_verbs.py."""
    try:
        yield
    except ValidationError as err:
        raise RemoteError(ErrorCode.INVALID, f"{verb.name}: {_explain(err)}") from None
