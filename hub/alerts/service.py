"""The hub's alerting: rule state fed from the registry and the history sampler, a one-second
check, and every fired alert recorded, counted and sent.

What feeds :class:`hub.alerts.rules.AlertRules`:

- the registry's ``on_disconnected`` hook: a link that ended ``lost``
  (:meth:`hub.spoke_link.SpokeLink.gone_state`: no goodbye; a clean leave is ``left`` and is
  not an alert), unless the hub itself is stopping;
- at start, the spokes the previous hub run had connected (their row says ``lost`` with the
  reason ``hub restarted`` or ``hub shutting down``, seen within the last day): reported if
  they are not back when the startup grace ends;
- every second: the live links (in memory) and the per-verb call counts of the Prometheus
  counter (hub/metrics.py) — no database read;
- every history sample (hub/history.py, ``--history-interval``): enrolled spokes and the
  queue depth, which the sampler counts anyway.

A fired alert is an ``alert.fired`` audit row (one per spoke it names; it shows in the events
timeline and ``hub audit``), a tick of ``spokehub_alerts_fired_total{rule}``, a warning in the
log, and a message on each configured channel (hub/alerts/dispatch.py), sent in a task of its
own so a slow receiver never delays the next check. An alert no channel took is recorded as
``alert.undelivered`` with the reason. Pinned by tests/hub/test_alerts_service.py
(::test_the_service_records_counts_and_sends,
::test_spokes_of_the_last_run_are_expected_back_within_the_grace,
::test_an_alert_nobody_received_is_recorded) and tests/test_alerts_e2e.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping

from hub import audit, metrics
from hub.alerts.config import AlertsConfig
from hub.alerts.dispatch import Dispatcher
from hub.alerts.rules import Alert, AlertRules
from hub.health import connected
from hub.registry import Registry
from hub.spoke_link import SpokeLink
from hub.store import Store
from protocol.errors import ErrorCode, RemoteError

log = logging.getLogger("spokehub.hub.alerts")

RESTART_REASONS = ("hub restarted", "hub shutting down")  # hub/store/spokes.py, hub/registry.py
RESTART_HORIZON_S = 86400.0  # a spoke gone for longer was reported by an earlier run
STOP_WAIT_S = 3.0  # at the stop, sends still running get this long, then are cancelled


class AlertService:
    """Alerting for one hub: :meth:`start` with the hub (after the store opened and spokes
    were marked disconnected), :meth:`stop` before the spoke links close."""

    def __init__(self, config: AlertsConfig, store: Store, registry: Registry, hub_url: str, *,
                 clock: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time,
                 tick_s: float = 1.0, dispatcher: Dispatcher | None = None,
                 call_totals: Callable[[], Mapping[str, Mapping[str, float]]] = metrics.call_totals,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        self.config, self.store, self.registry = config, store, registry
        self.wall, self.tick_s, self.sleep, self.call_totals = wall, tick_s, sleep, call_totals
        self.rules = AlertRules(config, clock, lambda name: registry.live(name) is not None)
        self.dispatcher = dispatcher or Dispatcher(config, hub_url)
        self.enrolled = 0  # from the last history sample
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        # Whether this hub evaluates the cluster-wide rules: the cluster node's leader lease (hub/cluster/node.py,
        # set in hub/app.py); a hub alone always does.
        self.is_leader: Callable[[], bool] = lambda: True
        self._sends: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        """Hook the registry, note who should come back after a restart, start checking."""
        self.registry.on_disconnected.append(self._disconnected)
        cutoff = self.wall() - RESTART_HORIZON_S
        self.rules.restarted_with([
            row["name"] for row in await self.store.list_spokes()
            if row["revoked_at"] is None and row["state"] == "lost"
            and row["disconnect_reason"] in RESTART_REASONS and row["last_seen"] >= cutoff])
        self._task = asyncio.get_running_loop().create_task(self._run())
        where = ", ".join(self.dispatcher.channels) or "no channel (events and metrics only)"
        log.info("alerts: sent to %s; startup grace %.0f s", where, self.config.startup_grace_s)

    async def stop(self) -> None:
        """Before the links close: a hub going away loses every spoke, and that is no alert."""
        self._stopping = True
        with contextlib.suppress(ValueError):
            self.registry.on_disconnected.remove(self._disconnected)
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._sends:
            _done, slow = await asyncio.wait(set(self._sends), timeout=STOP_WAIT_S)
            for send in slow:
                send.cancel()
            await asyncio.gather(*slow, return_exceptions=True)
        await self.dispatcher.close()

    def on_sample(self, values: Mapping[str, float]) -> None:
        """The history sampler's hook: enrolled spokes and the queue depth."""
        self.enrolled = int(sum(values.get(f"spokes.{state}", 0.0)
                                for state in ("connected", "stale", "lost", "left")))
        self.rules.observe_queue(int(values.get("queue.depth", 0.0)))


    async def spokes_lost(self, names: list[str]) -> None:
        """Spokes lost with their hub (the leader's sweep, hub/cluster/node.py)."""
        if not self._stopping:
            for name in names:
                self.rules.spoke_lost(name, "its hub stopped answering")

    async def _disconnected(self, link: SpokeLink) -> None:
        if self._stopping or link.gone_state() != "lost":
            return
        self.rules.spoke_lost(link.name, link.close_reason)

    async def _run(self) -> None:
        while True:
            try:
                await self.tick()
            except RemoteError as err:
                if err.code is ErrorCode.UNAVAILABLE:  # the store is closing: the hub stops
                    return
                log.warning("alert check failed: %s", err)
            except Exception:
                log.exception("alert check failed")
            await self.sleep(self.tick_s)

    async def tick(self) -> list[Alert]:
        """One check: observe what is in memory, fire what is due; returns what fired."""
        if self.is_leader():  # the cluster-wide rules: one hub evaluates them
            live = connected(self.registry)
            self.rules.observe_spokes(live, max(self.enrolled, live))
            if self.config.verb_error_rate.enabled:
                self.rules.observe_calls(self.call_totals())
        fired = self.rules.due()
        for alert in fired:
            await self.fire(alert)
        return fired

    async def fire(self, alert: Alert) -> None:
        """Record, count and send one alert (the sending in its own task)."""
        if self._stopping:
            return
        at = self.wall()
        metrics.ALERTS_FIRED.labels(alert.rule).inc()
        log.warning("alert %s: %s", alert.rule, alert.text)
        reasons = alert.details.get("reasons", {})
        for name in alert.spokes or ("",):
            detail = f"spoke {name!r} lost: {reasons.get(name) or 'no goodbye'}" \
                if name and len(alert.spokes) > 1 else alert.text
            await audit.record(self.store, "alert.fired", alert.rule, detail, spoke=name)
        if self.dispatcher.channels:
            task = asyncio.get_running_loop().create_task(self._send(alert, at))
            self._sends.add(task)
            task.add_done_callback(self._sends.discard)

    async def _send(self, alert: Alert, at: float) -> None:
        results = await self.dispatcher.send(alert, at)
        failed = {channel: why for channel, why in results.items() if why != "ok"}
        for channel, why in failed.items():
            log.warning("alert %s could not be sent by %s: %s", alert.rule, channel, why)
            await audit.record(self.store, "alert.undelivered", alert.rule,
                               f"{channel}: {alert.text}", spoke=alert.spokes[0] if len(alert.spokes) == 1 else "",
                               result=f"failed: {why}")
