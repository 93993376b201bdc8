"""Events a :class:`protocol.connection.Connection` returns from the frames it is fed."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from protocol.errors import RemoteError


@dataclass(frozen=True)
class Event:
    pass


@dataclass(frozen=True)
class HelloReceived(Event):
    """Spoke side: the hub greeted us; answer with ``send_auth``."""

    versions: tuple[int, ...]
    challenge: bytes
    limits: dict[str, float]
    caps: tuple[str, ...] = ()


@dataclass(frozen=True)
class AuthRequested(Event):
    """Hub side: verify, then ``accept_auth`` or ``reject_auth``."""

    call_id: int
    params: BaseModel


@dataclass(frozen=True)
class Authenticated(Event):
    result: BaseModel


@dataclass(frozen=True)
class AuthRejected(Event):
    error: RemoteError


@dataclass(frozen=True)
class RequestReceived(Event):
    call_id: int
    verb: str
    params: BaseModel
    deadline: float  # on the connection's clock
    traceparent: str | None = None  # the frame's ``tp``, validated (protocol/tracecontext.py)


@dataclass(frozen=True)
class ResponseReceived(Event):
    call_id: int
    result: BaseModel


@dataclass(frozen=True)
class CallFailed(Event):
    """A call we made failed: an error reply, a local deadline, or the peer went away."""

    call_id: int
    error: RemoteError


@dataclass(frozen=True)
class ChunkReceived(Event):
    call_id: int
    seq: int
    stream: str
    data: bytes
    eof: bool


@dataclass(frozen=True)
class WindowOpened(Event):
    """The peer consumed chunks of this call: more may be sent now."""

    call_id: int


@dataclass(frozen=True)
class CancelReceived(Event):
    call_id: int


@dataclass(frozen=True)
class NotificationReceived(Event):
    method: str
    params: BaseModel


@dataclass(frozen=True)
class ProtocolViolation(Event):
    """A bad frame arrived; an error reply is already queued. ``fatal`` means close now."""

    message: str
    fatal: bool = False


@dataclass(frozen=True)
class PeerStale(Event):
    """Nothing arrived for longer than the stale limit (missed heartbeats)."""

    silent_for: float


@dataclass(frozen=True)
class HandshakeTimedOut(Event):
    pass


def describe(obj: Any) -> str:
    return repr(obj)[:200]
