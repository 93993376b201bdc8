"""The sans-I/O connection between a hub and a spoke.

Like h11 and websockets' protocol module, this class never touches a socket: the I/O layer
feeds it each received WebSocket message with :meth:`Connection.receive_data`, acts on the
returned events, and writes whatever :meth:`Connection.data_to_send` hands back. Timers use an
injected clock, so every rule here (deadlines, staleness, the handshake timeout, flow control)
is tested without sockets or sleeping.

Frames are JSON-RPC 2.0 objects. Besides requests, results and errors there are three
stream-control notifications tied to a call id: ``$/chunk`` (sequence-numbered data),
``$/ack`` (cumulative: the receiver consumed everything up to ``seq``), and ``$/cancel``.
Since protocol version 2 a chunk leaves as a binary message, raw bytes after a small header
(protocol/binary_frames.py), never base64 in JSON: :meth:`data_to_send` hands back ``str``
(text messages) and ``bytes`` (binary ones), and the transport sends each as what it is.
Each call's stream has its own window, so a slow consumer of one stream holds back only
that stream's sender, never other calls on the same connection.

The two ends differ only in the handshake and in who asks: :class:`protocol.sides.HubConnection`
greets, checks the spoke's auth and issues verbs; :class:`protocol.sides.SpokeConnection`
answers the greeting and serves verbs. This module is what they share. Misuse by the program
driving a connection (``send_hello`` twice, a result for a call never received…) raises
:class:`LocalProtocolError` ("can't X in state Y"), h11-style, instead of an ``assert`` that
``python -O`` would remove. The asyncio driver both ends use is protocol/link.py. Pinned by
tests/protocol/ (tests/protocol/helpers.py wires a pair in memory with a fake clock).
"""

from __future__ import annotations

import base64
import binascii
import enum
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError

from protocol import binary_frames as bf
from protocol import events as ev
from protocol.errors import ErrorCode, RemoteError
from protocol.frame_checks import deeper_than, may_hold_surrogates, valid_unicode
from protocol.verbs import VERBS, Verb, parse_result


class Role(enum.Enum):
    HUB = "hub"
    SPOKE = "spoke"


class State(enum.Enum):
    HANDSHAKE = "handshake"
    OPEN = "open"
    CLOSED = "closed"


MAX_BATCH = 4096  # frames in one batched message (the frame size limit holds too)


@dataclass(frozen=True)
class Limits:
    """What one connection may hold. ``max_calls`` is the cap on calls in flight; within it
    each class of verb (protocol/verbs.py ``Verb.kind``: cheap ``control`` calls and real
    ``work``) has ``reserved`` slots the other class cannot take, so 256 pings never starve
    an exec and a flood of execs never blocks a cancel-free ``box.list``. Pinned by
    tests/protocol/test_calls.py and tests/test_call_slots.py."""

    max_frame_bytes: int = 1024 * 1024
    max_calls: int = 256
    reserved_per_class: int | None = None  # default: max_calls // 8 (32 of 256)
    queue_s: float = 10.0  # how long the hub waits for a free slot before answering busy
    # 16 x 256 KiB in flight per stream: enough to keep a loopback link busy (exec output at
    # ~Docker's own speed, benchmarks/bulk_data.py) and still bounded, 4 MiB per call.
    window_chunks: int = 16
    chunk_bytes: int = 256 * 1024
    handshake_timeout_s: float = 10.0
    heartbeat_s: float = 4.0  # 2.5 beats inside stale_after_s; 1000 spokes: 250 frames a second
    stale_after_s: float = 10.0
    deadline_grace_s: float = 5.0
    max_violations: int = 50
    # How deeply a frame's JSON may nest. Real traffic stays under ~10 levels (a workstream's
    # history: frame, params, history, message, content, block, tool input); a deeper frame
    # is refused here rather than accepted and stored, where every later reader of it (a
    # json.dumps on the event loop's stack) would meet a RecursionError.
    max_depth: int = 100

    def reserved(self) -> int:
        return self.max_calls // 8 if self.reserved_per_class is None else self.reserved_per_class

    def room(self, calls: Mapping[int, _Call], kind: str) -> bool:
        """Whether one more call of ``kind`` fits beside ``calls``."""
        mine = sum(1 for c in calls.values() if c.verb.kind == kind)
        return len(calls) < self.max_calls and mine < self.max_calls - self.reserved()


