"""Alerts, metrics and /healthz end to end: real ``hub serve`` and ``spoke`` processes over
real wss, alerts received by a real webhook server and a real SMTP server on 127.0.0.1
(tests/alert_sinks.py). Waits are bounded generously and assert no speed: the timing of the
rules ("for", grace, cooldown) is pinned with a fake clock in tests/hub/test_alerts_rules.py.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from tests.alert_sinks import SmtpSink, WebhookSink
from tests.cluster import HUB, Hub, Spoke, free_port, wait_until


def _hub(tmp_path: Path, alerts: str, models: str = "") -> Hub:
    hub = Hub(tmp_path)
    hub.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    (hub.dir / "hub.toml").write_text(models + alerts)
    hub.extra = ["--history-interval", "1s"]  # the gauges and enrolled count, every second
    return hub


def _metrics(hub: Hub) -> str:
    client = hub.client()
    response = client._send("GET", "/metrics")
    assert response.status == 200
    return response.read().decode()


def _audit(hub: Hub, kind: str) -> list[dict[str, Any]]:
    return list(hub.client().request("GET", f"/api/audit?kind={kind}&limit=100")["audit"])


def test_a_lost_spoke_reaches_webhook_and_mail_and_a_clean_leave_does_not(
        tmp_path: Path, sandbox_image: str, spokes: list[Spoke]) -> None:
    with WebhookSink() as sink, SmtpSink(login=("hub", "pw")) as mail:
        hub = _hub(tmp_path, f"""
[alerts]
startup_grace = "0s"
webhook = "{sink.url}"
[alerts.spoke_lost]
for = "2s"
[alerts.no_spoke_connected]
for = "3s"
[alerts.smtp]
host = "127.0.0.1"
port = {mail.port}
from = "hub@example.org"
to = "ops@example.org"
starttls = false
username = "hub"
password = "pw"
""")
        hub.start()
        try:
            calm, frozen = Spoke(tmp_path, hub, "calm"), Spoke(tmp_path, hub, "frozen")
            spokes += [calm, frozen]
            calm.join()
            frozen.join()
            calm.stop()  # SIGTERM: it says goodbye ("left"), which is no alert
            wait_until(lambda: (hub.spoke_row("calm") or {}).get("state") == "left", 60, "calm left")
            assert frozen.proc is not None
            os.kill(frozen.proc.popen.pid, signal.SIGSTOP)  # no goodbye: its heartbeats stop
            stopped = time.monotonic()
            try:
                wait_until(lambda: sink.alerts("spoke_lost"), 120, "the spoke-lost webhook")
                took = time.monotonic() - stopped
                print(f"spoke lost: webhook {took:.1f} s after its heartbeats stopped")
                wait_until(lambda: mail.messages, 60, "the spoke-lost mail")
                wait_until(lambda: sink.alerts("no_spoke_connected"), 60, "no spoke connected")
            finally:
                os.kill(frozen.proc.popen.pid, signal.SIGCONT)
            [lost] = sink.alerts("spoke_lost")
            assert lost["spokes"] == ["frozen"] and lost["subject"] == "frozen"
            assert lost["text"].startswith("spoke 'frozen' lost: ")
            assert not any("calm" in text for text in sink.texts())
            wait_until(lambda: len(mail.messages) == 2, 60, "both mails")
            assert sorted(m["Subject"] for m in mail.messages) == [
                "[spokehub] no spoke connected: hub", "[spokehub] spoke lost: frozen"]
            assert mail.recorder.logins == ["hub", "hub"]
            fired = _audit(hub, "alert.fired")
            assert {(r["subject"], r["spoke"]) for r in fired} >= {("spoke_lost", "frozen"),
                                                                   ("no_spoke_connected", "")}
            text = _metrics(hub)
            for line in ('spokehub_alerts_fired_total{rule="spoke_lost"} 1.0',
                         'spokehub_alerts_fired_total{rule="no_spoke_connected"} 1.0',
                         'spokehub_alerts_fired_total{rule="queue_depth"} 0.0'):
                assert line in text, text
            wait_until(lambda: 'spokehub_spokes{state="left"} 1.0' in _metrics(hub), 30, "gauges")
            text = _metrics(hub)
            assert 'spokehub_spokes{state="lost"} 1.0' in text, text
            for name in ("spokehub_queue_depth", "spokehub_boxes", 'spokehub_workstreams{state="queued"}',
                         "spokehub_spoke_reconnects_total", "spokehub_calls_total"):
                assert name in text, name
        finally:
            hub.stop()


def test_a_hub_restart_expects_its_spokes_back_within_the_grace(
        tmp_path: Path, sandbox_image: str, spokes: list[Spoke]) -> None:
    with WebhookSink() as sink:
        hub = _hub(tmp_path, f"""
