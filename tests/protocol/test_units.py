"""Sizes and durations (protocol/units.py): one parser for the hub's API and the spoke's flags."""

from __future__ import annotations

import pytest

from protocol.errors import ErrorCode, RemoteError
from protocol.units import UnitError, parse_size, parse_ttl


@pytest.mark.parametrize(("text", "expected"), [
    ("512m", 512 * 1024**2), ("2g", 2 * 1024**3), ("64k", 64 * 1024), ("1024", 1024),
    ("4G", 4 * 1024**3), (" 1gb ", 1024**3), ("10b", 10), (1048576, 1048576),
])
def test_sizes(text: object, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("bad", ["", "0", "0m", "-1m", "1t", "1.5g", "lots", 0, -5, True, None, "1 g"])
def test_bad_sizes(bad: object) -> None:
    with pytest.raises(UnitError, match=r"bad size .* \(use e\.g\. 512m, 2g\)"):
        parse_size(bad)


@pytest.mark.parametrize(("text", "expected"), [
    ("90s", 90.0), ("30m", 1800.0), ("1h", 3600.0), ("7d", 604800.0), ("45", 45.0),
    (2.5, 2.5), (60, 60.0),
])
def test_ttls(text: object, expected: float) -> None:
    assert parse_ttl(text) == expected


@pytest.mark.parametrize("bad", ["", "0s", "1w", "1.5h", "-1h", "soon", 0, -1, False, None, "1 h"])
def test_bad_ttls(bad: object) -> None:
    with pytest.raises(UnitError, match=r"bad ttl .* \(use e\.g\. 90s, 30m, 1h, 7d\)"):
        parse_ttl(bad)


def test_the_error_is_invalid_for_the_hub_and_a_value_error_for_the_spoke() -> None:
    with pytest.raises(UnitError) as caught:
        parse_size("huge")
    err = caught.value
    assert isinstance(err, RemoteError) and err.code is ErrorCode.INVALID  # hub: HTTP 400
    assert isinstance(err, ValueError)  # spoke: a usage error from SpokeOptions.from_cli
    assert str(err) == err.message == "bad size 'huge' (use e.g. 512m, 2g)"
    assert err.to_wire()["data"] == {"kind": "invalid"}
