"""The two ends of a connection: what only the hub, or only the spoke, may do (sans-I/O).

The hub greets (``send_hello`` with a fresh challenge), checks the spoke's ``auth`` request
(``accept_auth`` / ``reject_auth``) and then issues verbs; the spoke answers the greeting
(``send_auth``) and serves the verbs it receives, validating each against the allowlist
(its trust boundary: it trusts the hub for nothing more than protocol/verbs.py lists). A
method used out of turn raises :class:`protocol.connection.LocalProtocolError`. Pinned by
tests/protocol/test_handshake.py, test_calls.py and test_malformed.py.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from typing import Any, NoReturn, overload

from pydantic import BaseModel, ValidationError

from protocol import events as ev
from protocol import messages
from protocol.connection import Connection, Limits, LocalProtocolError, Role, State, _Call
from protocol.errors import ErrorCode, RemoteError
from protocol.tracecontext import TP_FIELD, valid_traceparent
from protocol.verbs import P, R, Verb, lookup, parse_params


class HubConnection(Connection):
    role = Role.HUB
    peer_notifications = messages.FROM_SPOKE

    def __init__(self, clock: Callable[[], float], limits: Limits | None = None) -> None:
        super().__init__(clock, limits)
        self._hello_sent = False

    # --------------------------------------------------------------- handshake
    def send_hello(self, challenge: bytes, server: str) -> None:
        self._require(State.HANDSHAKE, "send_hello")
        if self._hello_sent:
            raise LocalProtocolError("can't send_hello twice")
        self._hello_sent = True
        hello = messages.Hello(
            versions=list(messages.SUPPORTED_VERSIONS),
            challenge=base64.b64encode(challenge).decode(),
            server=server,
            limits={
                "max_frame_bytes": self.limits.max_frame_bytes,
                "max_calls": self.limits.max_calls,
                "heartbeat_s": self.limits.heartbeat_s,
                "stale_after_s": self.limits.stale_after_s,
            },
            caps=["batch"],
        )
        self._emit({"method": "hello", "params": hello.model_dump()})

    def accept_auth(self, result: messages.AuthResult) -> None:
        self._require(State.HANDSHAKE, "accept_auth")
        if self._auth_call is None:
            raise LocalProtocolError("can't accept_auth before an auth request arrived")
        self._emit({"id": self._auth_call, "result": result.model_dump()})
        self.state = State.OPEN

    def reject_auth(self, error: RemoteError) -> None:
        if self.state is State.CLOSED:
            raise LocalProtocolError("can't reject_auth in state closed")
        self._emit({"id": self._auth_call, "error": error.to_wire()})
        self.state = State.CLOSED

    def _handshake_request(self, call_id: int, method: str, frame: dict[str, Any]) -> list[ev.Event]:
        if method != "auth" or self._auth_call is not None:
            return self._violation(call_id, "expected an auth request first")
        try:
            params = messages.AuthParams.model_validate(frame.get("params"))
        except ValidationError as err:
            first = err.errors()[0]
            where = ".".join(str(part) for part in first.get("loc", ())) or "params"
            return self._violation(call_id, f"bad auth request: {where}: {first.get('msg')}")
        self._auth_call = call_id
        return [ev.AuthRequested(call_id, params)]

    # ------------------------------------------------------------------- calls
    @overload
    def send_request(self, verb: Verb[P, R], params: P, timeout_s: float | None = None,
                     traceparent: str | None = None) -> int: ...

    @overload
    def send_request(self, verb: str, params: BaseModel | dict[str, Any],
                     timeout_s: float | None = None, traceparent: str | None = None) -> int: ...

    def send_request(self, verb: Verb[Any, Any] | str, params: BaseModel | dict[str, Any],
                     timeout_s: float | None = None, traceparent: str | None = None) -> int:
        """Queue a request; raises :class:`RemoteError` without sending.

        Typed use (``send_request(BOX_DESTROY, BoxRef(...))``) sends the model as built: it
        was validated once, where the hub made it. A verb name (tests, raw tools) is looked up
        and its params, dict or model, validated here first. ``traceparent`` (the caller's
        dispatch span, protocol/tracecontext.py) goes out as the frame's optional ``tp``."""
        if self.state is not State.OPEN:
            raise RemoteError(ErrorCode.UNAVAILABLE, "connection is not open")
        verb_def = lookup(verb) if isinstance(verb, str) else verb
        if not isinstance(verb, str) and type(params) is verb_def.params:
            model: BaseModel = params  # type: ignore[assignment]
        else:
            raw = params.model_dump() if isinstance(params, BaseModel) else params
            model = parse_params(verb_def, raw)
        if not self.can_send(verb_def):
            raise RemoteError(ErrorCode.BUSY, f"{self.limits.max_calls} calls already in flight "
                              f"(or all {verb_def.kind} slots)")
        timeout = verb_def.default_timeout_s if timeout_s is None else timeout_s
        call_id = self._take_id()
        self._outgoing[call_id] = _Call(verb_def, self.clock() + timeout + self.limits.deadline_grace_s)
        frame: dict[str, Any] = {"id": call_id, "method": verb_def.name, "params": model.model_dump(),
                                 "timeout_ms": int(timeout * 1000)}
        if traceparent is not None:
            frame[TP_FIELD] = traceparent
        self._emit(frame)
        return call_id

    def can_send(self, verb: Verb[Any, Any]) -> bool:
        """Whether a call of ``verb`` fits now (its class has a free slot)."""
        return self.limits.room(self._outgoing, verb.kind)

    def _open_request(self, call_id: int, method: str, frame: dict[str, Any]) -> list[ev.Event]:
        denied = RemoteError(ErrorCode.DENIED, f"the hub serves no verbs ({method!r})")
        self._emit({"id": call_id, "error": denied.to_wire()})
        return [ev.ProtocolViolation(f"spoke sent request {method!r}")]


