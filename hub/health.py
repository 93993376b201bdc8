"""What ``GET /healthz`` says beyond "the hub answers": the reasons it is degraded.

``/healthz`` is what load balancers and probes call, many times a minute and without
credentials, so it must answer at once and never wait on anything remote. Two conditions make
the hub *degraded* (HTTP 200 all the same: the hub itself is up, and a balancer that took it
out of rotation would not bring a spoke back):

- no spoke is connected (nothing can run work);
- the default model's endpoint is down: checked by a GET of ``BASE_URL/models`` with a short
  timeout, in a background task, at most every :data:`CHECK_EVERY_S` seconds and only while
  someone asks. Any HTTP answer below 500 (401 without a key, 404 where there is no such
  path) means the endpoint is up; no connection, a timeout or a 5xx means it is down. The
  request that finds the cached answer stale gets that answer and starts the refresh.

The reason names the model's alias and what failed, never its URL (``/healthz`` is public).
Pinned by tests/hub/test_alerts_service.py::test_model_probe_is_cached_and_backgrounded and
tests/test_alerts_e2e.py::test_healthz_is_degraded_without_spokes_or_model.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable
from typing import Any

import aiohttp

from hub.model_config import ModelsConfig
from hub.registry import Registry

log = logging.getLogger("spokehub.hub.health")

CHECK_EVERY_S = 30.0
TIMEOUT_S = 3.0


class ModelProbe:
    """The cached answer to "is the default model's endpoint up?"."""

    def __init__(self, models: Callable[[], ModelsConfig], *, every_s: float = CHECK_EVERY_S,
                 timeout_s: float = TIMEOUT_S, clock: Callable[[], float] = time.monotonic) -> None:
        self.models, self.every_s, self.timeout_s, self.clock = models, every_s, timeout_s, clock
        self._url = ""
        self._problem: str | None = None  # the last answer: None is up (or not known yet)
        self._checked_at: float | None = None
        self._task: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None

    def target(self) -> tuple[str, str] | None:
        """``(alias, URL to GET)`` of the default model, or None when there is none."""
        config = self.models()
        chain = config.chain(None)
        if not chain:
            return None
        return chain[0].alias, chain[0].url() + "/models"

    def problem(self) -> str | None:
        """The cached reason the model is down (None: up, unknown yet, or no model), and a
        refresh started in the background when the answer is older than ``every_s``. Never
        waits. Pinned by tests/hub/test_alerts_service.py::
        test_model_probe_is_cached_and_backgrounded."""
        target = self.target()
        if target is None:
            return None
        if target[1] != self._url:  # the default changed: the old answer is about another model
            self._url, self._problem, self._checked_at = target[1], None, None
        stale = self._checked_at is None or self.clock() - self._checked_at >= self.every_s
        if stale and (self._task is None or self._task.done()):
            self._task = asyncio.get_running_loop().create_task(self.refresh())
        return self._problem

    async def refresh(self) -> None:
        """Check the endpoint now and keep the answer; a change is logged (with the URL)."""
        target = self.target()
        if target is None:
            return
        alias, url = target
        why = await self._check(url)
        problem = None if why is None else f"the default model {alias!r} is unreachable: {why}"
        if url == self._url or not self._url:
            if problem != self._problem:
                if problem:
                    log.warning("model endpoint %s down: %s", url, why)
                elif self._checked_at is not None:
                    log.info("model endpoint %s is up again", url)
            self._url, self._problem, self._checked_at = url, problem, self.clock()

    async def _check(self, url: str) -> str | None:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.timeout_s))
        try:
            async with self._session.get(url, allow_redirects=False) as response:
                if response.status >= 500:
                    return f"HTTP {response.status}"
                return None
        except TimeoutError:
            return f"no answer within {self.timeout_s:g} s"
        except aiohttp.ClientConnectorError as err:  # the reason alone: no address
            code = err.os_error.errno
            return f"cannot connect ({os.strerror(code) if code else type(err.os_error).__name__})"
        except (aiohttp.ClientError, OSError) as err:
            return type(err).__name__

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        session, self._session = self._session, None
        if session is not None:
            await session.close()


def connected(registry: Registry) -> int:
    """Spokes with an open link: a count, without the sorting of ``live_links()`` (this is
    asked by every ``/healthz`` and every alert check, with thousands of spokes); those
    other hubs of the cluster hold count too (hub/cluster/links.py)."""
    here = sum(1 for link in registry.links.values() if not link.closed)
    return here + sum(1 for name in registry.remote.holders if name not in registry.links)


class Health:
    """The body of ``GET /healthz``: ``{"ok": true, "status": "ok" | "degraded",
    "reasons": [...], "spokes_connected": N}`` (docs/api.md)."""

    def __init__(self, connected: Callable[[], int], probe: ModelProbe | None = None) -> None:
        self.connected, self.probe = connected, probe

    def report(self) -> dict[str, Any]:
        spokes = self.connected()
        reasons = [] if spokes else ["no spoke connected"]
        problem = self.probe.problem() if self.probe is not None else None
        if problem:
            reasons.append(problem)
        return {"ok": True, "status": "degraded" if reasons else "ok", "reasons": reasons,
                "spokes_connected": spokes}
