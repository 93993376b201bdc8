"""The spoke's identity: an Ed25519 key pair made at enrollment, kept only on the spoke.

The private key never leaves this machine (file mode 0600); the hub stores the public key
and checks a signature over a fresh challenge on every connection.
"""

from __future__ import annotations

import base64
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from protocol.tokens import auth_message

KEY_FILE = "identity.key"
STATE_FILE = "spoke.json"
HUB_CERT_FILE = "hub-cert.pem"  # the pinned hub certificate, saved at connect


@dataclass
class SpokeState:
    """Where this spoke belongs: hub URL, the hub's certificate pin, its own name."""

    hub_url: str
    pin: str
    name: str
    enrolled: bool = False


def _write_private(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.replace(tmp, path)


class Identity:
    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir

    def load_state(self) -> SpokeState | None:
        path = self.data_dir / STATE_FILE
        if not path.exists():
            return None
        return SpokeState(**json.loads(path.read_text()))

    def save_state(self, state: SpokeState) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        _write_private(self.data_dir / STATE_FILE, json.dumps(asdict(state)).encode())

    def key(self, create: bool = False) -> Ed25519PrivateKey:
        path = self.data_dir / KEY_FILE
        if path.exists():
            key = serialization.load_pem_private_key(path.read_bytes(), password=None)
            if not isinstance(key, Ed25519PrivateKey):
                raise ValueError(f"{path} does not hold an Ed25519 key")
            return key
        if not create:
            raise FileNotFoundError(f"no identity in {self.data_dir}: run 'spoke join TOKEN' first")
        self.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        _write_private(path, pem)
        return key

    @staticmethod
    def public_b64(key: Ed25519PrivateKey) -> str:
        raw = key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        return base64.b64encode(raw).decode()

    @staticmethod
    def sign(key: Ed25519PrivateKey, challenge: bytes, name: str, pin: str) -> str:
        return base64.b64encode(key.sign(auth_message(challenge, name, pin))).decode()


class DirSnapshot:
    """The named files of a data dir as a command found them, to put back if it fails.

    ``spoke join`` with a token the hub refuses (used, revoked, expired) must leave the data
    dir as it was: a half-made spoke (a state file, a fresh key nobody enrolled) would make
    the next ``spoke join`` or ``spoke run`` there confusing. Only the named files (and their
    ``.tmp`` siblings) are ever touched, so an operator's own files are never removed."""

    def __init__(self, data_dir: Path, names: list[str]) -> None:
        self.data_dir = data_dir
        self.existed = data_dir.is_dir()
        self.saved: dict[str, tuple[bytes, int] | None] = {}
        for name in names:
            for path in (data_dir / name, (data_dir / name).with_suffix(".tmp")):
                if path.name not in self.saved:
                    self.saved[path.name] = (
                        (path.read_bytes(), path.stat().st_mode & 0o777) if path.is_file() else None
                    )

    def restore(self) -> None:
        """Remove the named files this command created and put back the ones it changed."""
        for name, before in self.saved.items():
            path = self.data_dir / name
            if before is None:
                path.unlink(missing_ok=True)
                continue
            content, mode = before
            if not path.is_file() or path.read_bytes() != content:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
                with os.fdopen(fd, "wb") as fh:
                    fh.write(content)
            os.chmod(path, mode)

    def remove_dir_if_created(self) -> None:
        """The data dir itself, if this command made it and left nothing else in it."""
        if not self.existed:
            try:
                self.data_dir.rmdir()
            except OSError:
                pass
