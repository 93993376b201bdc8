"""The alert rules (hub/alerts/rules.py) and the ``[alerts]`` configuration
(hub/alerts/config.py), with an injected clock: every "for", cooldown and grace is checked
without waiting. The service and the senders are in test_alerts_service.py (in memory) and
tests/test_alerts_dispatch.py / tests/test_alerts_e2e.py (real servers and processes).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from hub.alerts.config import (
    AlertConfigError,
    AlertsConfig,
    NoSpokeRule,
    QueueDepthRule,
    SpokeLostRule,
    VerbErrorRule,
    load,
    parse,
    parse_duration,
)
from hub.alerts.rules import Alert, AlertRules
from tests.protocol.helpers import FakeClock


def _rules(config: AlertsConfig | None = None, live: set[str] | None = None
           ) -> tuple[AlertRules, FakeClock, set[str]]:
    clock = FakeClock(1000.0)
    live = set() if live is None else live
    return AlertRules(config or AlertsConfig(startup_grace_s=0), clock, live.__contains__), clock, live


def _fired(rules: AlertRules) -> list[tuple[str, str]]:
    return [(a.rule, a.subject) for a in rules.due()]


# ----------------------------------------------------------------------------- config
def test_config_defaults_and_overrides(tmp_path: Path) -> None:
    assert load(tmp_path / "missing.toml") == AlertsConfig()
    default = AlertsConfig()
    assert (default.startup_grace_s, default.webhook, default.smtp) == (90.0, "", None)
    assert default.spoke_lost.enabled and default.spoke_lost.for_s == 5.0
    path = tmp_path / "hub.toml"
    path.write_text("""