class SpokeConnection(Connection):
    role = Role.SPOKE
    peer_notifications = messages.FROM_HUB

    # --------------------------------------------------------------- handshake
    def send_auth(self, params: messages.AuthParams) -> None:
        self._require(State.HANDSHAKE, "send_auth")
        if self._auth_call is not None:
            raise LocalProtocolError("can't send_auth twice")
        self._auth_call = self._take_id()
        self._emit({"id": self._auth_call, "method": "auth", "params": params.model_dump()})

    def send_request(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise LocalProtocolError("can't send_request on a spoke: only the hub issues verbs")

    def _handshake_notification(self, method: str, params: Any) -> list[ev.Event]:
        if method != "hello":
            return super()._handshake_notification(method, params)
        try:
            hello = messages.Hello.model_validate(params)
            challenge = base64.b64decode(hello.challenge, validate=True)
        except (ValidationError, binascii.Error, ValueError):
            # ValueError: b64decode of a str with non-ASCII characters (found by the fuzz:
            # tests/protocol/test_fuzz.py::test_a_hello_with_a_non_ascii_challenge_is_malformed_not_a_value_error)
            return self._violation(None, "malformed hello")
        return [ev.HelloReceived(tuple(hello.versions), challenge, dict(hello.limits),
                                 tuple(hello.caps))]

    def _handshake_reply(self, call_id: int, result: Any, error: Any) -> list[ev.Event] | None:
        if call_id != self._auth_call:
            return None
        self.state = State.CLOSED
        if error is not None:
            return [ev.AuthRejected(RemoteError.from_wire(error))]
        try:
            model = messages.AuthResult.model_validate(result)
        except ValidationError:
            return [ev.AuthRejected(RemoteError(ErrorCode.INTERNAL, "malformed auth result"))]
        self.state = State.OPEN
        return [ev.Authenticated(model)]

    # ------------------------------------------------------------------- calls
    def _open_request(self, call_id: int, method: str, frame: dict[str, Any]) -> list[ev.Event]:
        """The spoke's trust boundary: only allowlisted verbs with valid parameters."""
        if call_id in self._incoming:
            return self._violation(call_id, f"call id {call_id} is already in flight")
        try:
            verb = lookup(method)
            request_params = parse_params(verb, frame.get("params"))
        except RemoteError as err:
            self._emit({"id": call_id, "error": err.to_wire()})
            return [ev.ProtocolViolation(str(err))]
        if not self.limits.room(self._incoming, verb.kind):
            busy = RemoteError(ErrorCode.BUSY, f"{self.limits.max_calls} calls already in flight "
                               f"(or all {verb.kind} slots)")
            self._emit({"id": call_id, "error": busy.to_wire()})
            return []
        timeout_ms = frame.get("timeout_ms")
        if not isinstance(timeout_ms, int) or isinstance(timeout_ms, bool) or timeout_ms <= 0:
            timeout_ms = int(verb.default_timeout_s * 1000)
        deadline = self.clock() + timeout_ms / 1000
        self._incoming[call_id] = _Call(verb, deadline)
        # The hub's trace context, when it traces this call; a bad one is dropped, never
        # refused (protocol/tracecontext.py): tracing must not fail a call.
        tp = valid_traceparent(frame[TP_FIELD]) if TP_FIELD in frame else None
        return [ev.RequestReceived(call_id, verb.name, request_params, deadline, tp)]


def for_role(role: Role, clock: Callable[[], float], limits: Limits | None = None) -> Connection:
    """The connection class of ``role`` (for code and tests that pick the side at run time)."""
    return HubConnection(clock, limits) if role is Role.HUB else SpokeConnection(clock, limits)
