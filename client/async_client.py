"""The asyncio SDK: the same hub API as :class:`client.http_client.HubClient`, for programs
that already run an event loop (bots, orchestrators) and want events as an async iterator.

It pins the hub's certificate exactly like spokes and the CLI do, using aiohttp's
``Fingerprint`` (SHA-256 of the DER certificate), so the API key is never sent to a host that
does not hold the hub's key. Error responses become :class:`client.errors.ApiError`, decoded
by the same function as the synchronous client's.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import AsyncIterator
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO
from urllib.parse import quote

import aiohttp

from client.errors import api_error
from client.exec_events import ACCEPT, from_binary_async, is_binary
from client.http_client import admin_credentials, local_hub_dir
from client.turns import Turn
from protocol.errors import ErrorCode, RemoteError


class AsyncHubClient:
    def __init__(self, url: str, api_key: str, pin: str | None = None) -> None:
        self.url, self.api_key, self.pin = url.rstrip("/"), api_key, pin
        self._session: aiohttp.ClientSession | None = None
        self._fingerprint: aiohttp.Fingerprint | None = None

    @classmethod
    def from_data_dir(cls, data_dir: Path | None = None) -> AsyncHubClient:
        """Use what ``hub serve`` wrote for the local admin (``admin.json``) in ``data_dir``
        (default: the local hub's, as for the sync client)."""
        return cls(*admin_credentials(local_hub_dir(data_dir)))

    async def __aenter__(self) -> AsyncHubClient:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _ssl(self) -> aiohttp.Fingerprint | bool:
        """One ``Fingerprint`` per client: aiohttp keys its connection pool by it, so a new
        one per request would open (and TLS-handshake) a connection every time."""
        if not (self.pin and self.url.startswith("https:")):
            return True
        if self._fingerprint is None:
            self._fingerprint = aiohttp.Fingerprint(
                bytes.fromhex(self.pin.lower().removeprefix("sha256:")))
        return self._fingerprint

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                headers={"Authorization": f"Bearer {self.api_key}"},
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=30))
        return self._session

    async def _open(self, method: str, path: str, body: dict[str, Any] | None = None, *,
                    raw: bytes | None = None,
                    headers: dict[str, str] | None = None) -> aiohttp.ClientResponse:
        try:
            if raw is not None:
                resp = await self._http().request(method, self.url + path, data=raw, ssl=self._ssl(),
                                                  headers={"Content-Type": "application/octet-stream"})
            else:
                resp = await self._http().request(method, self.url + path, json=body, ssl=self._ssl(),
                                                  headers=headers)
        except aiohttp.ServerFingerprintMismatch:
            raise RemoteError(ErrorCode.DENIED, "the hub's certificate does not match the pin") from None
        except aiohttp.ClientConnectionError as err:
            raise RemoteError(ErrorCode.UNAVAILABLE, f"cannot reach the hub at {self.url}: {err}") from None
        if resp.status >= 400:
            try:
                answer = await resp.read()
            finally:
                resp.release()
            raise api_error(resp.status, answer, resp.reason or "")
        return resp

    async def request(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        resp = await self._open(method, path, body)
        async with resp:
            return await resp.json(content_type=None)

    # ------------------------------------------------------------------ boxes
    async def exec_stream(self, box_id: str, cmd: list[str], timeout_s: float | None = None,
                          env: dict[str, str] | None = None,
                          workdir: str | None = None) -> AsyncIterator[dict[str, Any]]:
        """Events as the hub streams them: ``{"t": "stdout"|"stderr", "data": bytes}`` (its
        ``"d"``, the NDJSON base64, made on demand), then ``{"t": "exit", "exit_code": …}``
        (or ``{"t": "error", …}``); as the sync client's ``exec_stream``."""
        body = {"cmd": cmd, "timeout_s": timeout_s, "env": env or {}, "workdir": workdir}
        resp = await self._open("POST", f"/api/boxes/{quote(box_id)}/exec", body,
                                headers={"Accept": ACCEPT})
        async with resp:
            if is_binary(resp.headers.get("Content-Type")):
                async for event in from_binary_async(resp.content.iter_any()):
                    yield event
                return
            async for line in resp.content:
                if line.strip():
                    yield json.loads(line)

    async def put_file(self, box_id: str, path: str, data: bytes | BinaryIO, size: int,
                       mode: int = 0o644, *, parents: bool = False,
                       into_dir_name: str | None = None) -> Any:
        """Upload ``size`` bytes (a bytes object or a binary file); as the sync client's."""
        payload = data if isinstance(data, bytes) else data.read(size)
        query = f"path={quote(path)}&mode={mode:o}"
        if parents:
            query += "&parents=1"
        if into_dir_name is not None:
            query += f"&into_dir_name={quote(into_dir_name)}"
        resp = await self._open("PUT", f"/api/boxes/{quote(box_id)}/file?{query}", raw=payload)
        async with resp:
            return await resp.json(content_type=None)

    async def get_file(self, box_id: str, path: str) -> AsyncIterator[bytes]:
        resp = await self._open("GET", f"/api/boxes/{quote(box_id)}/file?path={quote(path)}")
        async with resp:
            async for chunk in resp.content.iter_chunked(256 * 1024):
                yield chunk

    async def get_bytes(self, path: str) -> bytes:
        resp = await self._open("GET", path)
        async with resp:
            return await resp.read()

    # ------------------------------------------------------------ workstreams
    async def start_workstream(self, message: str, *, spoke: str | None = None,
                               label: str | None = None, model: str | None = None,
                               image: str | None = None, auto_approve: bool = False,
                               on_loss: str = "resume") -> dict[str, Any]:
        """Start a workstream; the row, with ``message_seq`` (the seq of its first message).
        ``on_loss``: ``resume`` (move on when its spoke is lost) or ``interrupt``."""
        body = {"message": message, "spoke": spoke, "label": label, "model": model,
                "auto_approve": auto_approve, "image": image, "on_loss": on_loss}
        return dict(await self.request("POST", "/api/ws", body))

    async def send_message(self, ws_id: str, message: str) -> dict[str, Any]:
        """Send a follow-up; the row, with ``message_seq`` (the seq of this message's event)."""
        return dict(await self.request("POST", f"/api/ws/{quote(ws_id)}/messages", {"message": message}))

    async def ws_events(self, ws_id: str, after: int = 0) -> AsyncIterator[dict[str, Any]]:
        """Every event after ``after``, then live ones until the caller stops iterating.

        A dropped stream is reopened from the last seq seen, so nothing is lost or repeated."""
        while True:
            try:
                resp = await self._open("GET", f"/api/ws/{quote(ws_id)}/stream?after={after}")
                async with resp:
                    async for line in resp.content:
                        if not line.strip():
                            continue
                        event = json.loads(line)
                        if "seq" in event:
                            after = event["seq"]
                            yield event
            except (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError):
                continue

    events = ws_events

    async def wait_reply(self, ws_id: str, *, after: int | None = None, on_event: Any = None,
                         stop_on_approval: bool = False) -> dict[str, Any]:
        """Like :meth:`client.http_client.HubClient.wait_reply`; ``on_event`` may be a plain
        function or a coroutine function."""
        if after is None:
            row = await self.request("GET", f"/api/ws/{quote(ws_id)}")
            after = max(int(row["last_message_seq"]) - 1, 0)
        turn = Turn(after_seq=after)
        transcript: list[dict[str, Any]] = []
        pending: list[dict[str, Any]] = []
        async for event in self.ws_events(ws_id, after):
            transcript.append(event)
            turn.feed(event)
            if on_event is not None:
                outcome = on_event(event)
                if inspect.isawaitable(outcome):
                    await outcome
            if turn.done:
                break
            if stop_on_approval and Turn.may_wait_for_approval(event):
                row = await self.request("GET", f"/api/ws/{quote(ws_id)}")
                if turn.needs_approval(row):
                    pending = list(row["pending_approvals"])
                    break
        return turn.result(ws_id, transcript, pending)

    async def send_and_wait(self, message: str, *, ws_id: str | None = None, spoke: str | None = None,
                            label: str | None = None, model: str | None = None,
                            auto_approve: bool = False, image: str | None = None,
                            on_event: Any = None) -> dict[str, Any]:
        """Start a workstream (or continue ``ws_id``) and wait for the reply to ``message``."""
        if ws_id is None:
            row = await self.start_workstream(message, spoke=spoke, label=label, model=model,
                                              image=image, auto_approve=auto_approve)
        else:
            row = await self.send_message(ws_id, message)
        return await self.wait_reply(str(row["id"]), after=int(row["message_seq"]) - 1,
                                     on_event=on_event)
