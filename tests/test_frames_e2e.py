"""Bad frames sent to a real hub get typed errors; the hub keeps serving everyone else."""

from __future__ import annotations

import json
import ssl
import time
from typing import Any

import websockets
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from protocol import events as ev
from protocol import messages
from protocol.sides import SpokeConnection
from protocol.tokens import JoinToken
from spoke.identity import Identity
from tests.cluster import Hub, Spoke


def _ctx() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    return ctx


async def _enrolled_raw_spoke(hub: Hub, name: str) -> tuple[Any, SpokeConnection]:
    """A hand-driven spoke: the real handshake, then whatever frames a test wants to send."""
    token = JoinToken.decode(hub.token(name))
    ws = await websockets.connect(f"wss://127.0.0.1:{hub.port}/spoke/connect", ssl=_ctx(), max_size=None)
    conn = SpokeConnection(clock=time.monotonic)
    [hello] = conn.receive_data(await ws.recv())
    assert isinstance(hello, ev.HelloReceived)
    key = Ed25519PrivateKey.generate()
    conn.send_auth(messages.AuthParams(
        protocol=messages.PROTOCOL_VERSION, mode="enroll", name=name, public_key=Identity.public_b64(key),
        signature=Identity.sign(key, hello.challenge, name, token.pin),
        token_id=token.token_id, token_secret=token.secret))
    for frame in conn.data_to_send():
        await ws.send(frame)
    [authed] = conn.receive_data(await ws.recv())
    assert isinstance(authed, ev.Authenticated)
    return ws, conn


async def _next_error(ws: Any) -> dict[str, Any]:
    while True:
        frame = json.loads(await ws.recv())
        if "error" in frame:
            return dict(frame["error"])


async def test_garbage_before_auth_is_refused(hub: Hub, spoke: Spoke) -> None:
    async with websockets.connect(f"wss://127.0.0.1:{hub.port}/spoke/connect", ssl=_ctx()) as ws:
        await ws.recv()  # hello
        await ws.send("this is not json")
        err = await _next_error(ws)
        assert err["data"]["kind"] == "invalid" and "not JSON" in err["message"]
        await ws.wait_closed()
    assert hub.client().request("GET", "/healthz")["ok"] is True
    assert hub.connected(spoke.name)


async def test_bad_frames_after_auth_get_typed_errors(hub: Hub, spoke: Spoke) -> None:
    ws, _conn = await _enrolled_raw_spoke(hub, "raw-frames")
    try:
        cases = [
            ("{broken", "invalid", "not JSON"),
            (json.dumps({"jsonrpc": "2.0", "method": "no.such.thing", "params": {}}), "invalid", "not on the allowlist"),
            (json.dumps({"jsonrpc": "2.0", "id": 7, "method": "box.create", "params": {}}), "denied", "serves no verbs"),
            (json.dumps({"jsonrpc": "1.0", "id": 1}), "invalid", "JSON-RPC 2.0"),
            ("x" * (1024 * 1024 + 10), "invalid", "exceeds the limit"),
        ]
        for frame, kind, fragment in cases:
            await ws.send(frame)
            err = await _next_error(ws)
            assert err["data"]["kind"] == kind and fragment in err["message"], err
        assert hub.connected("raw-frames")  # still connected after every bad frame
        # A frame beyond the transport limit closes only this connection.
        await ws.send("y" * (5 * 1024 * 1024))
        await ws.wait_closed()
        assert ws.close_code == 1009
    finally:
        await ws.close()
    assert hub.client().request("GET", "/healthz")["ok"] is True
    assert hub.connected(spoke.name)
    res = hub.cli("box", "create", "--spoke", spoke.name, "--image", "spokehub-sandbox:bookworm")
    assert res.returncode == 0, res.stderr
