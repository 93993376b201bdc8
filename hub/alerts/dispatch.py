"""Sending a fired alert: a Slack-compatible webhook and e-mail, each with a bounded retry.

Both are off until configured (``[alerts] webhook`` and ``[alerts.smtp]``,
hub/alerts/config.py). Neither may hold the hub up: the webhook is one aiohttp client POST
with a total timeout, e-mail is :mod:`smtplib` in a worker thread (its socket calls block),
and each is tried at most ``1 + webhook_retries`` times with a short growing pause between
attempts. A receiver that answers 4xx (other than 408/429) is told the same thing again
after a retry, so that is not retried. :meth:`Dispatcher.send` says, per channel, what came of
it, so the service can record an alert nobody received.

The webhook body is what Slack's incoming webhooks take (``{"text": …}``) plus the alert's
structured fields under ``"alert"`` (Slack ignores keys it does not know)::

    {"text": "[spokehub https://hub:8443] spoke 'a' lost: heartbeats missed",
     "alert": {"rule": "spoke_lost", "subject": "a", "spokes": ["a"], "hub": "https://hub:8443",
               "at": 1767000000.0, "at_iso": "2025-12-29T09:20:00Z", "details": {…}}}

Pinned by tests/test_alerts_dispatch.py (real local HTTP and SMTP servers) and
tests/test_alerts_e2e.py.
"""

from __future__ import annotations

import asyncio
import logging
import smtplib
import ssl
import time
from collections.abc import Awaitable, Callable
from email.message import EmailMessage
from typing import Any

import aiohttp

from hub.alerts.config import AlertsConfig, SmtpConfig
from hub.alerts.rules import Alert

log = logging.getLogger("spokehub.hub.alerts")

RETRY_PAUSE_S = 1.0  # before the second attempt; doubled after each failed one


class Undeliverable(Exception):
    """A receiver refused the alert in a way a retry cannot change (a 4xx answer)."""


def payload(alert: Alert, hub_url: str, at: float) -> dict[str, Any]:
    """The webhook's JSON body (see the module docstring). Pinned by
    tests/test_alerts_dispatch.py::test_webhook_gets_slack_text_and_fields_after_a_retry."""
    return {
        "text": f"[spokehub {hub_url}] {alert.text}",
        "alert": {"rule": alert.rule, "subject": alert.subject, "spokes": list(alert.spokes),
                  "text": alert.text, "hub": hub_url, "at": at,
                  "at_iso": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at)),
                  "details": alert.details},
    }


def email(alert: Alert, hub_url: str, at: float, smtp: SmtpConfig) -> EmailMessage:
    """The e-mail of one alert: the rule and subject in the Subject line, the text and the
    fields in the body."""
    msg = EmailMessage()
    msg["From"], msg["To"] = smtp.sender, ", ".join(smtp.to)
    msg["Subject"] = f"[spokehub] {alert.rule.replace('_', ' ')}: {alert.subject}"[:200]
    body = payload(alert, hub_url, at)["alert"]
    lines = [alert.text, "", f"hub: {hub_url}", f"rule: {alert.rule}", f"at: {body['at_iso']}"]
    lines += [f"spokes: {', '.join(alert.spokes)}"] if alert.spokes else []
    lines += [f"{key}: {value}" for key, value in alert.details.items()]
    msg.set_content("\n".join(lines) + "\n")
    return msg


def _send_mail(smtp: SmtpConfig, msg: EmailMessage) -> None:
    """Blocking: run in a worker thread."""
    context = ssl.create_default_context()
    client: smtplib.SMTP
    if smtp.ssl:
        client = smtplib.SMTP_SSL(smtp.host, smtp.port, timeout=smtp.timeout_s, context=context)
    else:
        client = smtplib.SMTP(smtp.host, smtp.port, timeout=smtp.timeout_s)
    with client:
        if smtp.starttls:
            client.starttls(context=context)
        if smtp.username:
            client.login(smtp.username, smtp.password)
        client.send_message(msg)


class Dispatcher:
    """The configured channels of one hub. ``sleep`` is injected for tests."""

    def __init__(self, config: AlertsConfig, hub_url: str, *,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        self.config, self.hub_url, self.sleep = config, hub_url, sleep
        self._session: aiohttp.ClientSession | None = None

    @property
    def channels(self) -> list[str]:
        return (["webhook"] if self.config.webhook else []) + (["smtp"] if self.config.smtp else [])

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def send(self, alert: Alert, at: float) -> dict[str, str]:
        """Send ``alert`` on every configured channel at once; ``{channel: "ok" or why not}``.
        Pinned by tests/test_alerts_dispatch.py."""
        jobs: dict[str, Awaitable[None]] = {}
        if self.config.webhook:
            jobs["webhook"] = self._retrying("webhook", lambda: self._post(alert, at))
        if self.config.smtp is not None:
            smtp = self.config.smtp
            msg = email(alert, self.hub_url, at, smtp)
            jobs["smtp"] = self._retrying("smtp", lambda: asyncio.to_thread(_send_mail, smtp, msg))
        results = await asyncio.gather(*jobs.values(), return_exceptions=True)
        out: dict[str, str] = {}
        for channel, result in zip(jobs, results, strict=True):
            if isinstance(result, BaseException):
                if isinstance(result, asyncio.CancelledError):
                    raise result
                out[channel] = _describe(result)
            else:
                out[channel] = "ok"
        return out

    async def _retrying(self, channel: str, attempt: Callable[[], Awaitable[None]]) -> None:
        pause = RETRY_PAUSE_S
        for tries_left in range(self.config.webhook_retries, -1, -1):
            try:
                await attempt()
                return
            except Undeliverable:
                raise
            except (smtplib.SMTPAuthenticationError, smtplib.SMTPRecipientsRefused,
                    smtplib.SMTPSenderRefused) as err:  # the same answer next time
                raise Undeliverable(_describe(err)) from None
            except (OSError, TimeoutError, aiohttp.ClientError, smtplib.SMTPException) as err:
                if tries_left == 0:
                    raise
                log.info("alert via %s failed (%s); retrying in %.0f s", channel, _describe(err), pause)
            await self.sleep(pause)
            pause *= 2

    async def _post(self, alert: Alert, at: float) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.config.webhook_timeout_s))
        async with self._session.post(self.config.webhook, json=payload(alert, self.hub_url, at),
                                      allow_redirects=False) as response:
            await response.read()
            if response.status < 300:
                return
            if response.status in (408, 429) or response.status >= 500:
                raise aiohttp.ClientResponseError(response.request_info, (), status=response.status,
                                                  message=response.reason or "")
            raise Undeliverable(f"the webhook answered HTTP {response.status}")


def _describe(err: BaseException) -> str:
    if isinstance(err, aiohttp.ClientResponseError):
        return f"HTTP {err.status}"
    if isinstance(err, aiohttp.ClientConnectorError):
        return f"cannot connect ({err.os_error.strerror or err.os_error})"
    if isinstance(err, TimeoutError | asyncio.TimeoutError):
        return "timed out"
    text = str(err) or type(err).__name__
    return text[:200]
