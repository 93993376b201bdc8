"""Dials the hub, checks its pin, and reconnects: the loop around :class:`spoke.session.Session`.

The spoke always dials out (no open port). Before anything secret is sent, the hub's
certificate is checked against the pin from the join token; a mismatch, a rejected identity or
a revocation stops the spoke for good, while any other failure reconnects with jittered
exponential backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import ssl
import time

import websockets
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from protocol.tokens import pins_match
from spoke.identity import HUB_CERT_FILE
from spoke.session import Fatal, Session, SpokeRuntime, WebsocketsTransport

__all__ = ["Fatal", "SpokeRuntime", "run"]

log = logging.getLogger("spokehub.spoke")


def _connect_url(hub_url: str) -> str:
    if hub_url.startswith("https://"):
        return "wss://" + hub_url[len("https://") :] + "/spoke/connect"
    return "ws://" + hub_url[len("http://") :] + "/spoke/connect"


@functools.cache
def tls_context(pinned: bool) -> ssl.SSLContext:
    """The one TLS context of this process per kind (making one loads the CA store: ~20 ms of
    CPU, once per connect attempt before). ``pinned``: trust comes from the pin, verified by
    hand after the handshake; else a hub behind a TLS proxy with a CA-issued certificate (full
    verification, hostname included; SSL_CERT_FILE adds a private CA)."""
    ctx = ssl.create_default_context()
    if pinned:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


async def run(rt: SpokeRuntime, stop: asyncio.Event) -> None:
    """Serve until ``stop`` is set; raises :class:`Fatal` when retrying would be wrong."""
    while not stop.is_set():
        started = time.monotonic()
        authenticated = False
        failure = ""
        try:
            authenticated = await _session(rt, stop)
        except Fatal:
            raise
        except (OSError, TimeoutError, InvalidHandshake, InvalidURI, ConnectionClosed) as err:
            failure = str(err) or type(err).__name__
        if stop.is_set():
            return
        if authenticated:
            rt.backoff.session_ended(time.monotonic() - started)
        delay = rt.backoff.next_delay(time.monotonic())
        if rt.hub_away:  # the hub said it is going away: failures are expected, log them quietly
            log.debug("hub not back yet (%s); retrying in %.1fs", failure or "closed", delay)
        else:
            if failure:
                log.warning("connection to %s failed: %s", rt.state.hub_url, failure)
            log.info("reconnecting in %.1fs", delay)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), delay)


async def _session(rt: SpokeRuntime, stop: asyncio.Event) -> bool:
    url = _connect_url(rt.state.hub_url)
    pinned = url.startswith("wss://") and bool(rt.state.pin)
    ctx = tls_context(pinned) if url.startswith("wss://") else None
    try:
        return await _connected_session(rt, stop, url, ctx, pinned)
    except ssl.SSLCertVerificationError as err:
        raise Fatal(f"the hub's TLS certificate is not trusted ({err.verify_message}); its join "
                    "token has no pin, so it must carry a certificate your CAs accept") from None


async def _connected_session(rt: SpokeRuntime, stop: asyncio.Event, url: str,
                             ctx: ssl.SSLContext | None, pinned: bool) -> bool:
    async with websockets.connect(
        url,
        ssl=ctx,
        max_size=rt.limits.max_frame_bytes * 4,
        open_timeout=10,
        ping_interval=None,
        close_timeout=2,
        compression=None,
    ) as socket:
        if pinned:
            der = socket.transport.get_extra_info("ssl_object").getpeercert(binary_form=True)
            if not pins_match(rt.state.pin, der or b""):
                raise Fatal(
                    f"the hub's TLS certificate does not match the pin {rt.state.pin[:23]}…: "
                    "refusing to talk to it (wrong token, or someone in the middle)"
                )
            _save_hub_cert(rt, der)
        return await Session(rt, WebsocketsTransport(socket)).run(stop)


def _save_hub_cert(rt: SpokeRuntime, der: bytes | None) -> None:
    """Keep the pinned certificate as a PEM trust anchor, so model calls through the hub's
    relay (made by the official SDKs over their own HTTP clients) verify exactly this cert."""
    if not der:
        return
    path = rt.identity.data_dir / HUB_CERT_FILE
    pem = ssl.DER_cert_to_PEM_cert(der)
    if not path.exists() or path.read_text() != pem:
        path.write_text(pem)
