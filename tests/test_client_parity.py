"""The README says the sync client and the async SDK have the same calls: hold them to it."""

from __future__ import annotations

import inspect

from client.async_client import AsyncHubClient
from client.http_client import HubClient

# Sync-only on purpose: exec_once is the CLI's one-shot fast path (its own socket, no
# http.client import); the async client has one connection pool for everything.
SYNC_ONLY = {"exec_once"}


def _public(cls: type) -> dict[str, object]:
    return {name: member for name, member in inspect.getmembers(cls)
            if not name.startswith("_") and callable(member)}


def test_the_two_clients_have_the_same_calls() -> None:
    sync, aio = _public(HubClient), _public(AsyncHubClient)
    assert set(sync) - SYNC_ONLY == set(aio), (set(sync) ^ set(aio)) - SYNC_ONLY


def test_the_same_calls_take_the_same_arguments() -> None:
    sync, aio = _public(HubClient), _public(AsyncHubClient)
    for name in set(sync) - SYNC_ONLY:
        params_sync = list(inspect.signature(sync[name]).parameters)  # type: ignore[arg-type]
        params_aio = list(inspect.signature(aio[name]).parameters)  # type: ignore[arg-type]
        assert params_sync == params_aio, f"{name}: {params_sync} != {params_aio}"
