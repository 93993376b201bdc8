"""Join tokens and the bytes a spoke signs to prove its identity.

A join token is one opaque string that carries everything ``spoke join`` needs: the hub's
URL, the SHA-256 pin of the hub's TLS certificate, the token id and a high-entropy secret
(the kubeadm idea of folding the CA hash into the token). Only a hash of the secret is kept
at the hub. Pure functions: no I/O.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import secrets
from dataclasses import dataclass

from protocol.pins import cert_pin as cert_pin  # re-exported: callers import it here
from protocol.pins import pins_match as pins_match
from protocol.verbs import SPOKE_NAME_RE

TOKEN_PREFIX = "shj1."
PIN_RE = re.compile(r"^sha256:[0-9a-f]{64}$")
AUTH_CONTEXT = b"spokehub-auth-v1"


class TokenError(ValueError):
    """The token string cannot be used; the message says why in one line."""


@dataclass(frozen=True)
class JoinToken:
    url: str
    pin: str
    token_id: str
    secret: str
    name: str = ""  # the spoke name the token is bound to (with ``prefix``: the names' prefix)
    # A multi-use token (hub token create --uses N): it enrolls spokes named ``name-…``.
    # Encoded only when set, so single-use tokens are byte for byte what they always were.
    prefix: bool = False

    def encode(self) -> str:
        fields: dict[str, object] = {"u": self.url, "p": self.pin, "i": self.token_id,
                                     "s": self.secret, "n": self.name}
        if self.prefix:
            fields["x"] = 1
        body = json.dumps(fields, separators=(",", ":")).encode()
        return TOKEN_PREFIX + base64.urlsafe_b64encode(body).decode().rstrip("=")

    def spoke_name(self, wanted: str | None = None, hostname: str = "") -> str:
        """The name a spoke enrolling with this token takes. A single-use token names it
        (``wanted``, if given, must be that name). A multi-use token gives a prefix: ``wanted``
        is the full name ``PREFIX-…`` or just what follows the dash, and without it the
        machine's ``hostname`` is the suffix. :class:`TokenError` says why a name cannot be
        used. Pinned by tests/hub/test_token_uses.py::test_names_under_a_multi_use_token."""
        if not self.prefix:
            if wanted and wanted != self.name:
                raise TokenError(f"this join token enrolls spoke {self.name!r} only, not "
                                 f"{wanted!r} (leave out --name)")
            return self.name
        if wanted:
            name = wanted if wanted.startswith(self.name + "-") else f"{self.name}-{wanted}"
        else:
            suffix = re.sub(r"[^a-z0-9-]+", "-", hostname.split(".")[0].lower()).strip("-")
            if not suffix:
                raise TokenError("this join token enrolls spokes named "
                                 f"{self.name}-…: choose one with --name")
            name = f"{self.name}-{suffix}"[:63].rstrip("-")
        if not name_under_prefix(self.name, name):
            raise TokenError(f"bad spoke name {name!r}: {self.name}- then lowercase letters, "
                             "digits and '-', 63 characters at most")
        return name

    @classmethod
    def decode(cls, text: str) -> JoinToken:
        text = text.strip()
        if not text.startswith(TOKEN_PREFIX):
            raise TokenError("not a spokehub join token (it should start with 'shj1.')")
        raw = text[len(TOKEN_PREFIX) :]
        try:
            body = json.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
            token = cls(
                url=body["u"], pin=body["p"], token_id=body["i"], secret=body["s"],
                name=body.get("n", ""), prefix=bool(body.get("x", 0)),
            )
        except (ValueError, KeyError, TypeError):
            raise TokenError("join token is corrupted (was it copied completely?)") from None
        if not all(
            isinstance(v, str)
            for v in (token.url, token.pin, token.token_id, token.secret, token.name)
        ):
            raise TokenError("join token is corrupted (was it copied completely?)")
        if not token.url.startswith(("https://", "http://")):
            raise TokenError(f"join token has a bad hub URL: {token.url!r}")
        if token.url.startswith("http://") and token.pin:
            # A pin promises a verified TLS hub; over http:// the secret would go in clear
            # and the pin would be ignored. Pinned by tests/protocol/test_tokens.py.
            raise TokenError("join token has a certificate pin but a plain http:// hub URL: "
                             "refusing to send its secret in clear (was it edited?)")
        # An empty pin on an https URL means the hub sits behind a TLS proxy with a
        # CA-issued certificate: the spoke then verifies it against the system's CAs.
        if token.url.startswith("https://") and token.pin and not PIN_RE.match(token.pin):
            raise TokenError("join token has a malformed certificate pin")
        return token


MAX_PREFIX_CHARS = 56  # PREFIX-00001 still fits the 63 characters of a spoke name


def name_under_prefix(prefix: str, name: str) -> bool:
    """Whether spoke ``name`` may enroll with a multi-use token for ``prefix``: ``PREFIX-``
    then at least one more character, and a valid spoke name as a whole. The hub checks it
    at enrollment (hub/registry.py), the spoke before it dials (:meth:`JoinToken.spoke_name`).
    Pinned by tests/hub/test_token_uses.py::test_names_under_a_multi_use_token."""
    return (name.startswith(prefix + "-") and len(name) > len(prefix) + 1
            and SPOKE_NAME_RE.fullmatch(name) is not None)


def new_secret() -> str:
    return secrets.token_urlsafe(32)


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(8)}"


def hash_secret(secret: str) -> str:
    """SHA-256 is right for high-entropy machine secrets (bcrypt is for passwords)."""
    return hashlib.sha256(secret.encode()).hexdigest()


def secret_matches(secret: str, stored_hash: str) -> bool:
    return hmac.compare_digest(hash_secret(secret), stored_hash)


def auth_message(challenge: bytes, spoke_name: str, hub_pin: str) -> bytes:
    """What the spoke signs: bound to this hub's pin and this name, so a signature can
    neither be replayed (fresh challenge) nor relayed to another hub."""
    return b"\n".join([AUTH_CONTEXT, challenge, spoke_name.encode(), hub_pin.encode()])
