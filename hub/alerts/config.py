"""The ``[alerts]`` section of ``hub.toml``: which rules watch the hub, and where alerts go.

``hub.toml`` in the hub's data dir (or ``hub serve --config FILE``) is the file that holds
``[models.*]`` (hub/model_config.py); that parser ignores other tables, and this one reads
only ``[alerts]`` and its sub-tables. Everything has a default, so a hub without the section
watches with every rule on, and sends nowhere (``webhook`` and ``[alerts.smtp]`` are off
until configured): fired alerts are still events (``alert.fired`` in the audit log and the
dashboard's timeline) and a Prometheus counter.

Values are checked when the hub starts: a typo in a key, a duration that does not parse or a
number out of range stops ``hub serve`` with ``error: alert configuration: FILE: [alerts.x]
key: why`` and exit status 2, as a bad model table does. Every option and its default is in
docs/operator-guide.md ("Alerts"). Pure: reads text, no I/O beyond :func:`load`'s one read.
Pinned by tests/hub/test_alerts_rules.py::test_config_defaults_and_overrides and
::test_config_errors_name_the_table_and_key, and end to end by
tests/test_alerts_e2e.py::test_bad_alert_config_stops_hub_serve.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

RULES = ("spoke_lost", "no_spoke_connected", "queue_depth", "verb_error_rate")
SERVER_SIDE_OUTCOMES = ("internal", "timeout", "unavailable")
ALL_OUTCOMES = ("not_found", "invalid", "denied", "busy", "timeout", "cancelled",
                "unavailable", "internal")
_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)?")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


class AlertConfigError(ValueError):
    """An ``[alerts]`` value that cannot be used; the message names the file, table and key.
    ``hub serve`` reports it as ``error: alert configuration: …`` with exit status 2."""


@dataclass(frozen=True)
class SpokeLostRule:
    """A connected spoke went without a goodbye (crashed, cut off, heartbeats stopped) and
    did not come back within ``for_s``; one alert per spoke per ``cooldown_s``."""

    enabled: bool = True
    for_s: float = 5.0
    cooldown_s: float = 600.0


@dataclass(frozen=True)
class NoSpokeRule:
    """Spokes are enrolled but none has been connected for ``for_s``."""

    enabled: bool = True
    for_s: float = 120.0
    cooldown_s: float = 1800.0


@dataclass(frozen=True)
class QueueDepthRule:
    """More than ``above`` workstreams have waited in the queue for ``for_s``."""

    enabled: bool = True
    above: int = 50
    for_s: float = 300.0
    cooldown_s: float = 1800.0


@dataclass(frozen=True)
class VerbErrorRule:
    """A verb's calls ended in one of ``outcomes`` more often than ``above`` (a fraction)
    over the last ``window_s``, counting only windows with at least ``min_calls`` calls."""

    enabled: bool = True
    above: float = 0.25
    window_s: float = 300.0
    min_calls: int = 20
    outcomes: tuple[str, ...] = SERVER_SIDE_OUTCOMES
    cooldown_s: float = 1800.0


@dataclass(frozen=True)
class SmtpConfig:
    host: str
    sender: str
    to: tuple[str, ...]
    port: int = 587
    starttls: bool = True
    ssl: bool = False  # implicit TLS (port 465) instead of STARTTLS
    username: str = ""
    password: str = ""
    timeout_s: float = 10.0


@dataclass(frozen=True)
class AlertsConfig:
    startup_grace_s: float = 90.0
    webhook: str = ""
    webhook_timeout_s: float = 5.0
    webhook_retries: int = 2  # after the first attempt: three in all
    smtp: SmtpConfig | None = None
    spoke_lost: SpokeLostRule = field(default_factory=SpokeLostRule)
    no_spoke_connected: NoSpokeRule = field(default_factory=NoSpokeRule)
    queue_depth: QueueDepthRule = field(default_factory=QueueDepthRule)
    verb_error_rate: VerbErrorRule = field(default_factory=VerbErrorRule)


T = TypeVar("T")


class _Table:
    """One TOML table being read: each key taken once, leftovers are typos."""

    def __init__(self, source: str, name: str, raw: Any) -> None:
        if not isinstance(raw, dict):
            raise AlertConfigError(f"{source}: [{name}] must be a table")
        self.source, self.name, self.raw = source, name, dict(raw)

    def error(self, key: str, why: str) -> AlertConfigError:
        return AlertConfigError(f"{self.source}: [{self.name}] {key}: {why}")

    def take(self, key: str, default: T, convert: Callable[[Any], T], what: str) -> T:
        if key not in self.raw:
            return default
        value = self.raw.pop(key)
        try:
            return convert(value)
        except (TypeError, ValueError):
            raise self.error(key, f"{what}, got {value!r}") from None

    def duration(self, key: str, default: float, *, zero_ok: bool = True) -> float:
        what = "a duration like 90s, 5m, 1h" + ("" if zero_ok else " (more than 0)")
        return self.take(key, default, lambda v: parse_duration(v, zero_ok=zero_ok), what)

    def boolean(self, key: str, default: bool) -> bool:
        return self.take(key, default, _strict(bool), "true or false")

    def integer(self, key: str, default: int, low: int, high: int) -> int:
        return self.take(key, default, _ranged(int, low, high), f"an integer from {low} to {high}")

    def string(self, key: str, default: str) -> str:
        return self.take(key, default, _strict(str), "a string")

    def finish(self) -> None:
        if self.raw:
            raise self.error(", ".join(sorted(self.raw)), "unknown key (see docs/operator-guide.md, Alerts)")


def _strict(kind: type[T]) -> Callable[[Any], T]:
    def convert(value: Any) -> T:
        if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
            raise TypeError(kind.__name__)
        return value
    return convert


def _ranged(kind: type[int] | type[float], low: float, high: float) -> Callable[[Any], Any]:
    def convert(value: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise TypeError("not a number")
        if kind is int and not isinstance(value, int):
            raise TypeError("not an integer")
        if not low <= value <= high:
            raise ValueError("out of range")
        return kind(value)
    return convert


def parse_duration(value: object, *, zero_ok: bool = True) -> float:
    """Seconds from ``90s`` / ``5m`` / ``1h`` / ``1d`` / ``500ms`` / ``0s`` or a number of
    seconds. Unlike :func:`protocol.units.parse_ttl`, zero may be allowed (``startup_grace =
    "0s"`` turns the grace off). Pinned by tests/hub/test_alerts_rules.py::
    test_config_defaults_and_overrides."""
    if isinstance(value, bool):
        raise ValueError("a boolean is not a duration")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        match = _DURATION_RE.fullmatch(str(value).strip())
        if not match:
            raise ValueError(f"bad duration {value!r}")
        seconds = float(match.group(1)) * _UNITS[match.group(2)]
    if seconds < 0 or (seconds == 0 and not zero_ok) or seconds > 365 * 86400:
        raise ValueError(f"duration out of range: {value!r}")
    return seconds


def _webhook_url(value: Any) -> str:
    url = _strict(str)(value).strip()
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("not an http(s) URL")
    return url


def _addresses(value: Any) -> tuple[str, ...]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items:
        raise TypeError("need addresses")
    out = tuple(_strict(str)(item).strip() for item in items)
    if any("@" not in a or any(c in a for c in "\r\n<>,") for a in out):
        raise ValueError("bad address")
    return out


def _smtp(source: str, raw: Any) -> SmtpConfig:
    t = _Table(source, "alerts.smtp", raw)
    host = t.string("host", "")
    sender = t.take("from", "", lambda v: _addresses(v)[0], "one e-mail address")
    nobody: tuple[str, ...] = ()
    to = t.take("to", nobody, _addresses, "an e-mail address or a list of them")
    ssl = t.boolean("ssl", False)
    cfg = SmtpConfig(host=host, sender=sender, to=to,
                     port=t.integer("port", 465 if ssl else 587, 1, 65535),
                     starttls=t.boolean("starttls", not ssl), ssl=ssl,
                     username=t.string("username", ""), password=t.string("password", ""),
                     timeout_s=t.duration("timeout", 10.0, zero_ok=False))
    t.finish()
    for key, value in (("host", host), ("from", sender), ("to", to)):
        if not value:
            raise t.error(key, "required when [alerts.smtp] is present")
    if cfg.ssl and cfg.starttls:
        raise t.error("starttls", "ssl = true is already TLS: leave starttls out")
    if bool(cfg.username) != bool(cfg.password):
        raise t.error("username", "username and password go together")
    return cfg


def _rule_table(source: str, alerts: dict[str, Any], name: str) -> _Table:
    raw = alerts.pop(name, {})
    if isinstance(raw, bool):  # ``spoke_lost = false`` as a short form of enabled = false
        raw = {"enabled": raw}
    return _Table(source, f"alerts.{name}", raw)


def parse(doc: Mapping[str, Any], source: str) -> AlertsConfig:
    """The :class:`AlertsConfig` of a parsed TOML document's ``[alerts]`` (defaults for
    whatever is left out). Raises :class:`AlertConfigError`. Pinned by
    tests/hub/test_alerts_rules.py::test_config_errors_name_the_table_and_key."""
    top = _Table(source, "alerts", doc.get("alerts", {}))
    alerts = top.raw
    t = _rule_table(source, alerts, "spoke_lost")
    d = SpokeLostRule()
    lost = SpokeLostRule(t.boolean("enabled", d.enabled), t.duration("for", d.for_s),
                         t.duration("cooldown", d.cooldown_s))
    t.finish()
    t = _rule_table(source, alerts, "no_spoke_connected")
    n = NoSpokeRule()
    none = NoSpokeRule(t.boolean("enabled", n.enabled), t.duration("for", n.for_s),
                       t.duration("cooldown", n.cooldown_s))
    t.finish()
    t = _rule_table(source, alerts, "queue_depth")
    q = QueueDepthRule()
    queue = QueueDepthRule(t.boolean("enabled", q.enabled), t.integer("above", q.above, 0, 10**9),
                           t.duration("for", q.for_s), t.duration("cooldown", q.cooldown_s))
    t.finish()
    t = _rule_table(source, alerts, "verb_error_rate")
    e = VerbErrorRule()
    errors = VerbErrorRule(
        t.boolean("enabled", e.enabled),
        t.take("above", e.above, _ranged(float, 0.0, 1.0), "a fraction from 0 to 1 (0.25: 25%)"),
        t.duration("window", e.window_s, zero_ok=False),
        t.integer("min_calls", e.min_calls, 1, 10**9),
        t.take("outcomes", e.outcomes, _outcomes, f"a list of error codes from {list(ALL_OUTCOMES)}"),
        t.duration("cooldown", e.cooldown_s))
    t.finish()
    smtp = _smtp(source, alerts.pop("smtp")) if "smtp" in alerts else None
    config = AlertsConfig(
        startup_grace_s=top.duration("startup_grace", 90.0),
        webhook=top.take("webhook", "", _webhook_url, "an http:// or https:// URL"),
        webhook_timeout_s=top.duration("webhook_timeout", 5.0, zero_ok=False),
        webhook_retries=top.integer("webhook_retries", 2, 0, 10),
        smtp=smtp, spoke_lost=lost, no_spoke_connected=none, queue_depth=queue,
        verb_error_rate=errors)
    top.finish()
    return config


def _outcomes(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not value:
        raise TypeError("need a list")
    out = tuple(_strict(str)(v) for v in value)
    if any(o not in ALL_OUTCOMES for o in out):
        raise ValueError("unknown code")
    return out


def load(config_file: Path | None) -> AlertsConfig:
    """The ``[alerts]`` of ``config_file`` (``hub.toml``); the defaults when there is no such
    file or section."""
    if config_file is None or not config_file.exists():
        return AlertsConfig()
    try:
        doc = tomllib.loads(config_file.read_text())
    except tomllib.TOMLDecodeError as err:
        raise AlertConfigError(f"{config_file}: {err}") from None
    return parse(doc, str(config_file))
