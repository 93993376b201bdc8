"""Handshake and notification payloads (everything on the wire that is not a verb)."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

# What a spoke may call itself and its labels and models: names the hub shows in tables and
# the CLI prints, so never a control character (a terminal escape from a hostile peer).
LABEL_PATTERN = r"^[a-z0-9][a-z0-9_.-]{0,62}$"
Label = Annotated[str, Field(pattern=LABEL_PATTERN)]
ModelAlias = Annotated[str, Field(min_length=1, max_length=100, pattern=r"^[^\x00-\x1f\x7f]+$")]

# 2: stream chunks travel as binary WebSocket messages (protocol/binary_frames.py), not as
# base64 in JSON, and 256 KiB each. A peer speaking only 1 is refused, both versions named
# (tests/test_versions.py::test_a_spoke_of_the_old_protocol_is_refused_naming_both).
PROTOCOL_VERSION = 2
SUPPORTED_VERSIONS: tuple[int, ...] = (2,)

# WebSocket close codes with a meaning the spoke acts on.
CLOSE_GOING_AWAY = 1001  # the hub is shutting down: reconnect with backoff, calmly
CLOSE_REJECTED = 4001  # identity or token refused: do not retry
CLOSE_REVOKED = 4003  # spoke revoked by an operator: do not retry
CLOSE_PROTOCOL = 4002  # protocol violation / handshake failure: retry with backoff
CLOSE_REPLACED = 4004  # a newer connection of the same spoke took over
CLOSE_STALE = 4008  # heartbeats missed
CLOSE_THROTTLED = 4029  # too many rejected attempts from this address: retry later, with backoff
FATAL_CLOSE_CODES = frozenset({CLOSE_REJECTED, CLOSE_REVOKED})


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Hello(_Model):
    """First frame, hub to spoke: versions, limits and a fresh challenge to sign."""

    versions: list[int]
    challenge: str  # base64
    server: str
    limits: dict[str, float] = Field(default_factory=dict)
    # What the hub can read: "batch" (several frames in one message, a JSON array).
    caps: list[str] = Field(default_factory=list, max_length=64)


class AuthParams(_Model):
    protocol: int
    mode: str = Field(pattern=r"^(enroll|resume)$")
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,62}$")
    public_key: str = Field(max_length=200)  # base64 raw Ed25519 public key
    signature: str = Field(max_length=200)  # base64 over protocol.tokens.auth_message
    token_id: str | None = Field(default=None, max_length=100)
    token_secret: str | None = Field(default=None, max_length=200)
    version: str = Field(default="", max_length=50)
    labels: list[Label] = Field(default_factory=list, max_length=64)
    caps: list[str] = Field(default_factory=list, max_length=64)
    max_workstreams: int = Field(default=0, ge=0, le=10_000)
    models: list[ModelAlias] = Field(default_factory=list, max_length=100)  # spoke-local aliases


class AuthResult(_Model):
    session: str
    protocol: int
    heartbeat_s: float
    stale_after_s: float
    relay_token: str = ""  # bearer for the hub's model relay, valid while this session lives


class SpokeHeartbeat(_Model):
    boxes: int = 0
    running_calls: int = 0
    load: float = 0.0
    workstreams: int = 0
    max_workstreams: int = 0
    extra: dict[str, Any] = Field(default_factory=dict)


class HubHeartbeat(_Model):
    pass


class HubGoodbye(_Model):
    """The hub is stopping (a restart, usually): come back within ``reconnect_within_s``, at
    a random moment in it, so a fleet returns fast without stampeding the new hub."""

    reconnect_within_s: float = Field(default=5.0, gt=0, le=600)


class WsEvent(_Model):
    """One workstream event from the spoke; ``sseq`` is the spoke's per-workstream sequence
    number, used for acknowledgement and de-duplication (the hub assigns the log's own seq)."""

    ws_id: str = Field(pattern=r"^ws_[0-9a-f]{16}$")
    sseq: int = Field(ge=1)
    kind: str = Field(min_length=1, max_length=50)
    data: dict[str, Any] = Field(default_factory=dict)


class WsEventAck(_Model):
    ws_id: str
    sseq: int


class SpokeLeaving(_Model):
    """A spoke stopping cleanly says so first: it takes no new work, finishes its running
    calls (a bounded drain), and hands back its workstreams — ``interrupted`` lists those
    whose turn it cuts short — before its goodbye (close 1000). The hub moves them at once
    instead of waiting for a lost spoke's grace."""

    interrupted: list[str] = Field(default_factory=list, max_length=10_000)
    drain_s: float = Field(default=0.0, ge=0, le=3600)


# Notifications each side may send (beyond the stream-control ones every call uses).
FROM_SPOKE: dict[str, type[_Model]] = {"spoke.heartbeat": SpokeHeartbeat, "ws.event": WsEvent,
                                       "spoke.leaving": SpokeLeaving}
FROM_HUB: dict[str, type[_Model]] = {"hub.heartbeat": HubHeartbeat, "ws.ack": WsEventAck,
                                     "hub.goodbye": HubGoodbye}
