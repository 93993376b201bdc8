"""The alert service (hub/alerts/service.py) over the in-memory cluster
(tests/hub/memory_cluster.py: the real registry and store, real spoke sessions over the
in-memory pipe, injected clocks), sending to a real webhook server on 127.0.0.1; the model
probe (hub/health.py) against a real local HTTP server; the Prometheus additions
(hub/metrics.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from prometheus_client import generate_latest

from hub import metrics
from hub.alerts.config import AlertsConfig, SpokeLostRule
from hub.alerts.dispatch import Dispatcher
from hub.alerts.service import AlertService
from hub.health import Health, ModelProbe
from hub.model_config import ModelConfig, ModelsConfig
from tests.alert_sinks import WebhookSink
from tests.cluster import free_port
from tests.hub.memory_cluster import MemoryCluster
from tests.llm_server import LLMServer, Say
from tests.protocol.helpers import FakeClock


async def _nap(_s: float) -> None:
    await asyncio.sleep(0)


def _service(hub: MemoryCluster, config: AlertsConfig) -> AlertService:
    return AlertService(config, hub.store, hub.registry, "https://hub.test", clock=hub.clock,
                        wall=hub.wall, tick_s=3600,
                        dispatcher=Dispatcher(config, "https://hub.test", sleep=_nap))


async def _rows(hub: MemoryCluster, prefix: str = "alert.") -> list[dict[str, Any]]:
    return [r for r in await hub.store.audit_after(0, 1000) if r["kind"].startswith(prefix)]


def _fired_count(rule: str) -> float:
    return metrics.ALERTS_FIRED.labels(rule)._value.get()


async def _until(predicate: Any, what: str) -> None:
    await MemoryCluster.until(predicate, what, timeout=30)


async def test_the_service_records_counts_and_sends(tmp_path: Path) -> None:
    before = _fired_count("spoke_lost")
    with WebhookSink(fail_first=1) as sink:
        config = AlertsConfig(startup_grace_s=0, webhook=sink.url)
        async with MemoryCluster(tmp_path) as hub:
            service = _service(hub, config)
            await service.start()
            for name in ("calm", "crash", "blip"):
                await hub.join(name)
            hub.spokes["calm"].stop.set()  # a clean goodbye: "left", never an alert
            await hub.spokes["calm"].stopped()
            await hub.drop("crash")  # gone without a goodbye
            await _until(lambda: service.rules.pending_lost() == ["crash"], "crash seen lost")
            await hub.drop("blip")
            await _until(lambda: "blip" in service.rules.pending_lost(), "blip seen lost")
            await hub.join("blip")  # ... and back within the rule's "for"
            await _until(lambda: hub.registry.live("calm") is None, "calm to leave")
            hub.clock.advance(4)
            assert await service.tick() == []
            hub.clock.advance(1)
            [alert] = await service.tick()
            assert (alert.rule, alert.spokes) == ("spoke_lost", ("crash",))
            await _until(lambda: sink.bodies, "the webhook to receive the alert (after a 503)")
            assert sink.attempts == 2 and sink.texts() == [
                "[spokehub https://hub.test] spoke 'crash' lost: spoke died"]
            body = sink.alerts()[0]
            assert (body["rule"], body["spokes"], body["hub"]) == ("spoke_lost", ["crash"], "https://hub.test")
            [row] = await _rows(hub)
            assert (row["kind"], row["subject"], row["spoke"], row["actor"]) == (
                "alert.fired", "spoke_lost", "crash", "")
            assert _fired_count("spoke_lost") == before + 1
            hub.clock.advance(600)
            assert await service.tick() == []
            await service.stop()
            await service.stop()  # idempotent


async def test_spokes_of_the_last_run_are_expected_back_within_the_grace(tmp_path: Path) -> None:
    async with MemoryCluster(tmp_path) as hub:
        for name in ("back", "gone", "left"):
            await hub.join(name)
        hub.spokes["left"].stop.set()
        await hub.spokes["left"].stopped()
        await _until(lambda: hub.registry.live("left") is None, "left to leave")
        await hub.registry.close_all(timeout_s=5)  # the hub stops: "hub shutting down"
        service = _service(hub, replace(AlertsConfig(), startup_grace_s=30))  # the next run
        await service.start()
        await hub.join("back")
        hub.clock.advance(29)
        assert await service.tick() == []
        hub.clock.advance(1)
        [alert] = await service.tick()
        assert alert.spokes == ("gone",)
        assert alert.text == "spoke 'gone' lost: did not come back after the hub restarted"
        await service.stop()


async def test_an_alert_nobody_received_is_recorded(tmp_path: Path) -> None:
    config = AlertsConfig(startup_grace_s=0, webhook=f"http://127.0.0.1:{free_port()}/hook",
                          webhook_retries=1, spoke_lost=SpokeLostRule(for_s=0))
    async with MemoryCluster(tmp_path) as hub:
        service = _service(hub, config)
        await service.start()
        await hub.join("a")
        await hub.drop("a")
        await _until(lambda: service.rules.pending_lost() == ["a"], "a seen lost")
        assert [a.spokes for a in await service.tick()] == [("a",)]
        await _until(lambda: len(service._sends) == 0, "the send to give up")
        rows = await _rows(hub)
        assert [r["kind"] for r in rows] == ["alert.fired", "alert.undelivered"]
        assert rows[1]["spoke"] == "a" and rows[1]["result"].startswith("failed: cannot connect")
        await service.stop()


# ------------------------------------------------------------------------ model probe
@pytest.fixture
async def endpoint() -> AsyncIterator[dict[str, Any]]:
    state: dict[str, Any] = {"status": 404, "hits": 0}

    async def models(request: web.Request) -> web.Response:
        state["hits"] += 1
        return web.Response(status=state["status"])

    app = web.Application()
    app.router.add_get("/v1/models", models)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    state["server"], state["url"] = server, f"http://127.0.0.1:{server.port}/v1"
    yield state
    await server.close()


async def test_model_probe_is_cached_and_backgrounded(endpoint: dict[str, Any]) -> None:
    clock = FakeClock()
    config = ModelsConfig({"local": ModelConfig("local", "openai", "m", base_url=endpoint["url"])},
                          default="local")
    probe = ModelProbe(lambda: config, every_s=30, timeout_s=2, clock=clock)
    health = Health(lambda: 1, probe)
    assert health.report() == {"ok": True, "status": "ok", "reasons": [], "spokes_connected": 1}
    await _until(lambda: endpoint["hits"] == 1, "the first check")  # started, not awaited
    endpoint["status"] = 503
    await asyncio.sleep(0.05)
    assert probe.problem() is None and endpoint["hits"] == 1  # cached for 30 s
    clock.advance(30)
    assert probe.problem() is None  # the stale answer, and a refresh in the background
    await _until(lambda: probe.problem() is not None, "the refresh")
    assert Health(lambda: 0, probe).report() == {
        "ok": True, "status": "degraded", "spokes_connected": 0, "reasons": [
            "no spoke connected", "the default model 'local' is unreachable: HTTP 503"]}
    await endpoint["server"].close()
    clock.advance(30)
    probe.problem()
    await _until(lambda: "cannot connect" in (probe.problem() or ""), "a refused connection")
    await probe.close()
    assert ModelProbe(lambda: ModelsConfig()).problem() is None  # no model: nothing to check


# --------------------------------------------------------------------------- metrics
async def test_tokens_the_hub_records_are_counted_by_model(tmp_path: Path) -> None:
    llm = await LLMServer().start()
    llm.add_script("hi", [Say("hello")])
    try:
        async with MemoryCluster(tmp_path, llm_url=llm.openai_url) as hub:
            await hub.join("a")
            ws_id = (await hub.workstreams.start("[script:hi] x", model="local"))["id"]
            for _ in range(2000):
                if (await hub.workstreams.get(ws_id))["state"] == "idle":
                    break
                await asyncio.sleep(0.005)
            [usage] = await hub.workstreams.db.usage_by_spoke()
            assert usage["input_tokens"] > 0
            counted = metrics.LLM_TOKENS.labels(usage["model"], "input")._value.get()
            assert counted >= usage["input_tokens"]
    finally:
        await llm.stop()


def test_metrics_snapshot_tokens_and_call_totals() -> None:
    collector = metrics.SnapshotCollector()
    assert list(collector.collect()) == []  # nothing before the first sample
    collector.set({"spokes.connected": 2.0, "spokes.lost": 1.0, "workstreams.queued": 4.0,
                   "queue.depth": 4.0, "boxes.live": 3.0, "latency.p50.box.exec": 0.1}, at=5.0)
    got = {(s.name, tuple(sorted(s.labels.items()))): s.value
           for family in collector.collect() for s in family.samples}
    assert got == {
        ("spokehub_spokes", (("state", "connected"),)): 2.0,
        ("spokehub_spokes", (("state", "lost"),)): 1.0,
        ("spokehub_workstreams", (("state", "queued"),)): 4.0,
        ("spokehub_queue_depth", ()): 4.0, ("spokehub_boxes", ()): 3.0,
        ("spokehub_snapshot_timestamp_seconds", ()): 5.0}
    for i in range(metrics.MAX_MODEL_LABELS + 5):
        metrics.count_tokens(f"model-{i}", 10, 2)
    text = generate_latest(metrics.REGISTRY).decode()
    assert 'spokehub_llm_tokens_total{kind="input",model="model-0"} 10.0' in text
    assert 'spokehub_llm_tokens_total{kind="output",model="other"}' in text
    assert f'model="model-{metrics.MAX_MODEL_LABELS + 4}"' not in text
    assert 'spokehub_alerts_fired_total{rule="queue_depth"}' in text
    assert "spokehub_spoke_reconnects_total" in text
    metrics.CALLS.labels("box.stats", "internal").inc(2)
    assert metrics.call_totals()["box.stats"]["internal"] >= 2