@dataclass
class _Call:
    verb: Verb[Any, Any]
    deadline: float
    sent_seq: int = -1  # last chunk seq we sent
    acked_seq: int = -1  # last chunk seq the peer consumed
    recv_seq: int = -1  # last chunk seq we received
    our_ack: int = -1  # last chunk seq we told the peer we consumed
    done_sending: bool = False


class LocalProtocolError(RemoteError):
    """The program driving this connection asked for something the protocol forbids in the
    current state (a bug on our side, never the peer's): "can't send_hello in state open"."""

    def __init__(self, message: str) -> None:
        super().__init__(ErrorCode.INTERNAL, message)


class Connection:
    """What both ends share; use :class:`protocol.sides.HubConnection` or
    :class:`protocol.sides.SpokeConnection`."""

    role: Role
    # The notifications the peer may send us once the connection is open.
    peer_notifications: Mapping[str, type[BaseModel]] = {}

    def __init__(self, clock: Callable[[], float], limits: Limits | None = None) -> None:
        self.clock = clock
        self.limits = limits or Limits()
        self.state = State.HANDSHAKE
        self._out: list[str | bytes] = []  # text frames (JSON) and binary chunk frames
        self._next_id = 1
        self._outgoing: dict[int, _Call] = {}  # calls we made
        self._incoming: dict[int, _Call] = {}  # calls the peer made
        self._auth_call: int | None = None
        self._started = self.clock()
        self._last_received = self._started
        self._violations = 0
        self._peer_max_id = 0  # the highest call id the peer has used (unknown-call checks)

    def _require(self, state: State, doing: str) -> None:
        if self.state is not state:
            raise LocalProtocolError(f"can't {doing} in state {self.state.value}")

    # ------------------------------------------------------------------ output
    def has_data_to_send(self) -> bool:
        return bool(self._out)

    def data_to_send(self) -> list[str | bytes]:
        out, self._out = self._out, []
        return out

    def _emit(self, frame: dict[str, Any]) -> None:
        frame["jsonrpc"] = "2.0"
        self._out.append(json.dumps(frame, separators=(",", ":")))

    # ------------------------------------------------------------------- calls
    def send_result(self, call_id: int, result: BaseModel | dict[str, Any]) -> None:
        call = self._incoming.get(call_id)
        if call is None:
            return  # cancelled or already answered: nothing to say
        # Validate before forgetting the call, so a bad result can still be answered with
        # send_error instead of leaving the peer waiting for its deadline. A model of the
        # verb's result type was validated when it was built.
        if isinstance(result, BaseModel) and type(result) is call.verb.result:
            model: BaseModel = result
        else:
            raw = result.model_dump() if isinstance(result, BaseModel) else result
            model = parse_result(call.verb, raw)
        del self._incoming[call_id]
        self._emit({"id": call_id, "result": model.model_dump()})

    def send_error(self, call_id: int | None, error: RemoteError) -> None:
        if call_id is not None and self._incoming.pop(call_id, None) is None:
            return
        self._emit({"id": call_id, "error": error.to_wire()})

    def cancel(self, call_id: int) -> None:
        """Give up on a call we made: the peer is told, late replies are ignored."""
        if self._outgoing.pop(call_id, None) is not None and self.state is State.OPEN:
            self._emit({"method": "$/cancel", "params": {"id": call_id}})

    def notify(self, method: str, params: BaseModel) -> None:
        if self.state is State.OPEN:
            self._emit({"method": method, "params": params.model_dump()})

    def in_flight(self) -> int:
        return len(self._outgoing) + len(self._incoming)

    @property
    def last_received(self) -> float:
        """When (on the injected clock) the peer was last heard from: the time the staleness
        rule counts from, so a hub can tell a quiet peer from a silent one before it closes."""
        return self._last_received

    # ----------------------------------------------------------------- streams
    def _stream_call(self, call_id: int) -> _Call | None:
        call = self._incoming.get(call_id)
        if call is not None and call.verb.stream == "down":
            return call
        call = self._outgoing.get(call_id)
        if call is not None and call.verb.stream == "up":
            return call
        return None

    def can_send_chunk(self, call_id: int) -> bool:
        call = self._stream_call(call_id)
        return call is not None and call.sent_seq - call.acked_seq < self.limits.window_chunks

    def send_chunk(self, call_id: int, stream: str, data: bytes, eof: bool = False) -> bool:
        """Queue one chunk. Returns False (sending nothing) while the window is full or the
        call is gone; the caller waits for :class:`WindowOpened` and tries again."""
        if len(data) > self.limits.chunk_bytes:
            raise ValueError(f"chunk of {len(data)} bytes exceeds {self.limits.chunk_bytes}")
        call = self._stream_call(call_id)
        if call is None or not self.can_send_chunk(call_id) or call.done_sending:
            return False
        call.sent_seq += 1
        call.done_sending = eof
        self._out.append(bf.encode(call_id, call.sent_seq, stream, data, eof))
        return True

    def ack(self, call_id: int, seq: int) -> None:
        """Tell the peer we consumed chunks up to ``seq`` of this call's stream."""
        call = self._outgoing.get(call_id) or self._incoming.get(call_id)
        if call is not None and seq > call.our_ack:
            call.our_ack = seq
            self._emit({"method": "$/ack", "params": {"id": call_id, "seq": seq}})

    # ------------------------------------------------------------------ timers
    def timers_pending(self, now: float) -> bool:
        """Whether :meth:`check_timers` could find anything at ``now`` (a handshake in
        progress, calls with deadlines, or silence past the stale limit): a hub holding
        thousands of idle links checks this, not the timers. Pinned by
        tests/protocol/test_link.py::test_one_ticker_drives_the_timers_of_many_links."""
        return (self.state is State.HANDSHAKE or bool(self._outgoing)
                or now - self._last_received > self.limits.stale_after_s)

    def check_timers(self) -> list[ev.Event]:
        now = self.clock()
        out: list[ev.Event] = []
        if self.state is State.HANDSHAKE and now - self._started > self.limits.handshake_timeout_s:
            self.state = State.CLOSED
            return [ev.HandshakeTimedOut()]
        if self.state is not State.OPEN:
            return out
        for call_id, call in list(self._outgoing.items()):
            if now >= call.deadline:
                self.cancel(call_id)
                out.append(
                    ev.CallFailed(
                        call_id,
                        RemoteError(ErrorCode.TIMEOUT, f"{call.verb.name}: deadline exceeded"),
                    )
                )
        silent = now - self._last_received
        if silent > self.limits.stale_after_s:
            out.append(ev.PeerStale(silent))
        return out

    def connection_lost(self, reason: str) -> list[ev.Event]:
        """The transport closed: every outstanding call of ours fails as ``unavailable``."""
        self.state = State.CLOSED
        failed = [
            ev.CallFailed(
                cid,
                RemoteError(ErrorCode.UNAVAILABLE, f"{c.verb.name}: connection lost ({reason})"),
            )
            for cid, c in self._outgoing.items()
        ]
        self._outgoing.clear()
        self._incoming.clear()
        return list(failed)

    # ----------------------------------------------------------------- receive
    def receive_data(self, data: str | bytes) -> list[ev.Event]:
        self._last_received = self.clock()
        if bf.is_binary_chunk(data):
            assert isinstance(data, bytes | bytearray)
            return self._receive_binary(data)
        size = len(data)
        if isinstance(data, str) and 4 * size > self.limits.max_frame_bytes:  # else cannot be over
            size = len(data.encode("utf-8", "surrogatepass"))
        if size > self.limits.max_frame_bytes:
            return self._violation(
                None,
                f"frame of {size} bytes exceeds the limit of {self.limits.max_frame_bytes}",
            )
        try:
            frame = json.loads(data)
        except (ValueError, UnicodeDecodeError):
            return self._violation(None, "malformed frame: not JSON")
        except RecursionError:  # [[[[…]]]] deeper than the parser's stack (found by the fuzz)
            return self._violation(None, "malformed frame: nested too deeply")
        if isinstance(frame, list):
            return self._receive_batch(frame, data)
        return self._receive_frame(frame, data)

    def _receive_batch(self, frames: list[Any], data: str | bytes) -> list[ev.Event]:
        """Several frames in one message (a JSON array, as JSON-RPC batches are): what a link
        whose peer said ``batch`` sends when it has more than one frame to write, one TLS
        record and one write for all (:mod:`protocol.link`). Each frame is then judged alone."""
        if not frames or len(frames) > MAX_BATCH or not all(isinstance(f, dict) for f in frames):
            return self._violation(None, "malformed frame: a batch must hold 1 to "
                                         f"{MAX_BATCH} JSON-RPC objects")
        if may_hold_surrogates(data) and not valid_unicode(frames):
            return self._violation(None, "malformed frame: a string is not valid "
                                         "Unicode (a lone surrogate)")
        events: list[ev.Event] = []
        for frame in frames:
            events.extend(self._receive_frame(frame, None))
        return events

    def _receive_frame(self, frame: Any, data: str | bytes | None) -> list[ev.Event]:
        """One parsed frame (``data``: its text, for the Unicode check; None when done)."""
        if not isinstance(frame, dict) or frame.get("jsonrpc") != "2.0":
            return self._violation(None, "malformed frame: not a JSON-RPC 2.0 object")
        raw_id = frame.get("id")
        if raw_id is not None and (not isinstance(raw_id, int) or isinstance(raw_id, bool)):
            return self._violation(None, "malformed frame: id must be an integer")
        # A request refused here is answered to its id, so the caller need not wait for
        # its deadline; a reply's id is one of ours, and never answered.
        request_id = raw_id if "method" in frame else None
        if deeper_than(frame, self.limits.max_depth):
            return self._violation(request_id, "malformed frame: nested too deeply "
                                               f"(over {self.limits.max_depth} levels)")
        if data is not None and may_hold_surrogates(data) and not valid_unicode(frame):
            return self._violation(request_id, "malformed frame: a string is not valid "
                                               "Unicode (a lone surrogate)")
        method = frame.get("method")
        if method is not None:
            if not isinstance(method, str):
                return self._violation(raw_id, "malformed frame: method must be a string")
            if raw_id is None:
                return self._on_notification(method, frame.get("params"))
            return self._on_request(raw_id, method, frame)
        if raw_id is None:
            if "error" in frame:
                # The peer could not tie its complaint to a call (JSON-RPC allows id null).
                # Never answer it: our reply would be a violation to the peer in turn, and the
                # two sides would echo error frames back and forth.
                remote = RemoteError.from_wire(frame["error"])
                return [
                    ev.ProtocolViolation(
                        f"peer reported an error: {remote}", fatal=self.state is State.HANDSHAKE
                    )
                ]
            return self._violation(None, "malformed frame: a reply without an id")
        if "error" in frame:
            return self._on_error(raw_id, frame["error"])
        if "result" in frame:
            return self._on_result(raw_id, frame["result"])
        return self._violation(raw_id, "malformed frame: neither method, result nor error")

    def _violation(self, call_id: int | None, message: str) -> list[ev.Event]:
        self._violations += 1
        fatal = self.state is State.HANDSHAKE or self._violations > self.limits.max_violations
        if self.state is not State.CLOSED:
            self._emit({"id": call_id, "error": RemoteError(ErrorCode.INVALID, message).to_wire()})
        return [ev.ProtocolViolation(message, fatal=fatal)]

    def _on_request(self, call_id: int, method: str, frame: dict[str, Any]) -> list[ev.Event]:
        self._peer_max_id = max(self._peer_max_id, call_id)
        if self.state is State.HANDSHAKE:
            return self._handshake_request(call_id, method, frame)
        if self.state is not State.OPEN:
            return []
        return self._open_request(call_id, method, frame)

    def _handshake_request(self, call_id: int, method: str, frame: dict[str, Any]) -> list[ev.Event]:
        return self._violation(call_id, "expected an auth request first")

    def _open_request(self, call_id: int, method: str, frame: dict[str, Any]) -> list[ev.Event]:
        raise NotImplementedError

    def _handshake_reply(self, call_id: int, result: Any, error: Any) -> list[ev.Event] | None:
        """A result (or error) that belongs to the handshake, or None if it does not."""
        return None

    def _handshake_notification(self, method: str, params: Any) -> list[ev.Event]:
        return self._violation(None, f"unexpected {method!r} during the handshake")

    def _on_result(self, call_id: int, result: Any) -> list[ev.Event]:
        if self.state is State.HANDSHAKE:
            handled = self._handshake_reply(call_id, result, None)
            if handled is not None:
                return handled
        call = self._outgoing.pop(call_id, None)
        if call is None:
            return []  # late reply to a cancelled or timed-out call
        try:
            return [ev.ResponseReceived(call_id, parse_result(call.verb, result))]
        except RemoteError as err:
            return [ev.CallFailed(call_id, err)]

    def _on_error(self, call_id: int, error: Any) -> list[ev.Event]:
        if self.state is State.HANDSHAKE:
            handled = self._handshake_reply(call_id, None, error)
            if handled is not None:
                return handled
        if self._outgoing.pop(call_id, None) is None:
            return []
        return [ev.CallFailed(call_id, RemoteError.from_wire(error))]

    def _on_notification(self, method: str, params: Any) -> list[ev.Event]:
        if self.state is State.HANDSHAKE:
            return self._handshake_notification(method, params)
        if not isinstance(params, dict):
            return self._violation(None, f"{method}: params must be an object")
        if method == "$/chunk":
            return self._on_chunk(params)
        if method == "$/ack":
            return self._on_ack(params)
        if method == "$/cancel":
            call_id = params.get("id")
            if isinstance(call_id, int) and call_id in self._incoming:
                return [ev.CancelReceived(call_id)]
            return []
        model_type = self.peer_notifications.get(method)
        if model_type is None:
            return self._violation(None, f"notification {method!r} is not on the allowlist")
        try:
            return [ev.NotificationReceived(method, model_type.model_validate(params))]
        except ValidationError as err:
            return self._violation(None, f"{method}: {err.errors()[0].get('msg')}")

    def _on_chunk(self, params: dict[str, Any]) -> list[ev.Event]:
        call_id, seq = params.get("id"), params.get("seq")
        if not isinstance(call_id, int) or not isinstance(seq, int):
            return self._violation(None, "$/chunk: id and seq must be integers")
        call = self._outgoing.get(call_id)
        if call is None or call.verb.stream != "down":
            call = self._incoming.get(call_id)
            if call is None or call.verb.stream != "up":
                return []  # a straggler of a finished or cancelled call
        if seq != call.recv_seq + 1:
            return self._violation(
                None, f"$/chunk: call {call_id} expected seq {call.recv_seq + 1}, got {seq}"
            )
        if seq - call.our_ack > self.limits.window_chunks:
            return self._violation(None, f"$/chunk: call {call_id} overran its flow-control window")
        try:
            data = base64.b64decode(params.get("data", ""), validate=True)
        except (binascii.Error, TypeError, ValueError):
            return self._violation(None, "$/chunk: data is not base64")
        call.recv_seq = seq
        return [
            ev.ChunkReceived(
                call_id, seq, str(params.get("stream", "")), data, bool(params.get("eof"))
            )
        ]

    def _receive_binary(self, data: bytes) -> list[ev.Event]:
        """A binary chunk frame (protocol/binary_frames.py). Malformed ones — a short header,
        a call never made, a call that does not stream, a seq out of order, an overrun window,
        a payload over ``chunk_bytes`` — are violations; a straggler of a call that ended or
        was cancelled is dropped quietly, as its JSON twin is. Pinned by
        tests/protocol/test_binary_frames.py."""
        if self.state is not State.OPEN:
            return self._violation(None, "binary frame before the handshake ended")
        chunk = bf.decode(data, self.limits.chunk_bytes)
        if isinstance(chunk, str):
            return self._violation(None, chunk)
        call_id, seq = chunk.call_id, chunk.seq
        call = self._outgoing.get(call_id)
        if call is None:
            call = self._incoming.get(call_id)
        if call is None:
            if call_id >= self._next_id and call_id > self._peer_max_id:
                return self._violation(None, f"binary frame: unknown call {call_id}")
            return []  # a straggler of a finished or cancelled call
        wanted = "down" if call_id in self._outgoing else "up"
        if call.verb.stream != wanted:
            return self._violation(None, f"binary frame: call {call_id} ({call.verb.name}) "
                                         "has no stream that way")
        if seq != call.recv_seq + 1:
            return self._violation(
                None, f"binary frame: call {call_id} expected seq {call.recv_seq + 1}, got {seq}")
        if seq - call.our_ack > self.limits.window_chunks:
            return self._violation(None, f"binary frame: call {call_id} overran its "
                                         f"flow-control window of {self.limits.window_chunks}")
        call.recv_seq = seq
        return [ev.ChunkReceived(call_id, seq, chunk.stream, chunk.data, chunk.eof)]

    def _on_ack(self, params: dict[str, Any]) -> list[ev.Event]:
        call_id, seq = params.get("id"), params.get("seq")
        if not isinstance(call_id, int) or not isinstance(seq, int):
            return self._violation(None, "$/ack: id and seq must be integers")
        call = self._stream_call(call_id)
        if call is None or seq <= call.acked_seq:
            return []
        if seq > call.sent_seq:
            return self._violation(None, f"$/ack: call {call_id} acked seq {seq} never sent")
        call.acked_seq = seq
        return [ev.WindowOpened(call_id)]

    def _take_id(self) -> int:
        call_id = self._next_id
        self._next_id += 1
        return call_id


__all__ = ["Connection", "Limits", "LocalProtocolError", "Role", "State", "VERBS"]
