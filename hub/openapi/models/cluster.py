"""Health, info, join tokens, API keys, spokes and boxes (hub/api.py)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, WithJsonSchema

from hub.openapi.models.common import Answer, Body
from protocol.verbs import BOX_USER_RE, MAX_EXEC_TIMEOUT_S

SPOKE_NAME = r"^[a-z0-9][a-z0-9-]{0,62}$"
ROLE = Literal["viewer", "operator", "admin"]
ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]{0,127}$"
ENV_SCHEMA = {"type": "object", "propertyNames": {"pattern": ENV_NAME}}
SIZE = "bytes as a positive integer, or a size such as `512m`, `2g`, `64k`"


class Health(Answer):
    ok: bool
    status: Literal["ok", "degraded"]
    reasons: list[str]
    spokes_connected: int


class Info(Answer):
    url: str
    pin: str = Field(description="`sha256:` + the hex SHA-256 of the hub's certificate; "
                                 "empty on plain HTTP")
    version: str


class TokenCreate(Body):
    name: str = Field(pattern=SPOKE_NAME, description="the spoke's name; with `uses`, the "
                      "prefix of the names of the spokes it enrolls (NAME-…)")
    ttl: float | str | None = Field(
        default="1h", description="seconds, or `90s`, `30m`, `1h`, `7d`; at most 30 days")
    uses: int | None = Field(default=None, ge=1, le=100_000,
                             description="a multi-use token for up to this many spokes")


class TokenCreated(Answer):
    token: str = Field(description="the join token for `spoke join`: shown only here")
    id: str
    name: str
    expires_at: float
    uses: int
    prefix: bool


class Token(Answer):
    id: str
    name: str
    created_at: float
    expires_at: float
    used_at: float | None
    revoked_at: float | None
    uses: int
    uses_left: int
    prefix: bool
    state: Literal["valid", "used", "expired", "revoked"]


class Revoked(Answer):
    id: str
    revoked: bool = Field(description="false when it was revoked already")


class ApiKeyCreate(Body):
    name: str = Field(min_length=1, max_length=100, description="printable characters")
    role: ROLE | None = Field(default="admin")


class ApiKeyCreated(Answer):
    key: str = Field(description="the key (`shk_…`): shown only here")
    id: str
    name: str
    role: ROLE


class ApiKey(Answer):
    id: str
    name: str
    role: ROLE
    created_at: float
    revoked_at: float | None
    last_used: float | None


class Spoke(Answer):
    name: str
    state: Literal["connected", "stale", "lost", "left", "revoked"]
    connected: bool
    last_seen: float | None
    connected_at: float | None
    last_heartbeat_at: float | None
    silent_s: float | None
    boxes: int
    labels: list[str]
    models: list[str]
    version: str
    enrolled_at: float
    revoked: bool
    disconnect_reason: str
    running_calls: int
    workstreams: int
    max_workstreams: int
    latency: dict[str, dict[str, Any]] = Field(
        description="by verb: `count`, `errors`, `p50_ms`, `p95_ms` of its recent calls")
    hub: str | None = Field(default=None, description="the id of the hub of the cluster holding "
                            "its link (docs/scaling.md); null when none does")


class SpokeRevoked(Answer):
    name: str
    revoked: bool


class PingBody(Body):
    count: int | None = Field(default=1, ge=1, le=1_000_000)
    concurrency: int | None = Field(default=1, ge=1, le=256)


class Ping(Answer):
    count: int
    seconds: float
    per_second: float


class BoxCreate(Body):
    spoke: str
    image: str = Field(min_length=1, max_length=512)
    network: bool | None = False
    memory: int | str | None = Field(default=None, description=SIZE)
    cpus: float | None = Field(default=None, gt=0, le=256, description="CPUs, e.g. 0.5")
    user: str | None = Field(default=None, max_length=65, pattern=BOX_USER_RE.pattern,
                             description="`uid[:gid]` or `name[:group]`")
    workspace: int | str | None = Field(default=None, description=SIZE + " (at least 16m)")
    env: Annotated[dict[str, Any], WithJsonSchema(ENV_SCHEMA)] | None = Field(
        default=None, description="variables; values are sent as strings")


class Box(Answer):
    id: str
    spoke: str
    image: str
    state: str
    created_at: float


class BoxCreated(Box):
    network: bool


class InventoryBox(Box):
    on_spoke: str | None = Field(description="the state the spoke reports, null when it has "
                                             "no such box or was not asked")
    note: str


class BoxDestroyed(Answer):
    id: str
    removed: bool
    state: str


class BoxStats(Answer):
    memory_bytes: int
    cpu_percent: float
    pids: int


class ExecBody(Body):
    cmd: list[str] = Field(min_length=1, max_length=4096, description="argv")
    env: dict[str, str] | None = None
    workdir: str | None = Field(default=None, min_length=1, max_length=4096, pattern="^/",
                                description="an absolute path in the box")
    timeout_s: float | None = Field(default=None, gt=0, le=MAX_EXEC_TIMEOUT_S)


class ExecLine(Answer):
    """One NDJSON line: ``{"t": "stdout"|"stderr", "d": BASE64}`` as output arrives, then
    ``{"t": "exit", "exit_code", "timed_out", "cancelled"}``, or ``{"t": "error", "code",
    "message"}`` when the exec failed after its output began."""

    t: Literal["stdout", "stderr", "exit", "error"]


class FileWritten(Answer):
    size: int
    path: str = Field(description="the absolute path the spoke wrote")
