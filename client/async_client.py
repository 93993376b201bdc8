"""The asyncio SDK: the same hub API as :class:`client.http_client.HubClient`, for programs
that already run an event loop (bots, orchestrators) and want events as an async iterator.

It pins the hub's certificate exactly like spokes and the CLI do, using aiohttp's
``Fingerprint`` (SHA-256 of the DER certificate), so the API key is never sent to a host that
does not hold the hub's key.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import quote

import aiohttp

from client.http_client import admin_credentials
from client.turns import Turn, last_user_seq
from protocol.errors import ErrorCode, RemoteError


class AsyncHubClient:
    def __init__(self, url: str, api_key: str, pin: str | None = None) -> None:
        self.url, self.api_key, self.pin = url.rstrip("/"), api_key, pin
        self._session: aiohttp.ClientSession | None = None

    @classmethod
    def from_data_dir(cls, data_dir: Path) -> AsyncHubClient:
        """Use what ``hub serve`` wrote for the local admin (``admin.json``)."""
        return cls(*admin_credentials(data_dir))

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
        if self.pin and self.url.startswith("https:"):
            return aiohttp.Fingerprint(bytes.fromhex(self.pin.lower().removeprefix("sha256:")))
        return True

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                headers={"Authorization": f"Bearer {self.api_key}"},
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=30))
        return self._session

    async def _open(self, method: str, path: str, body: dict[str, Any] | None = None) -> aiohttp.ClientResponse:
        try:
            resp = await self._http().request(method, self.url + path, json=body, ssl=self._ssl())
        except aiohttp.ServerFingerprintMismatch:
            raise RemoteError(ErrorCode.DENIED, "the hub's certificate does not match the pin") from None
        except aiohttp.ClientConnectionError as err:
            raise RemoteError(ErrorCode.UNAVAILABLE, f"cannot reach the hub at {self.url}: {err}") from None
        if resp.status >= 400:
            try:
                doc = await resp.json(content_type=None)
                error = doc.get("error") or {}
                code, message = error.get("code", "internal"), error.get("message", resp.reason)
            except (ValueError, AttributeError):
                code, message = "internal", f"HTTP {resp.status}"
            finally:
                resp.release()
            try:
                kind = ErrorCode(code)
            except ValueError:
                kind = ErrorCode.INTERNAL
            raise RemoteError(kind, str(message))
        return resp

    async def request(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        resp = await self._open(method, path, body)
        async with resp:
            return await resp.json(content_type=None)

    # ------------------------------------------------------------ workstreams
    async def events(self, ws_id: str, after: int = 0) -> AsyncIterator[dict[str, Any]]:
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

    async def send_and_wait(self, message: str, *, ws_id: str | None = None, spoke: str | None = None,
                            label: str | None = None, model: str | None = None,
                            auto_approve: bool = False, image: str | None = None) -> dict[str, Any]:
        """Start a workstream (or continue ``ws_id``) and wait for the reply to ``message``.

        Returns ``{"id", "answer", "state", "error", "transcript"}`` like the sync client."""
        if ws_id is None:
            body = {"message": message, "spoke": spoke, "label": label, "model": model,
                    "auto_approve": auto_approve, "image": image}
            ws_id = str((await self.request("POST", "/api/ws", body))["id"])
        else:
            await self.request("POST", f"/api/ws/{quote(ws_id)}/messages", {"message": message})
        so_far = await self.request("GET", f"/api/ws/{quote(ws_id)}/events")
        turn = Turn(after_seq=last_user_seq(so_far) - 1 if so_far else 0)
        transcript: list[dict[str, Any]] = []
        async for event in self.events(ws_id):
            transcript.append(event)
            turn.feed(event)
            if turn.done:
                break
        return {"id": ws_id, "answer": turn.answer, "state": turn.state, "error": turn.error,
                "transcript": transcript}
