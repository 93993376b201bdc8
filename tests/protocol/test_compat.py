"""The release compatibility rule between hub and spoke (protocol/compat.py)."""

from __future__ import annotations

import pytest

from protocol.compat import OLDEST_SPOKE_SERIES, series, spoke_refusal


@pytest.mark.parametrize(("version", "expected"), [
    ("0.1.0", (0, 1)), ("1.12.3", (1, 12)), ("2.0", (2, 0)), ("0.3.0rc1", (0, 3)),
    ("0.1.0+local", (0, 1)), ("0+unknown", None), ("test", None), ("", None), ("1", None),
])
def test_series(version: str, expected: tuple[int, int] | None) -> None:
    assert series(version) == expected


def test_same_series_and_older_within_support_are_accepted() -> None:
    assert spoke_refusal("0.1.0", "0.1.0") is None
    assert spoke_refusal("0.1.5", "0.1.0") is None
    assert spoke_refusal("0.3.0", "0.2.9") is None
    oldest = ".".join(map(str, OLDEST_SPOKE_SERIES)) + ".0"
    assert spoke_refusal("9.9.0", oldest) is None


def test_newer_spoke_refused_naming_both_and_the_fix() -> None:
    why = spoke_refusal("0.1.0", "0.2.0")
    assert why is not None
    assert "0.2.0" in why and "0.1.0" in why and "upgrade the hub first" in why


def test_too_old_spoke_refused_naming_both_and_the_fix() -> None:
    why = spoke_refusal("0.5.0", "0.0.9")
    assert why is not None
    assert "0.0.9" in why and "0.5.0" in why and "upgrade the spoke" in why


def test_unjudgeable_versions_are_left_to_the_protocol_negotiation() -> None:
    assert spoke_refusal("0+unknown", "9.0.0") is None
    assert spoke_refusal("0.1.0", "test") is None
