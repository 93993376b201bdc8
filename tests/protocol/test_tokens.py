"""Join tokens, secret hashing, certificate pins and the signed auth message."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import Any

import pytest

from protocol import tokens
from protocol.tokens import (
    AUTH_CONTEXT,
    PIN_RE,
    TOKEN_PREFIX,
    JoinToken,
    TokenError,
    auth_message,
    cert_pin,
    hash_secret,
    new_id,
    new_secret,
    pins_match,
    secret_matches,
)

DER = b"0\x82\x01\x0afake-certificate-der"
PIN = cert_pin(DER)
TOKEN = JoinToken(
    url="https://hub.example:8443", pin=PIN, token_id="tok_1", secret="s3cr3t", name="spoke-1"
)


def _raw(body: Any) -> str:
    """A token string around an arbitrary JSON body."""
    return TOKEN_PREFIX + base64.urlsafe_b64encode(json.dumps(body).encode()).decode().rstrip("=")


def test_round_trip() -> None:
    text = TOKEN.encode()
    assert text.startswith(TOKEN_PREFIX)
    assert "=" not in text and "\n" not in text
    assert JoinToken.decode(text) == TOKEN


def test_round_trip_without_name_and_with_surrounding_whitespace() -> None:
    token = JoinToken(url="http://10.0.0.1:8080", pin="", token_id="t", secret=new_secret())
    assert JoinToken.decode(f"  {token.encode()}\n") == token
    assert JoinToken.decode(token.encode()).name == ""


def test_name_defaults_when_missing_from_body() -> None:
    body = {"u": TOKEN.url, "p": PIN, "i": "t", "s": "x"}
    assert JoinToken.decode(_raw(body)).name == ""


@pytest.mark.parametrize("text", ["", "hello", "shj2.abcd", "SHJ1.abcd", "eyJ1Ijoi"])
def test_wrong_prefix(text: str) -> None:
    with pytest.raises(TokenError, match="not a spokehub join token"):
        JoinToken.decode(text)


def test_every_truncation_is_a_clear_token_error() -> None:
    text = TOKEN.encode()
    for cut in range(len(TOKEN_PREFIX), len(text)):
        with pytest.raises(TokenError) as err:
            JoinToken.decode(text[:cut])
        assert "corrupted" in str(err.value) or "not a spokehub" in str(err.value)


@pytest.mark.parametrize(
    "text",
    [
        TOKEN_PREFIX,
        TOKEN_PREFIX + "!!!!",
        TOKEN_PREFIX + "\u00e9\u00e9\u00e9\u00e9",
        TOKEN_PREFIX + base64.urlsafe_b64encode(b"\xff\xfe\xfd").decode(),
        TOKEN_PREFIX + base64.urlsafe_b64encode(b"not json").decode(),
        _raw([1, 2, 3]),
        _raw("string"),
        _raw(42),
        _raw({"u": TOKEN.url, "p": PIN, "i": "t"}),  # no secret
        _raw({"u": TOKEN.url, "p": PIN, "i": 5, "s": "x"}),
        _raw({"u": None, "p": PIN, "i": "t", "s": "x"}),
        _raw({"u": TOKEN.url, "p": PIN, "i": "t", "s": "x", "n": 7}),
        _raw({"u": TOKEN.url, "p": PIN, "i": "t", "s": "x", "n": ["a"]}),
    ],
)
def test_garbage_is_corrupted(text: str) -> None:
    with pytest.raises(TokenError, match=r"corrupted \(was it copied completely\?\)"):
        JoinToken.decode(text)


@pytest.mark.parametrize("url", ["ftp://hub", "hub.example:8443", "wss://hub", ""])
def test_bad_url(url: str) -> None:
    with pytest.raises(TokenError, match="bad hub URL"):
        JoinToken.decode(_raw({"u": url, "p": PIN, "i": "t", "s": "x"}))


@pytest.mark.parametrize("pin", ["sha256:abc", "md5:" + "0" * 64, PIN.upper(), PIN + "0"])
def test_https_needs_a_well_formed_pin(pin: str) -> None:
    with pytest.raises(TokenError, match="malformed certificate pin"):
        JoinToken.decode(_raw({"u": "https://hub", "p": pin, "i": "t", "s": "x"}))


def test_https_without_a_pin_means_ca_verification() -> None:
    """A hub behind a TLS proxy issues tokens with no pin; the spoke then verifies by CA."""
    token = JoinToken.decode(_raw({"u": "https://hub.example", "p": "", "i": "t", "s": "x"}))
    assert token.pin == "" and token.url == "https://hub.example"


def test_token_error_is_a_value_error() -> None:
    assert issubclass(TokenError, ValueError)


def test_new_secret_and_id() -> None:
    a, b = new_secret(), new_secret()
    assert a != b and len(a) >= 40  # 32 random bytes, url-safe
    ident = new_id("tok")
    assert ident.startswith("tok_") and len(ident) == 4 + 16
    int(ident[4:], 16)


def test_hash_secret_is_sha256_hex() -> None:
    assert hash_secret("abc") == hashlib.sha256(b"abc").hexdigest()
    assert hash_secret("abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert hash_secret("abc") != hash_secret("abd")


def test_secret_matches() -> None:
    stored = hash_secret("s3cr3t")
    assert secret_matches("s3cr3t", stored)
    assert not secret_matches("s3cr3T", stored)
    assert not secret_matches("", stored)
    assert not secret_matches("s3cr3t", "s3cr3t")  # never compares the plain secret


def _spy(monkeypatch: pytest.MonkeyPatch) -> list[tuple[object, object]]:
    calls: list[tuple[object, object]] = []
    real = hmac.compare_digest

    def spy(a: Any, b: Any) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(tokens.hmac, "compare_digest", spy)
    return calls


def test_secret_matches_compares_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _spy(monkeypatch)
    stored = hash_secret("x")
    assert secret_matches("x", stored)
    assert calls == [(stored, stored)]


def test_pins_match_compares_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _spy(monkeypatch)
    assert pins_match(PIN, DER)
    assert len(calls) == 1


def test_cert_pin_format() -> None:
    assert PIN_RE.match(PIN)
    assert PIN == "sha256:" + hashlib.sha256(DER).hexdigest()
    assert cert_pin(DER + b"x") != PIN


def test_pins_match_right_and_wrong_der() -> None:
    assert pins_match(PIN, DER)
    assert pins_match(PIN.upper().replace("SHA256:", "sha256:"), DER)  # hex case ignored
    assert not pins_match(PIN, DER + b"\x00")
    assert not pins_match(PIN, b"")
    assert not pins_match("", DER)
    assert not pins_match(PIN[:-1], DER)


def test_pins_match_with_non_ascii_pin_is_a_mismatch_not_a_crash() -> None:
    assert not pins_match("sha256:\u00e9" + PIN[8:], DER)


def test_auth_message_layout() -> None:
    msg = auth_message(b"challenge", "spoke-1", PIN)
    assert msg == AUTH_CONTEXT + b"\nchallenge\nspoke-1\n" + PIN.encode()
    assert auth_message(b"challenge", "spoke-1", PIN) == msg  # deterministic


@pytest.mark.parametrize(
    ("challenge", "name", "pin"),
    [
        (b"challengf", "spoke-1", PIN),
        (b"", "spoke-1", PIN),
        (b"challenge", "spoke-2", PIN),
        (b"challenge", "spoke-1", cert_pin(b"other hub")),
    ],
)
def test_auth_message_binds_challenge_name_and_pin(challenge: bytes, name: str, pin: str) -> None:
    assert auth_message(challenge, name, pin) != auth_message(b"challenge", "spoke-1", PIN)


def test_a_pinned_token_with_a_plain_http_url_is_refused() -> None:
    forged = JoinToken(url="http://hub.example:8443", pin="sha256:" + "0" * 64, token_id="t",
                       secret=new_secret(), name="x").encode()
    with pytest.raises(TokenError) as err:
        JoinToken.decode(forged)
    assert "in clear" in str(err.value)