[models.local]
provider = "openai"
model = "m"
[alerts]
startup_grace = "0s"
webhook = "https://hooks.example.org/T/B/X"
webhook_retries = 0
no_spoke_connected = false
[alerts.spoke_lost]
for = "2s"
cooldown = "1h"
[alerts.queue_depth]
above = 3
for = 90
[alerts.verb_error_rate]
above = 0.5
window = "1m"
min_calls = 4
outcomes = ["internal"]
[alerts.smtp]
host = "smtp.example.org"
from = "hub@example.org"
to = ["a@example.org", "b@example.org"]
username = "u"
password = "p"
""")
    cfg = load(path)
    assert cfg.startup_grace_s == 0 and cfg.webhook.endswith("/X") and cfg.webhook_retries == 0
    assert cfg.no_spoke_connected == NoSpokeRule(enabled=False)
    assert cfg.spoke_lost == SpokeLostRule(True, 2.0, 3600.0)
    assert cfg.queue_depth == QueueDepthRule(True, 3, 90.0, 1800.0)
    assert cfg.verb_error_rate == VerbErrorRule(True, 0.5, 60.0, 4, ("internal",), 1800.0)
    assert cfg.smtp is not None and cfg.smtp.to == ("a@example.org", "b@example.org")
    assert (cfg.smtp.port, cfg.smtp.starttls, cfg.smtp.ssl) == (587, True, False)
    assert [parse_duration(v) for v in ("0s", "500ms", "90s", "5m", "1h", "1d", 7)] == [
        0.0, 0.5, 90.0, 300.0, 3600.0, 86400.0, 7.0]


@pytest.mark.parametrize(("alerts", "message"), [
    ({"startup_grace": "soon"}, "[alerts] startup_grace: a duration like 90s"),
    ({"webhook": "ftp://x"}, "[alerts] webhook: an http:// or https:// URL"),
    ({"webhok": "http://x"}, "[alerts] webhok: unknown key"),
    ({"spoke_lost": {"for": "-1s"}}, "[alerts.spoke_lost] for: a duration"),
    ({"spoke_lost": {"enabled": "yes"}}, "[alerts.spoke_lost] enabled: true or false"),
    ({"queue_depth": {"above": 2.5}}, "[alerts.queue_depth] above: an integer from 0"),
    ({"verb_error_rate": {"above": 25}}, "[alerts.verb_error_rate] above: a fraction from 0 to 1"),
    ({"verb_error_rate": {"window": "0s"}}, "[alerts.verb_error_rate] window: a duration like 90s, 5m, 1h (more than 0)"),
    ({"verb_error_rate": {"outcomes": ["oops"]}}, "[alerts.verb_error_rate] outcomes: a list of error codes"),
    ({"smtp": {"host": "h", "to": "a@b"}}, "[alerts.smtp] from: required"),
    ({"smtp": {"host": "h", "from": "a@b", "to": "c@d", "username": "u"}}, "[alerts.smtp] username: username and password go together"),
    ({"smtp": {"host": "h", "from": "a@b", "to": "c@d", "ssl": True, "starttls": True}}, "[alerts.smtp] starttls:"),
    ({"smtp": {"host": "h", "from": "a@b", "to": ["not an address"]}}, "[alerts.smtp] to: an e-mail address"),
    ({"queue_depth": 3}, "[alerts.queue_depth] must be a table"),
])
def test_config_errors_name_the_table_and_key(alerts: dict[str, object], message: str) -> None:
    with pytest.raises(AlertConfigError) as err:
        parse({"alerts": alerts}, "hub.toml")
    assert str(err.value).startswith(f"hub.toml: {message}"), str(err.value)


# ------------------------------------------------------------------------- spoke lost
def test_a_lost_spoke_fires_after_for_unless_it_came_back() -> None:
    rules, clock, live = _rules()
    rules.spoke_lost("a", "heartbeats missed")
    rules.spoke_lost("blip", "peer disconnected")
    clock.advance(4.9)
    assert rules.due() == []
    live.add("blip")  # back within the "for": no alert, ever
    clock.advance(0.1)
    [alert] = rules.due()
    assert alert == Alert("spoke_lost", "a", "spoke 'a' lost: heartbeats missed", ("a",),
                          {"reasons": {"a": "heartbeats missed"}})
    clock.advance(60)
    assert rules.due() == []


def test_spokes_lost_together_are_one_alert_and_cooldown_is_per_spoke() -> None:
    rules, clock, _live = _rules()
    for name in ("c", "a", "b"):
        rules.spoke_lost(name, "")
    clock.advance(5)
    [alert] = rules.due()
    assert alert.spokes == ("a", "b", "c") and alert.text.startswith("3 spokes lost: a (no goodbye)")
    clock.advance(60)
    rules.spoke_lost("a", "again")  # within a's cooldown (10 min): quiet
    rules.spoke_lost("d", "first time")
    clock.advance(5)
    assert [a.spokes for a in rules.due()] == [("d",)]
    clock.advance(600)
    rules.spoke_lost("a", "later")
    clock.advance(5)
    assert _fired(rules) == [("spoke_lost", "a")]
    many, clock, _ = _rules()
    for i in range(25):
        many.spoke_lost(f"s{i:02d}", "x")
    clock.advance(5)
    [alert] = many.due()
    assert len(alert.spokes) == 25 and alert.text.endswith("and 5 more")


def test_startup_grace_holds_lost_alerts_until_it_ends() -> None:
    rules, clock, live = _rules(AlertsConfig(startup_grace_s=90))
    rules.restarted_with(["back", "gone"])  # connected when the hub last stopped
    clock.advance(10)
    live.add("back")
    rules.spoke_lost("flaky", "peer disconnected")  # lost during the grace: held, not hidden
    clock.advance(70)
    assert rules.due() == []
    clock.advance(10)  # the grace ends at 90 s
    [alert] = rules.due()
    assert alert.spokes == ("flaky", "gone")
    assert alert.details["reasons"]["gone"] == "did not come back after the hub restarted"
    off, clock, _ = _rules(AlertsConfig(startup_grace_s=0))
    off.restarted_with(["gone"])  # no grace: nothing is expected back, nothing is reported
    off.spoke_lost("a", "x")
    clock.advance(5)
    assert _fired(off) == [("spoke_lost", "a")]
    clock.advance(600)
    assert off.due() == []


# ----------------------------------------------------------------- episodes and rates
def test_no_spoke_connected_needs_enrolled_spokes_and_fires_once_per_episode() -> None:
    rules, clock, _ = _rules(replace(AlertsConfig(startup_grace_s=0),
                                     no_spoke_connected=NoSpokeRule(for_s=60, cooldown_s=300)))
    rules.observe_spokes(0, 0)  # a hub nobody joined yet is not missing a spoke
    clock.advance(120)
    assert rules.due() == []
    rules.observe_spokes(0, 2)
    clock.advance(59)
    rules.observe_spokes(0, 2)
    assert rules.due() == []
    clock.advance(1)
    assert _fired(rules) == [("no_spoke_connected", "hub")]
    clock.advance(600)
    assert rules.due() == []  # once per episode
    rules.observe_spokes(1, 2)
    rules.observe_spokes(0, 2)  # a new episode, past the cooldown
    clock.advance(60)
    assert [a.text for a in rules.due()] == ["no spoke connected for 60 s"]
    graced, clock, _ = _rules(replace(AlertsConfig(startup_grace_s=90),
                                      no_spoke_connected=NoSpokeRule(for_s=10)))
    graced.observe_spokes(0, 1)
    clock.advance(89)
    assert graced.due() == []  # spokes are still coming back after the restart
    clock.advance(1)
    assert _fired(graced) == [("no_spoke_connected", "hub")]


def test_queue_depth_above_n_for_t() -> None:
    rules, clock, _ = _rules(replace(AlertsConfig(startup_grace_s=0),
                                     queue_depth=QueueDepthRule(above=3, for_s=30, cooldown_s=0)))
    rules.observe_queue(4)
    clock.advance(20)
    rules.observe_queue(3)  # dipped to the threshold: the episode ends
    rules.observe_queue(9)
    clock.advance(29)
    assert rules.due() == []
    clock.advance(1)
    [alert] = rules.due()
    assert (alert.rule, alert.details["depth"]) == ("queue_depth", 9)
    assert alert.text == "9 workstreams queued (above 3 for 30 s)"
    clock.advance(100)
    assert rules.due() == []


def test_verb_error_rate_over_a_window_with_a_minimum_of_calls() -> None:
    rule = VerbErrorRule(above=0.5, window_s=60, min_calls=4, cooldown_s=0)
    rules, clock, _ = _rules(replace(AlertsConfig(startup_grace_s=0), verb_error_rate=rule))
    totals: dict[str, dict[str, float]] = {"box.exec": {"ok": 100}, "box.create": {"ok": 5}}
    rules.observe_calls(totals)
    clock.advance(10)
    totals["box.create"] = {"ok": 5, "not_found": 50}  # callers' mistakes are not counted
    totals["box.exec"] = {"ok": 101, "timeout": 2}  # 2 of 3: too few calls to judge
    rules.observe_calls(totals)
    assert rules.due() == []
    clock.advance(10)
    totals["box.exec"] = {"ok": 101, "timeout": 2, "internal": 2}  # 4 of 5 in the window
    rules.observe_calls(totals)
    [alert] = rules.due()
    assert alert.subject == "box.exec" and alert.details["errors"] == 4
    assert alert.details["calls"] == 5 and alert.text.startswith("box.exec: 4 of 5 calls failed (80%")
    clock.advance(10)
    rules.observe_calls(totals)
    assert rules.due() == []  # the same episode
    clock.advance(61)  # the failures leave the window (no calls since): the episode ends
    rules.observe_calls(totals)
    assert rules.due() == []
    clock.advance(10)
    totals["box.exec"] = {"ok": 101, "timeout": 2, "internal": 12}  # 10 of 10 again
    rules.observe_calls(totals)
    assert _fired(rules) == [("verb_error_rate", "box.exec")]


def test_disabled_rules_never_fire() -> None:
    off = AlertsConfig(startup_grace_s=0, spoke_lost=SpokeLostRule(enabled=False),
                       no_spoke_connected=NoSpokeRule(enabled=False),
                       queue_depth=QueueDepthRule(enabled=False, above=0),
                       verb_error_rate=VerbErrorRule(enabled=False, min_calls=1))
    rules, clock, _ = _rules(off)
    rules.spoke_lost("a", "x")
    rules.observe_spokes(0, 3)
    rules.observe_queue(100)
    rules.observe_calls({"box.exec": {"ok": 0}})
    clock.advance(3600)
    rules.observe_calls({"box.exec": {"internal": 100}})
    assert rules.due() == []
