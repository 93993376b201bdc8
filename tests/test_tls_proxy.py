"""A hub behind a TLS-terminating proxy (``hub serve --insecure-http --public-url https://…``):
join tokens then carry no pin, and spokes and the CLI verify the proxy's CA-issued certificate
instead. The proxy is a real TLS terminator on loopback; the CA is made here."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import ssl
import threading
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from protocol.tokens import JoinToken
from tests.cluster import HUB, SPOKE, Hub, Proc, Spoke, free_port, wait_until


def _make_ca(tmp: Path, name: str) -> tuple[Path, Path, Path]:
    """A private CA and a server certificate for 127.0.0.1 signed by it: (ca, cert, key)."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{name} test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca_name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = tmp / f"{name}-ca.pem", tmp / f"{name}-cert.pem", tmp / f"{name}-key.pem"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return paths


class TlsProxy:
    """Terminates TLS on ``port`` and pipes the plain bytes to ``backend`` (like nginx would)."""

    def __init__(self, cert: Path, key: Path, backend: int) -> None:
        self.port, self.backend = free_port(), backend
        self.ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.ctx.load_cert_chain(cert, key)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def start(self) -> TlsProxy:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._listen(), self.loop).result(10)
        return self

    async def _listen(self) -> None:
        self.server = await asyncio.start_server(self._client, "127.0.0.1", self.port, ssl=self.ctx)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.backend)
        except OSError:
            writer.close()
            return

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, ssl.SSLError):
                pass
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.server.close)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


class ProxiedHub(Hub):
    def __init__(self, tmp: Path, proxy_port: int) -> None:
        super().__init__(tmp)
        self.backend_port = self.port
        self.url = f"https://127.0.0.1:{proxy_port}"

    def start(self) -> None:
        self.proc = Proc([HUB, "serve", "--data-dir", str(self.dir), "--port", str(self.backend_port),
                          "--insecure-http", "--public-url", self.url],
                         self.dir.parent / f"hub-{self.backend_port}.log")
        wait_until(lambda: self._ready(), what="proxied hub /healthz")

    def _ready(self) -> bool:
        assert self.proc is not None and self.proc.alive(), self.proc.output() if self.proc else ""
        try:
            self.client().request("GET", "/healthz")
            return True
        except Exception:
            return False


def test_spoke_joins_a_hub_behind_a_tls_proxy_with_ca_verification(
        tmp_path: Path, sandbox_image: str, spokes: list[Spoke], monkeypatch: pytest.MonkeyPatch) -> None:
    ca, cert, key = _make_ca(tmp_path, "proxy")
    monkeypatch.setenv("SSL_CERT_FILE", str(ca))  # trust the private CA (this process + children)
    backend = free_port()
    proxy = TlsProxy(cert, key, backend).start()
    hub = ProxiedHub(tmp_path, proxy.port)
    hub.port = hub.backend_port = backend
    try:
        hub.start()
        token = hub.token("behind-proxy")
        parsed = JoinToken.decode(token)
        assert parsed.url == hub.url and parsed.pin == "", "no pin: trust comes from the CA"

        # A spoke that does not trust the proxy's CA refuses to talk and says why.
        other_ca, _, _ = _make_ca(tmp_path, "other")
        stray = Proc([SPOKE, "join", "--data-dir", str(tmp_path / "stray"), token],
                     tmp_path / "stray.log", env={"SSL_CERT_FILE": str(other_ca)})
        assert stray.wait(60) != 0
        assert "not trusted" in stray.output()

        spoke = Spoke(tmp_path, hub, name="behind-proxy")
        spokes.append(spoke)
        spoke.join(token)
        box = hub.cli_json("box", "create", "--spoke", spoke.name, "--image", sandbox_image)["id"]
        res = hub.cli("box", "exec", box, "--", "sh", "-c", "echo through-the-proxy")
        assert (res.returncode, res.stdout) == (0, "through-the-proxy\n"), res.stderr
    finally:
        hub.stop()
        proxy.stop()
