"""``spoke doctor``: what keeps this spoke from serving its hub.

Each check is a small function of a :class:`SpokeContext` returning a
:class:`protocol.doctor.Check`; :data:`CHECKS` lists them in the order they print and
:func:`run` runs them. Everything here blocks (files, the Docker engine, a TCP and TLS
connection to the hub): it is for the CLI command, never for a serving spoke's event loop.

Nothing is changed: modes are reported, not fixed, and nothing secret is sent to the hub. The
hub is reached the way the spoke reaches it (its URL and pin from ``spoke.json``), but only
``GET /healthz`` is asked, and only after the certificate matched the pin; its ``Date``
header gives the clock skew. Whether the hub still knows this spoke is not asked: the only way
is the signed handshake on ``/spoke/connect``, which would replace a running spoke's
connection. Whether a spoke runs on the data dir is the caller's to find out
(``cli/runlock.py``): it passes the pid.

Every check and what to do when it fails: docs/troubleshooting.md. Pinned by
tests/test_doctor.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import functools
import http.client
import json
import os
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from protocol import doctor as d
from protocol.doctor import Check
from protocol.pins import cert_pin, pins_match
from spoke.identity import KEY_FILE, STATE_FILE, Identity, SpokeState

DOCS = d.TROUBLESHOOTING


@dataclass
class HubProbe:
    """How far a connection to the hub got, stage by stage; the first failing stage says
    why (``tcp_error``, ``tls_error``, ``pin_ok`` False, ``http_error``) and stops it."""

    url: str
    host: str = ""
    port: int = 0
    tls: bool = False
    tcp_error: str = ""
    tls_error: str = ""
    der: bytes | None = None
    pin_ok: bool | None = None  # None: nothing to compare (plain HTTP or no pin)
    http_error: str = ""
    status: int = 0
    body: Any = None
    date: float | None = None  # the hub's clock, from its Date header
    sent_at: float = 0.0  # this clock when the request went out and the answer came in
    answered_at: float = 0.0


@dataclass
class SpokeContext:
    """What the checks look at; the facts more than one check needs are read once."""

    data_dir: Path
    running_pid: int | None = None  # the `spoke run|join` holding the data dir's lock
    timeout_s: float = 5.0
    clock: Callable[[], float] = time.time

    @functools.cached_property
    def state(self) -> SpokeState | str | None:
        """``spoke.json``: the state, None when missing, or why it cannot be read."""
        try:
            return Identity(self.data_dir).load_state()
        except (OSError, ValueError, TypeError) as err:
            return f"{self.data_dir / STATE_FILE} cannot be read: {err}"

    @property
    def enrolled(self) -> SpokeState | None:
        state = self.state
        return state if isinstance(state, SpokeState) and state.enrolled else None

    @functools.cached_property
    def options(self) -> dict[str, Any]:
        """``options.json`` (what `spoke join|run` was given), {} when missing or bad."""
        from spoke.service import OPTIONS_FILE

        with contextlib.suppress(OSError, ValueError):
            doc = json.loads((self.data_dir / OPTIONS_FILE).read_text())
            if isinstance(doc, dict):
                return doc
        return {}

    @functools.cached_property
    def docker(self) -> dict[str, Any] | str:
        """The engine's version document, or why it cannot be reached."""
        return docker_version(self.timeout_s)

    @functools.cached_property
    def hub(self) -> HubProbe | None:
        state = self.enrolled
        if state is None:
            return None
        return probe_hub(state.hub_url, state.pin, self.timeout_s, self.clock)


# ------------------------------------------------------------------------ helpers
def _short(pin: str) -> str:
    return f"{pin[:23]}…" if pin else "(none)"


def docker_version(timeout_s: float) -> dict[str, Any] | str:
    try:
        import docker

        client = docker.from_env(timeout=int(max(timeout_s, 1)))
        try:
            client.ping()
            return dict(client.version())
        finally:
            client.close()
    except Exception as err:  # the SDK raises DockerException, requests' errors, OSError
        return str(err) or type(err).__name__


def image_present(name: str, timeout_s: float) -> bool | str:
    """Whether the engine has image ``name`` (never pulls); a string says why it is unknown."""
    try:
        import docker
        import docker.errors

        client = docker.from_env(timeout=int(max(timeout_s, 1)))
        try:
            client.api.inspect_image(name)
            return True
        except docker.errors.ImageNotFound:
            return False
        finally:
            client.close()
    except Exception as err:
        return str(err) or type(err).__name__