[alerts]
startup_grace = "30s"
webhook = "{sink.url}"
no_spoke_connected = false
[alerts.spoke_lost]
for = "1s"
""")
        hub.start()
        try:
            back, gone = Spoke(tmp_path, hub, "back"), Spoke(tmp_path, hub, "gone")
            spokes += [back, gone]
            back.join()
            gone.join()
            hub.stop()  # every spoke is lost to a stopping hub: no alert for that
            assert gone.proc is not None
            gone.proc.stop(signal.SIGKILL)  # ... and one dies while the hub is down
            hub.start()
            back.wait_connected()
            wait_until(lambda: sink.alerts("spoke_lost"), 120, "the alert after the grace")
            [alert] = sink.alerts("spoke_lost")
            assert alert["spokes"] == ["gone"], alert
            assert alert["text"] == "spoke 'gone' lost: did not come back after the hub restarted"
            assert "spokehub_spoke_reconnects_total 1.0" in _metrics(hub)
        finally:
            hub.stop()


def test_healthz_is_degraded_without_spokes_or_model(
        tmp_path: Path, sandbox_image: str, spokes: list[Spoke]) -> None:
    hub = Hub(tmp_path)
    hub.start()
    try:
        assert hub.client().request("GET", "/healthz") == {
            "ok": True, "status": "degraded", "reasons": ["no spoke connected"], "spokes_connected": 0}
        spoke = Spoke(tmp_path, hub)
        spokes.append(spoke)
        spoke.join()
        assert hub.client().request("GET", "/healthz") == {
            "ok": True, "status": "ok", "reasons": [], "spokes_connected": 1}
    finally:
        hub.stop()
    down = Hub(tmp_path / "second")
    down.dir.mkdir(parents=True, mode=0o700)
    (down.dir / "hub.toml").write_text(f"""
[models.main]
provider = "openai"
base_url = "http://127.0.0.1:{free_port()}/v1"
model = "m"
""")
    down.start()
    try:
        def model_down() -> dict[str, Any] | None:
            health: dict[str, Any] = down.client().request("GET", "/healthz")
            return health if len(health["reasons"]) == 2 else None

        health = wait_until(model_down, 60, "the model check")
        assert health["status"] == "degraded" and health["ok"] is True
        assert health["reasons"][0] == "no spoke connected"
        assert health["reasons"][1].startswith("the default model 'main' is unreachable: cannot connect")
        assert "127.0.0.1" not in health["reasons"][1]  # /healthz is public: no URLs
    finally:
        down.stop()


def test_bad_alert_config_stops_hub_serve(tmp_path: Path) -> None:
    data_dir = tmp_path / "hub"
    data_dir.mkdir(mode=0o700)
    (data_dir / "hub.toml").write_text('[alerts]\nstartup_grace = "soon"\n')
    res = subprocess.run([HUB, "serve", "--data-dir", str(data_dir), "--port", str(free_port())],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 2
    assert res.stderr == (f"error: alert configuration: {data_dir / 'hub.toml'}: [alerts] "
                          "startup_grace: a duration like 90s, 5m, 1h, got 'soon'\n"), res.stderr
