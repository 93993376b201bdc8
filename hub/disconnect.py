"""Work that must end when its HTTP client goes away.

aiohttp keeps running a handler after its client disconnected (handler cancellation is off:
most handlers must finish what they started), so a streaming exec whose caller pressed Ctrl-C
would wait for its command to end — forever without a timeout — holding one of the spoke's
exec slots. The handlers whose work belongs to the caller (exec, file download) run it under
:func:`cancelled_on_disconnect`: the moment the connection closes, the work is cancelled, the
hub cancels the verb call, and the spoke kills the process tree. Pinned by
tests/test_exec_disconnect.py.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable
from typing import TypeVar

from aiohttp import web

T = TypeVar("T")
POLL_S = 0.2


class ClientGone(ConnectionResetError):
    """The HTTP client disconnected; its work was cancelled."""


def client_gone(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


async def _until_gone(request: web.Request) -> None:
    # aiohttp has no public "client disconnected" event without handler cancellation, so
    # the transport is polled: cheap, and the caller's work ends within POLL_S.
    while not client_gone(request):  # noqa: ASYNC110
        await asyncio.sleep(POLL_S)


async def cancelled_on_disconnect(request: web.Request, work: Awaitable[T]) -> T:
    """``await work``, cancelling it (and raising :class:`ClientGone`) as soon as the client
    of ``request`` disconnects."""
    task = asyncio.ensure_future(work)
    watch = asyncio.ensure_future(_until_gone(request))
    try:
        await asyncio.wait({task, watch}, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            return task.result()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        raise ClientGone("the client went away")
    finally:
        watch.cancel()
        if not task.done():  # we were cancelled ourselves
            task.cancel()