def probe_hub(url: str, pin: str, timeout_s: float,
              clock: Callable[[], float] = time.time) -> HubProbe:
    """Reach the hub as the spoke does: TCP, then TLS with the certificate checked against
    ``pin`` (or, without a pin, against the system's CAs, hostname included), then — only
    if that passed — ``GET /healthz``, timing it to read the hub's clock."""
    parts = urlsplit(url)
    probe = HubProbe(url, host=parts.hostname or "", tls=parts.scheme == "https")
    try:
        probe.port = parts.port or (443 if probe.tls else 80)
    except ValueError as err:
        probe.tcp_error = f"bad hub URL {url!r}: {err}"
        return probe
    if not probe.host or parts.scheme not in ("http", "https"):
        probe.tcp_error = f"bad hub URL {url!r}"
        return probe
    try:
        sock = socket.create_connection((probe.host, probe.port), timeout=timeout_s)
    except OSError as err:
        probe.tcp_error = f"cannot connect to {probe.host}:{probe.port}: {err.strerror or err}"
        return probe
    conn = http.client.HTTPConnection(probe.host, probe.port, timeout=timeout_s)
    try:
        if probe.tls:
            ctx = ssl.create_default_context()
            if pin:  # trust comes from the pin (as in spoke/connector.py)
                ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
            try:
                tls_sock = ctx.wrap_socket(sock, server_hostname=probe.host)
            except (OSError, ssl.SSLError) as err:
                probe.tls_error = str(err) or type(err).__name__
                return probe
            probe.der = tls_sock.getpeercert(binary_form=True)
            conn.sock = tls_sock
            if pin:
                probe.pin_ok = pins_match(pin, probe.der or b"")
                if not probe.pin_ok:
                    return probe  # not another byte to whoever this is
        else:
            conn.sock = sock
        probe.sent_at = clock()
        conn.request("GET", "/healthz", headers={"Host": parts.netloc})
        resp = conn.getresponse()
        probe.answered_at = clock()
        probe.status = resp.status
        date = resp.getheader("Date")
        if date:
            with contextlib.suppress(TypeError, ValueError):
                probe.date = email.utils.parsedate_to_datetime(date).timestamp()
        with contextlib.suppress(ValueError):
            probe.body = json.loads(resp.read(1 << 20))
    except (OSError, http.client.HTTPException) as err:
        probe.http_error = str(err) or type(err).__name__
    finally:
        conn.close()
        sock.close()
    return probe


def default_image(options: dict[str, Any]) -> str:
    """The image workstream boxes use: ``--default-image``, else the first allowed image,
    else the sandbox image (as :class:`spoke.service.SpokeOptions` decides)."""
    from spoke.boxes.image import DEFAULT_IMAGE

    allowed = [str(i) for i in options.get("allow_images") or []]
    return str(options.get("default_image") or (allowed[0] if allowed else DEFAULT_IMAGE))


def image_fix(name: str) -> str:
    from spoke.boxes.image import DEFAULT_IMAGE

    if name == DEFAULT_IMAGE:
        return ("build it on this machine: `sudo deploy/sandbox/build-image.sh` (or `hub up`, "
                f"or `docker build -t {DEFAULT_IMAGE} deploy/sandbox` where a registry is "
                "reachable); operator-guide section 7")
    return (f"`docker pull {name}` (or build/import it) on this machine, or join with "
            "another --default-image; operator-guide section 7")


# ------------------------------------------------------------------------- checks
def check_data_dir(ctx: SpokeContext) -> Check:
    path = ctx.data_dir
    if not path.exists():
        return d.fail("data-dir", f"{path} does not exist",
                      f"enroll: `spoke join --data-dir {path} TOKEN` (TOKEN from `hub token "
                      "create --name NAME` on the hub), or point --data-dir / SPOKEHUB_SPOKE_DIR "
                      "at the spoke's data dir")
    if not path.is_dir():
        return d.fail("data-dir", f"{path} is not a directory",
                      "point --data-dir / SPOKEHUB_SPOKE_DIR at the spoke's data dir")
    st = path.stat()
    if d.loose_mode(st.st_mode, 0o700):
        return d.fail("data-dir", f"{path}: {d.describe_loose(st.st_mode, 0o700)}",
                      f"chmod 700 {path}")
    if st.st_uid != os.geteuid():
        return d.warn("data-dir", f"{path} belongs to uid {st.st_uid}, not to you "
                      f"(uid {os.geteuid()})", "run the doctor as the user that runs the spoke")
    return d.ok("data-dir", f"{path} (owner only)")


def check_enrolled(ctx: SpokeContext) -> Check:
    state = ctx.state
    if isinstance(state, str):
        return d.fail("enrolled", state, f"restore {STATE_FILE} from a backup, or enroll again "
                      f"with a fresh --data-dir (see {DOCS})")
    if state is None:
        return d.fail("enrolled", f"no spoke is enrolled in {ctx.data_dir} (no {STATE_FILE})",
                      f"spoke join --data-dir {ctx.data_dir} TOKEN  (TOKEN from `hub token "
                      "create --name NAME`)")
    if not state.enrolled:
        return d.fail("enrolled", f"spoke {state.name!r} started joining {state.hub_url} but "
                      "the hub has not accepted it", "run `spoke join` again with a new token "
                      "(`hub token create --name NAME`)")
    return d.ok("enrolled", f"spoke {state.name!r} of {state.hub_url}")


