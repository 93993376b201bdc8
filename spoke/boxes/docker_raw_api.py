"""A raw Docker Engine API client for the three calls of every exec (and the streamed
archive upload of a file), on the unix socket.

Why it exists: every ``box.exec`` costs three Engine API calls (exec create, exec start,
exec inspect), and docker-py sends each through requests and urllib3 — about 0.7 ms of CPU a
call and more for the hijacked ``exec_start``; measured, 4-5 ms of a ~60 ms ``true``, most of
the spoke's own overhead. So for an engine reached through a unix socket, those three calls
(and only those) are written here by hand as plain HTTP/1.1 exchanges; everything else, and
every TCP/TLS, ssh or npipe engine, stays on the docker SDK. The one other call here is the
streamed ``PUT …/archive`` of a file upload (:meth:`EngineExec.put_archive_stream`), for
an error reason: see there.

It mirrors the SDK rather than replacing it: the same request bodies and headers (including
the ``HttpHeaders`` and ``detachKeys`` of ``~/.docker/config.json``), and errors raised as the
same :mod:`docker.errors` / :mod:`requests` exceptions, so the box manager's error mapping
applies unchanged. :func:`spoke.boxes.docker_exec.start_exec` and
:func:`spoke.boxes.docker_exec.exec_inspect` pick it through :func:`engine_for`.

Pinned by ``tests/test_exec_fast_paths.py`` (the hijacked stream's head is read exactly) and
``tests/boxes/test_conformance.py`` (every exec behaviour, on the real engine).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import re
import socket
import threading
import weakref
from collections.abc import Iterable
from typing import Any, NoReturn
from urllib.parse import quote, urlencode

import docker.errors
import requests
from docker.transport.unixconn import UnixHTTPAdapter


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float | None) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            sock.connect(self._path)
        except BaseException:
            sock.close()
            raise
        self.sock = sock


class EngineExec:
    """The Engine API calls of every exec (create, start, inspect), straight over the
    engine's unix socket.

    docker-py sends each call through requests and urllib3, which costs about 0.7 ms of CPU
    a call and more for the hijacked ``exec_start``: measured, 4-5 ms of a ~60 ms ``true``,
    most of the spoke's own overhead. These are plain HTTP/1.1 exchanges on a fresh unix
    connection each (connecting costs nothing measurable, and nothing is shared between
    the manager's threads), with the SDK's request bodies and headers, and its exceptions:
    errors surface as the same :mod:`docker.errors` / :mod:`requests` exceptions, so the
    manager's error mapping applies unchanged. Only used for an engine reached through a
    unix socket (:func:`engine_for`); TCP/TLS, ssh and npipe engines keep the SDK.
    """

    MAX_HEAD = 65536  # bytes of status line + headers accepted on the hijacked stream

    def __init__(self, socket_path: str, version: str, headers: dict[str, str],
                 timeout: float | None, configs: dict[str, Any] | None = None) -> None:
        self.socket_path = socket_path
        self.version = version
        self.headers = headers
        self.timeout = timeout
        self.configs = configs or {}  # the SDK's ~/.docker/config.json settings

    @classmethod
    def for_api(cls, api: Any) -> EngineExec | None:
        """An instance mirroring docker-py ``APIClient`` ``api``, or None to use the SDK."""
        adapter = getattr(api, "_custom_adapter", None)
        version = getattr(api, "api_version", None)
        path = getattr(adapter, "socket_path", None)
        if not isinstance(adapter, UnixHTTPAdapter) or not isinstance(path, str):
            return None
        if not isinstance(version, str) or not re.fullmatch(r"\d+\.\d+", version):
            return None
        headers = {"User-Agent": str(api.headers.get("User-Agent", "docker-sdk-python"))}
        configs = getattr(api, "_general_configs", None) or {}
        headers.update({str(k): str(v) for k, v in (configs.get("HttpHeaders") or {}).items()})
        timeout = getattr(api, "timeout", None)
        return cls(path, version, headers, timeout if isinstance(timeout, int | float) else None,
                   configs)

    # ------------------------------------------------------------------ helpers
    def _path(self, fmt: str, *args: str) -> str:
        return f"/v{self.version}" + fmt.format(*(quote(a, safe="/:") for a in args))

    def _raise(self, status: int, reason: str, path: str, body: bytes) -> NoReturn:
        """Raise what docker-py raises for this error response."""
        response = requests.Response()
        response.status_code, response.reason, response._content = status, reason, body
        response.url, response.encoding = f"http+docker://localhost{path}", "utf-8"
        kind = "Client" if status < 500 else "Server"
        http_error = requests.exceptions.HTTPError(
            f"{status} {kind} Error: {reason} for url: {response.url}", response=response
        )
        docker.errors.create_api_error_from_http_exception(http_error)
        raise http_error  # not reached: the line above always raises

    @staticmethod
    def _transport_error(exc: OSError) -> requests.exceptions.RequestException:
        """The requests exception the SDK would have raised for this socket failure."""
        if isinstance(exc, TimeoutError):
            return requests.exceptions.Timeout(str(exc))
        return requests.exceptions.ConnectionError(str(exc))

    def _json_call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        conn = _UnixHTTPConnection(self.socket_path, self.timeout)
        try:
            headers = dict(self.headers)
            data = None
            if body is not None:
                data = json.dumps(body).encode()
                headers["Content-Type"] = "application/json"
            conn.request(method, path, body=data, headers=headers)
            resp = conn.getresponse()
            raw = resp.read()
        except OSError as exc:
            raise self._transport_error(exc) from exc
        finally:
            conn.close()
        if resp.status >= 400:
            self._raise(resp.status, resp.reason, path, raw)
        return json.loads(raw) if raw else None

    # ------------------------------------------------------------------ API
    def exec_create(self, container: str, cmd: list[str], *, environment: dict[str, str] | None,
                    workdir: str | None, stdin: bool = False) -> dict[str, Any]:
        """``APIClient.exec_create(container, cmd, stdout=True, stderr=True, stdin=stdin,
        tty=False, environment=..., workdir=...)``."""
        data: dict[str, Any] = {
            "Container": container, "User": "", "Privileged": False, "Tty": False,
            "AttachStdin": stdin, "AttachStdout": True, "AttachStderr": True, "Cmd": cmd,
        }
        if environment:
            data["Env"] = [f"{k}={v}" for k, v in environment.items()]
        if workdir is not None:
            data["WorkingDir"] = workdir
        if "detachKeys" in self.configs:
            data["detachKeys"] = self.configs["detachKeys"]
        result: dict[str, Any] = self._json_call(
            "POST", self._path("/containers/{}/exec", container), data
        )
        return result

    def put_archive_stream(self, container: str, path: str, pieces: Iterable[bytes],
                           length: int) -> None:
        """``APIClient.put_archive(container, path, data)`` with the tar sent as ``pieces``
        come (``length`` bytes in all, declared up front), so no upload is ever held whole.

        Why by hand: when the engine refuses the archive part-way (ENOSPC in a full
        workspace, a read-only path) it answers and stops reading; requests then fails with
        a broken pipe and the engine's message is lost. On the unix socket the answer is
        still there to read after the pipe broke. An exception raised by ``pieces`` (the
        upload's source failed) propagates unchanged, with the request cut short. Pinned by
        tests/boxes/test_conformance_files.py and tests/boxes/test_docker_workspace.py."""
        target = self._path("/containers/{}/archive", container) + "?" + urlencode({"path": path})
        conn = _UnixHTTPConnection(self.socket_path, self.timeout)
        try:
            try:
                conn.putrequest("PUT", target, skip_accept_encoding=True)
                for key, value in self.headers.items():
                    conn.putheader(key, value)
                conn.putheader("Content-Type", "application/x-tar")
                conn.putheader("Content-Length", str(length))
                conn.endheaders()
                for piece in pieces:
                    try:
                        conn.send(piece)
                    except (BrokenPipeError, ConnectionResetError):
                        break  # the engine stopped reading: its answer says why
                resp = conn.getresponse()
                raw = resp.read()
            except OSError as exc:
                raise self._transport_error(exc) from exc
        finally:
            conn.close()
        if resp.status >= 400:
            self._raise(resp.status, resp.reason, target, raw)

    def exec_inspect(self, exec_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self._json_call("GET", self._path("/exec/{}/json", exec_id))
        return result

    def exec_start_socket(self, exec_id: str) -> socket.socket:
        """``APIClient.exec_start(exec_id, socket=True)``: the hijacked connection, its
        HTTP head consumed exactly (nothing of the output stream is read ahead)."""
        path = self._path("/exec/{}/start", exec_id)
        body = json.dumps({"Tty": False, "Detach": False}).encode()
        head = "".join(f"{k}: {v}\r\n" for k, v in self.headers.items())
        request = (
            f"POST {path} HTTP/1.1\r\nHost: localhost\r\n{head}"
            "Content-Type: application/json\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode() + body
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            sock.connect(self.socket_path)
            sock.sendall(request)
            status, reason, headers = self._read_head(sock)
            if status in (101, 200):
                return sock
            length = headers.get("content-length", "")
            raw = self._recv_exact(sock, int(length)) if length.isdigit() else b""
        except OSError as exc:
            sock.close()
            raise self._transport_error(exc) from exc
        except BaseException:
            sock.close()
            raise
        sock.close()
        self._raise(status, reason, path, raw)

    def _read_head(self, sock: socket.socket) -> tuple[int, str, dict[str, str]]:
        """Read the status line and headers, and not one byte more: peek, then take
        exactly up to the blank line, so the output stream starts at the next recv."""
        head = b""
        while True:
            peek = sock.recv(4096, socket.MSG_PEEK)
            if not peek:
                raise ConnectionResetError("the Docker engine closed the exec stream early")
            window = head[-3:] + peek
            end = window.find(b"\r\n\r\n")
            if end >= 0:
                head += self._recv_exact(sock, end + 4 - len(head[-3:]))
                break
            head += self._recv_exact(sock, len(peek))
            if len(head) > self.MAX_HEAD:
                raise ConnectionError("oversized HTTP head on the exec stream")
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ", 2)
        if len(parts) < 2 or not parts[1].isdigit():
            raise ConnectionError(f"bad HTTP status line on the exec stream: {lines[0][:80]!r}")
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if sep:
                headers[name.strip().lower()] = value.strip()
        return int(parts[1]), parts[2] if len(parts) > 2 else "", headers

    @staticmethod
    def _recv_exact(sock: socket.socket, n: int) -> bytes:
        data = b""
        while len(data) < n:
            piece = sock.recv(n - len(data))
            if not piece:
                raise ConnectionResetError("the Docker engine closed the connection early")
            data += piece
        return data


_engines: weakref.WeakKeyDictionary[Any, EngineExec | None] = weakref.WeakKeyDictionary()
_engines_lock = threading.Lock()


def engine_for(api: Any) -> EngineExec | None:
    """The :class:`EngineExec` for docker-py client ``api`` (made once), or None when the
    SDK must be used (not a unix-socket engine, or an object that is not a real client)."""
    with _engines_lock:
        try:
            return _engines[api]
        except KeyError:
            pass
        except TypeError:  # not weak-referenceable / hashable: not a docker-py client
            return None
        engine = EngineExec.for_api(api)
        with contextlib.suppress(TypeError):
            _engines[api] = engine
        return engine
