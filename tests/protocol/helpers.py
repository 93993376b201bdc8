"""Shared helpers: a fake clock and a hub/spoke pair of Connections wired in memory."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any

from protocol import binary_frames as bf
from protocol import events as ev
from protocol import messages
from protocol.connection import Connection, Limits
from protocol.sides import HubConnection, SpokeConnection

BOX = "bx_0123456789abcdef"
WS = "ws_0123456789abcdef"
CHALLENGE = b"\x00fresh-challenge\n\xff"

AUTH = messages.AuthParams(
    protocol=messages.PROTOCOL_VERSION,
    mode="enroll",
    name="spoke-1",
    public_key="cHVibGlj",
    signature="c2lnbmF0dXJl",
    token_id="tok_1",
    token_secret="secret",
    version="0.1.0",
    labels=["gpu"],
    caps=["stream", "cancel", "workstreams"],
)
AUTH_RESULT = messages.AuthResult(
    session="sess-1", protocol=messages.PROTOCOL_VERSION, heartbeat_s=3.0, stale_after_s=10.0
)

# A valid (params, result) pair for every verb in the table.
SAMPLES: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "box.create": (
        {"box_id": BOX, "image": "sandbox", "env": {"A_1": "x"}},
        {"box_id": BOX, "image": "sandbox", "state": "running", "created_at": 1.5},
    ),
    "box.list": ({}, {"boxes": [{"box_id": BOX, "image": "i", "state": "up", "created_at": 2.0}]}),
    "box.exec": ({"box_id": BOX, "cmd": ["echo", "hi"], "workdir": "/w"}, {"exit_code": 3}),
    "box.attach": ({"box_id": BOX, "exec_id": "ex_0123456789abcdef", "offset": 5}, {"exit_code": 0}),
    "box.logs": ({"box_id": BOX, "tail": 5}, {"data": "aGk="}),
    "box.destroy": ({"box_id": BOX}, {"existed": True}),
    "box.put_file": ({"box_id": BOX, "path": "/tmp/f", "size": 3}, {"size": 3}),
    "box.get_file": ({"box_id": BOX, "path": "/tmp/f"}, {"size": 7}),
    "box.stats": ({"box_id": BOX}, {"memory_bytes": 10, "cpu_percent": 1.5, "pids": 2}),
    "box.open": ({"box_id": BOX, "channel_id": "ch_" + "0" * 16, "kind": "pty", "cmd": ["sh"],
                  "rows": 30, "cols": 100}, {"exit_code": 0}),
    "box.input": ({"channel_id": "ch_" + "0" * 16, "data": "aGk=", "rows": 3, "cols": 4}, {}),
    "box.reap": ({"keep": [BOX]}, {"removed": ["bx_ffffffffffffffff"]}),
    "box.pause": ({"box_id": BOX}, {"box_id": BOX, "image": "img", "state": "paused",
                                    "created_at": 1.0}),
    "box.resume": ({"box_id": BOX}, {"box_id": BOX, "image": "img", "state": "running",
                                     "created_at": 1.0}),
    "ws.start": (
        {"ws_id": WS, "box_id": BOX, "message": "hi", "models": [{"alias": "m", "provider": "openai"}]},
        {"box_id": BOX, "image": "sandbox"},
    ),
    "ws.send": ({"ws_id": WS, "message": "more"}, {"known": True}),
    "ws.approve": ({"ws_id": WS, "call_id": "c1", "approved": False, "reason": "no"}, {}),
    "ws.cancel": ({"ws_id": WS}, {"known": False}),
    "ws.close": ({"ws_id": WS}, {}),
    "spoke.info": ({}, {"name": "spoke-1", "version": "0.1.0", "boxes": []}),
    "spoke.ping": ({}, {}),
}


class FakeClock:
    """An injectable clock: ``now`` only moves when a test advances it."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def frames(conn: Connection) -> list[dict[str, Any]]:
    """Drain and decode everything ``conn`` wants to send; a binary chunk frame
    (protocol/binary_frames.py) is shown as the ``$/chunk`` notification it stands for."""
    return [_as_json(f) if isinstance(f, bytes) else json.loads(f) for f in conn.data_to_send()]


def _as_json(data: bytes) -> dict[str, Any]:
    chunk = bf.decode(data, 1 << 30)
    assert not isinstance(chunk, str), chunk
    return {"jsonrpc": "2.0", "method": "$/chunk", "params": {
        "id": chunk.call_id, "seq": chunk.seq, "stream": chunk.stream,
        "data": base64.b64encode(chunk.data).decode(), "eof": chunk.eof}}


def frame(**fields: Any) -> str:
    """A JSON-RPC 2.0 frame as a peer would send it."""
    return json.dumps({"jsonrpc": "2.0", **fields})


def error_kind(f: dict[str, Any]) -> str:
    return str(f["error"]["data"]["kind"])


def pump(src: Connection, dst: Connection) -> list[ev.Event]:
    """Deliver everything ``src`` queued to ``dst``; return ``dst``'s events."""
    out: list[ev.Event] = []
    for data in src.data_to_send():
        out.extend(dst.receive_data(data))
    return out


@dataclass
class Pair:
    clock: FakeClock
    hub: HubConnection
    spoke: SpokeConnection

    def to_spoke(self) -> list[ev.Event]:
        return pump(self.hub, self.spoke)

    def to_hub(self) -> list[ev.Event]:
        return pump(self.spoke, self.hub)

    def call(self, verb: str, params: dict[str, Any], **kw: Any) -> tuple[int, ev.RequestReceived]:
        """Hub sends a request; return its id and the spoke's RequestReceived."""
        call_id = self.hub.send_request(verb, params, **kw)
        (got,) = self.to_spoke()
        assert isinstance(got, ev.RequestReceived)
        assert got.call_id == call_id
        return call_id, got


def new_pair(
    limits: Limits | None = None,
    spoke_limits: Limits | None = None,
    clock: FakeClock | None = None,
) -> Pair:
    clock = clock or FakeClock()
    hub = HubConnection(clock, limits or Limits())
    spoke = SpokeConnection(clock, spoke_limits or limits or Limits())
    return Pair(clock, hub, spoke)


def open_pair(
    limits: Limits | None = None,
    spoke_limits: Limits | None = None,
    clock: FakeClock | None = None,
) -> Pair:
    """A pair that has completed hello -> auth -> accepted."""
    pair = new_pair(limits, spoke_limits, clock)
    pair.hub.send_hello(CHALLENGE, "hub-test")
    assert [type(e) for e in pair.to_spoke()] == [ev.HelloReceived]
    pair.spoke.send_auth(AUTH)
    assert [type(e) for e in pair.to_hub()] == [ev.AuthRequested]
    pair.hub.accept_auth(AUTH_RESULT)
    assert pair.to_spoke() == [ev.Authenticated(AUTH_RESULT)]
    return pair