def check_identity(ctx: SpokeContext) -> Check:
    """The private key is there, is an Ed25519 key, and only its owner can read it."""
    path = ctx.data_dir / KEY_FILE
    state = ctx.enrolled
    if not path.exists():
        if state is None:
            return d.skip("identity", f"no {KEY_FILE} (not enrolled)")
        return d.fail("identity", f"{path} is missing: the spoke cannot prove who it is",
                      f"restore it from a backup; else re-enroll: `hub spoke revoke {state.name}`"
                      f", `hub token create --name {state.name}`, `spoke join` with a fresh "
                      "--data-dir")
    st = path.stat()
    if d.loose_mode(st.st_mode, 0o600):
        return d.fail("identity", f"{path}: {d.describe_loose(st.st_mode, 0o600)} (the "
                      "spoke's private key)", f"chmod 600 {path}")
    try:
        Identity(ctx.data_dir).key()
    except (OSError, ValueError, TypeError) as err:
        return d.fail("identity", f"{path} is not a usable key: {err}",
                      "restore it from a backup, or re-enroll with a fresh --data-dir")
    state_path = ctx.data_dir / STATE_FILE
    if state_path.exists() and d.loose_mode(state_path.stat().st_mode, 0o600):
        return d.warn("identity", f"{state_path}: "
                      f"{d.describe_loose(state_path.stat().st_mode, 0o600)}",
                      f"chmod 600 {state_path}")
    return d.ok("identity", f"{KEY_FILE}: Ed25519, owner only")


def check_running(ctx: SpokeContext) -> Check:
    if ctx.running_pid is not None:
        return d.ok("running", f"a spoke serves this data dir (pid {ctx.running_pid})")
    if ctx.enrolled is None:
        return d.skip("running", "not enrolled")
    return d.warn("running", "no spoke is running on this data dir",
                  f"spoke run --data-dir {ctx.data_dir}  (`hub up` runs its own)")


def check_docker(ctx: SpokeContext) -> Check:
    version = ctx.docker
    if isinstance(version, str):
        return d.fail("docker", f"the Docker engine is unreachable: {version}",
                      "start it (`systemctl start docker`), check DOCKER_HOST, and that this "
                      "user may use /var/run/docker.sock (root or the docker group)")
    return d.ok("docker", f"Docker {version.get('Version')} (API {version.get('ApiVersion')})")


def check_image(ctx: SpokeContext) -> Check:
    """The default image is in the engine (the spoke never pulls or builds one)."""
    if isinstance(ctx.docker, str):
        return d.skip("image", "Docker engine unreachable")
    return image_check(default_image(ctx.options),
                       [str(i) for i in ctx.options.get("allow_images") or []], ctx.timeout_s)


def image_check(default: str, allowed: list[str], timeout_s: float = 5.0) -> Check:
    """``default`` must be present (fail); other ``allowed`` images missing: a warning."""
    found = image_present(default, timeout_s)
    if isinstance(found, str):
        return d.fail("image", f"cannot inspect image {default}: {found}",
                      "check the Docker engine (`docker image ls`)")
    if not found:
        return d.fail("image", f"the default image {default} is not in the Docker engine: "
                      "boxes and workstreams using it fail", image_fix(default))
    missing = [i for i in allowed if i != default and image_present(i, timeout_s) is not True]
    if missing:
        return d.warn("image", f"{default} present; allowed but missing: {', '.join(missing)}",
                      image_fix(missing[0]))
    return d.ok("image", f"{default} present")


def check_workspaces(ctx: SpokeContext) -> Check:
    """Whether box workspaces can be size-limited here (loop devices): the spoke's own probe."""
    from spoke.boxes.docker_workspace import LoopImages

    images = LoopImages(ctx.data_dir / "workspaces",
                        engine_local=os.environ.get("DOCKER_HOST", "unix://").startswith("unix://"))
    why = asyncio.run(images.status())
    if why:
        return d.warn("workspaces", f"no size limit on box workspaces: {why}",
                      "run the spoke as root on the Docker host, with util-linux and e2fsprogs "
                      "installed (docs/security.md)")
    return d.ok("workspaces", "loop devices work: box workspaces are size-limited")


