"""Sending alerts (hub/alerts/dispatch.py) to real receivers on 127.0.0.1: an HTTP webhook
server and an SMTP server (aiosmtpd) with STARTTLS and AUTH (tests/alert_sinks.py). The
pause between attempts is injected; timeouts are real but short.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from hub.alerts.config import AlertsConfig, SmtpConfig
from hub.alerts.dispatch import Dispatcher, payload
from hub.alerts.rules import Alert
from tests.alert_sinks import SmtpSink, WebhookSink

ALERT = Alert("spoke_lost", "gpu-1", "spoke 'gpu-1' lost: heartbeats missed", ("gpu-1",),
              {"reasons": {"gpu-1": "heartbeats missed"}})
HUB = "https://hub.example.org:8443"
AT = 1_767_000_000.0


class Pauses:
    def __init__(self) -> None:
        self.taken: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.taken.append(seconds)
        await asyncio.sleep(0)


async def _send(config: AlertsConfig, pauses: Pauses | None = None) -> dict[str, str]:
    dispatcher = Dispatcher(config, HUB, sleep=pauses or Pauses())
    try:
        return await dispatcher.send(ALERT, AT)
    finally:
        await dispatcher.close()


async def test_webhook_gets_slack_text_and_fields_after_a_retry() -> None:
    pauses = Pauses()
    with WebhookSink(fail_first=2) as sink:
        result = await _send(AlertsConfig(webhook=sink.url, webhook_retries=2), pauses)
        assert result == {"webhook": "ok"}
        assert sink.attempts == 3 and pauses.taken == [1.0, 2.0]  # bounded, growing pauses
        assert sink.bodies == [payload(ALERT, HUB, AT)]
    body = sink.bodies[0]
    assert body["text"] == f"[spokehub {HUB}] spoke 'gpu-1' lost: heartbeats missed"
    assert body["alert"] == {
        "rule": "spoke_lost", "subject": "gpu-1", "spokes": ["gpu-1"],
        "text": "spoke 'gpu-1' lost: heartbeats missed", "hub": HUB, "at": AT,
        "at_iso": "2025-12-29T09:20:00Z", "details": {"reasons": {"gpu-1": "heartbeats missed"}}}


async def test_webhook_retries_are_bounded_and_a_4xx_is_not_retried() -> None:
    with WebhookSink(fail_first=100) as sink:
        assert await _send(AlertsConfig(webhook=sink.url, webhook_retries=2)) == {"webhook": "HTTP 503"}
        assert sink.attempts == 3
    with WebhookSink(fail_first=100, fail_status=404) as sink:
        assert await _send(AlertsConfig(webhook=sink.url, webhook_retries=2)) == {
            "webhook": "the webhook answered HTTP 404"}
        assert sink.attempts == 1


async def test_a_slow_webhook_times_out() -> None:
    with WebhookSink(delay_s=3) as sink:
        config = AlertsConfig(webhook=sink.url, webhook_timeout_s=0.3, webhook_retries=1)
        assert await _send(config) == {"webhook": "timed out"}
        assert sink.attempts == 2 and sink.bodies == []


async def test_mail_over_starttls_with_login(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with SmtpSink(tls_dir=tmp_path, login=("alerts", "s3cret")) as server:
        assert server.cert is not None
        monkeypatch.setenv("SSL_CERT_FILE", str(server.cert))  # trust the server's certificate
        smtp = SmtpConfig(host="127.0.0.1", port=server.port, sender="hub@example.org",
                          to=("ops@example.org", "oncall@example.org"), starttls=True,
                          username="alerts", password="s3cret", timeout_s=10)
        assert await _send(AlertsConfig(smtp=smtp)) == {"smtp": "ok"}
        [msg] = server.messages
        wrong = SmtpConfig(**{**smtp.__dict__, "password": "nope"})
        result = await _send(AlertsConfig(smtp=wrong))
    assert server.recorder.logins == ["alerts"]
    assert msg["Subject"] == "[spokehub] spoke lost: gpu-1"
    assert (msg["From"], msg["To"]) == ("hub@example.org", "ops@example.org, oncall@example.org")
    body = msg.get_payload()
    assert isinstance(body, str)
    assert "spoke 'gpu-1' lost: heartbeats missed" in body and f"hub: {HUB}" in body
    assert "spokes: gpu-1" in body
    assert result["smtp"].startswith("(535")  # refused once, not retried


async def test_mail_and_webhook_together_in_plain_smtp() -> None:
    with SmtpSink() as server, WebhookSink() as sink:
        smtp = SmtpConfig(host="127.0.0.1", port=server.port, sender="hub@example.org",
                          to=("ops@example.org",), starttls=False)
        result = await _send(AlertsConfig(webhook=sink.url, smtp=smtp))
        assert result == {"webhook": "ok", "smtp": "ok"}
        assert len(server.messages) == 1 and len(sink.bodies) == 1