def check_hub_tcp(ctx: SpokeContext) -> Check:
    probe = ctx.hub
    if probe is None:
        return d.skip("hub-tcp", "not enrolled")
    if probe.tcp_error:
        return d.fail("hub-tcp", probe.tcp_error,
                      "is the hub up? (`hub doctor` on its machine); check the address "
                      f"(hub_url in {ctx.data_dir / STATE_FILE}), DNS and firewalls")
    return d.ok("hub-tcp", f"{probe.host}:{probe.port} accepts connections")


def check_hub_tls(ctx: SpokeContext) -> Check:
    probe, state = ctx.hub, ctx.enrolled
    if probe is None or state is None:
        return d.skip("hub-tls", "not enrolled")
    if probe.tcp_error:
        return d.skip("hub-tls", "hub not reachable")
    if not probe.tls:
        return d.warn("hub-tls", f"plain HTTP to {state.hub_url} (joined with --insecure-http): "
                      "no TLS, no pin", "only on a trusted network (a TLS proxy's inside)")
    if probe.tls_error:
        fix = ("the hub's certificate must be one the system's CAs trust (SSL_CERT_FILE adds a "
               "private CA)" if not state.pin else "is a TLS server listening there? "
               "(`hub doctor` on the hub's machine)")
        return d.fail("hub-tls", f"TLS handshake with {probe.host}:{probe.port} failed: "
                      f"{probe.tls_error}", fix)
    served = cert_pin(probe.der or b"")
    if probe.pin_ok is False:
        return d.fail("hub-tls", f"the hub serves {_short(served)}, this spoke pinned "
                      f"{_short(state.pin)}: the hub's certificate changed, another hub answers "
                      "there, or someone is in the middle",
                      f"if the hub's certificate changed on purpose, re-enroll: `hub spoke "
                      f"revoke {state.name}`, `hub token create --name {state.name}`, then "
                      f"`spoke join` with a fresh --data-dir (see {DOCS})")
    if not state.pin:
        return d.ok("hub-tls", "certificate trusted by the system's CAs (no pin)")
    return d.ok("hub-tls", f"certificate matches the pin {_short(state.pin)}")


def _hub_answered(probe: HubProbe | None) -> str | None:
    """Why there is no answer to judge (None: there is one)."""
    if probe is None:
        return "not enrolled"
    if probe.tcp_error or probe.tls_error:
        return "hub not reachable"
    if probe.pin_ok is False:
        return "the hub's certificate does not match the pin"
    return None


def check_hub_http(ctx: SpokeContext) -> Check:
    probe = ctx.hub
    why = _hub_answered(probe)
    if why or probe is None:
        return d.skip("hub-http", why or "")
    if probe.http_error:
        return d.fail("hub-http", f"GET /healthz failed: {probe.http_error}",
                      "is it a spokehub hub? (`hub doctor` on its machine)")
    body = probe.body if isinstance(probe.body, dict) else {}
    if probe.status != 200 or not body:
        return d.fail("hub-http", f"GET /healthz answered HTTP {probe.status}",
                      f"another service answers at {probe.url}? (`hub doctor` on its machine)")
    status = body.get("status", "ok")
    reasons = "; ".join(map(str, body.get("reasons") or []))
    return d.ok("hub-http", f"the hub answers: {status}"
                + (f" ({reasons})" if reasons else "")
                + f", {body.get('spokes_connected')} spoke(s) connected")


def check_clock(ctx: SpokeContext) -> Check:
    probe = ctx.hub
    why = _hub_answered(probe)
    if why or probe is None:
        return d.skip("clock", why or "")
    if probe.date is None:
        return d.skip("clock", "the hub sent no Date header")
    return clock_check(probe)


def clock_check(probe: HubProbe) -> Check:
    """This clock against the hub's ``Date``: it was stamped between ``sent_at`` and
    ``answered_at`` (our clock) and truncated to the second."""
    assert probe.date is not None
    middle = (probe.sent_at + probe.answered_at) / 2
    skew = middle - (probe.date + 0.5)
    uncertainty = (probe.answered_at - probe.sent_at) / 2 + 0.5
    status, detail = d.clock_skew(skew, uncertainty)
    if status == d.OK:
        return d.ok("clock", detail)
    return d.warn("clock", detail, "synchronize both clocks (chrony, systemd-timesyncd or ntpd)")


CHECKS: list[Callable[[SpokeContext], Check]] = [
    check_data_dir, check_enrolled, check_identity, check_running, check_docker, check_image,
    check_workspaces, check_hub_tcp, check_hub_tls, check_hub_http, check_clock,
]


def run(ctx: SpokeContext) -> list[Check]:
    """Every check in order; with no data dir there is nothing else to look at."""
    return d.run_checks(CHECKS, ctx, runs_as="the spoke",
                        alone=lambda first: first.status == d.FAIL and not ctx.data_dir.is_dir())
