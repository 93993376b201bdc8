"""spokehub in-box exec supervisor: the box's main process, spoken to over its stdio.

Self-contained (stdlib only, Python 3.7+): the spoke passes this file's text to
``python3 -u -c`` inside the box; nothing of spokehub is installed there. Binary frames
(``>BII``: type, channel, payload length) arrive on stdin and leave on stdout; control
payloads are JSON. The spoke never trusts it for security: it enforces timeouts and kills
from outside and falls back to ``docker exec`` when this process is dead, silent or sends
garbage (spoke/boxes/agent_client.py).

Stream sync: both directions start unsynced and skip bytes until :data:`MAGIC`. A spoke that
(re)attaches after a restart cannot know where the previous one stopped: when its first
``MAGIC`` + HELLO gets no answer, it sends a pad of zero bytes (completing any half-sent
frame; type 0 is invalid, so the rest unsyncs this reader), then ``MAGIC`` + HELLO again. Channels of an earlier spoke process keep running until that
spoke's start-up sweep kills them through their pid files (the docker-exec path's
``end_orphaned_execs``); their frames are ignored by the new spoke (unknown channel ids).

Pinned by tests/boxes/test_exec_agent.py and the ``agent`` backend of
tests/boxes/test_conformance.py.
"""

from __future__ import annotations

import errno
import os
import re
import selectors
import signal
import socket
import struct
import subprocess
import sys

# >>> boxlib: on the spoke (tests, mypy) the helpers are imported; for the box,
# spoke/boxes/agent_boxes.py supervisor_source() puts boxlib.py's text here instead.
from spoke.boxes.inbox.boxlib import (
    base_env,
    dumps,
    kill_tree,
    obj,
    set_winsize,
    spawn,
    start_failure,
)

# <<< boxlib

MAGIC = b"\x00\xffSPOKEHUB-SYNC\xff\x00"
HEADER = struct.Struct(">BII")
MAX_IN = 1 << 16  # largest payload the spoke may send
READ_SIZE = 1 << 16  # largest payload we send
WINDOW = 1 << 20  # unacknowledged output bytes per channel before we stop reading a child
VERSION = 1

HELLO, OPEN, OPENED, DATA, EOF, STDOUT, STDERR, RESIZE, ERROR = 1, 2, 3, 4, 5, 6, 7, 8, 9
# Frames go out on the container's stderr; its stdout stays the box's "main process output"
# (what `echo hi > /proc/1/fd/1` in the box writes, and this supervisor's own diagnostics),
# which the spoke keeps for `box logs`: a box writing there cannot garble the frames.
FRAME_FD, LOG_FD = 2, 1
SIGNAL, KILL, EXIT, ACK, CLOSE = 10, 11, 12, 13, 14
KNOWN_IN = {HELLO, OPEN, DATA, EOF, RESIZE, SIGNAL, KILL, ACK, CLOSE}
PIDFILE_RE = re.compile(r"/tmp/\.spokehub-exec-[0-9a-f]+\.pid")
EOT = b"\x04"


def log(msg: str) -> None:
    try:
        os.write(LOG_FD, ("spokehub-supervisor: " + msg + "\n").encode("utf-8", "replace"))
    except OSError:
        pass


class Chan:
    """One channel: an exec (pipes), a PTY (one master fd) or a TCP connection."""

    def __init__(self, cid: int, kind: str) -> None:
        self.cid = cid
        self.kind = kind
        self.proc: subprocess.Popen | None = None  # type: ignore[type-arg]
        self.outs: dict[int, int] = {}  # readable fd -> frame type of its data
        self.files: dict[int, object] = {}  # fd -> the Popen file object that owns it
        self.in_fd: int | None = None
        self.sock: socket.socket | None = None
        self.pending = bytearray()  # input not yet written to the child
        self.eof_in = False
        self.unacked = 0
        self.code: int | None = None
        self.pidfile: str | None = None
        self.done = False


class Supervisor:
    def __init__(self) -> None:
        self.sel = selectors.DefaultSelector()
        self.events: dict[int, int] = {}
        self.owner: dict[int, Chan] = {}
        self.chans: dict[int, Chan] = {}
        self.inbuf = bytearray()
        self.synced = False
        self.outbuf = bytearray()
        self.stdin_open = True
        os.set_blocking(0, False)
        os.set_blocking(FRAME_FD, False)
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        os.set_blocking(self.wake_w, False)
        signal.set_wakeup_fd(self.wake_w)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)  # Popen restores it in children
        # The launching shell started us as a background job, with SIGINT and SIGQUIT
        # ignored; children would inherit that (Ctrl-C in a PTY would do nothing).
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.signal(signal.SIGQUIT, signal.SIG_DFL)
        self.sel.register(0, selectors.EVENT_READ)
        self.sel.register(self.wake_r, selectors.EVENT_READ)

    # ----------------------------------------------------------------- output
    def send(self, ftype: int, cid: int, payload: bytes = b"", magic: bool = False) -> None:
        if magic:
            self.outbuf += MAGIC
        self.outbuf += HEADER.pack(ftype, cid, len(payload))
        self.outbuf += payload
        self.flush()

    def send_json(self, ftype: int, cid: int, obj: object, magic: bool = False) -> None:
        self.send(ftype, cid, dumps(obj).encode(), magic)

    def flush(self) -> None:
        while self.outbuf:
            try:
                n = os.write(FRAME_FD, self.outbuf)
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno == errno.EINTR:
                    continue
                del self.outbuf[:]  # nobody can read it: drop, keep the commands running
                break
            del self.outbuf[:n]
        self.want(FRAME_FD, selectors.EVENT_WRITE if self.outbuf else 0)

    def want(self, fd: int, events: int) -> None:
        old = self.events.get(fd, 0)
        if events == old:
            return
        if not old:
            self.sel.register(fd, events)
        elif not events:
            self.sel.unregister(fd)
        else:
            self.sel.modify(fd, events)
        if events:
            self.events[fd] = events
        else:
            self.events.pop(fd, None)

    def refresh(self, ch: Chan) -> None:
        fds = set(ch.outs)
        if ch.in_fd is not None:
            fds.add(ch.in_fd)
        for fd in fds:
            ev = 0
            if fd in ch.outs and ch.unacked < WINDOW:
                ev |= selectors.EVENT_READ
            if fd == ch.in_fd and ch.pending:
                ev |= selectors.EVENT_WRITE
            self.owner[fd] = ch
            self.want(fd, ev)

    # ----------------------------------------------------------------- input
    def read_stdin(self) -> None:
        try:
            data = os.read(0, 1 << 18)
        except BlockingIOError:
            return
        except OSError as exc:
            if exc.errno == errno.EINTR:
                return
            data = b""
        if not data:
            # The spoke went away for good (stdin closed). Keep the box's commands: the next
            # spoke process sweeps them (pid files); just stop reading.
            self.stdin_open = False
            self.want(0, 0)
            return
        self.inbuf += data
        self.parse()

    def parse(self) -> None:
        buf = self.inbuf
        while True:
            if not self.synced:
                at = buf.find(MAGIC)
                if at < 0:
                    del buf[:max(0, len(buf) - len(MAGIC) + 1)]
                    return
                del buf[:at + len(MAGIC)]
                self.synced = True
            if len(buf) < HEADER.size:
                return
            ftype, cid, length = HEADER.unpack_from(buf)
            if ftype not in KNOWN_IN or length > MAX_IN:
                self.synced = False  # garbage (or a restarted spoke's pad): wait for MAGIC
                del buf[:1]
                continue
            if len(buf) < HEADER.size + length:
                return
            payload = bytes(buf[HEADER.size:HEADER.size + length])
            del buf[:HEADER.size + length]
            try:
                self.handle(ftype, cid, payload)
            except Exception as exc:  # one bad request must not stop the supervisor
                log(f"frame {ftype} on channel {cid} failed: {exc!r}")
                if cid:
                    self.send_json(ERROR, cid, {"message": f"{type(exc).__name__}: {exc}"})

    def handle(self, ftype: int, cid: int, payload: bytes) -> None:
        if ftype == HELLO:
            info = {"v": VERSION, "pid": os.getpid(), "python": sys.version.split()[0],
                    "window": WINDOW, "max_in": MAX_IN}
            try:
                info["session"] = obj(payload).get("session")
            except (ValueError, AttributeError):
                pass
            self.send_json(HELLO, 0, info, magic=True)
            return
        if ftype == OPEN:
            self.open(cid, obj(payload))
            return
        ch = self.chans.get(cid)
        if ch is None:
            return  # ended already, or another spoke's: nothing to do
        if ftype == DATA:
            if ch.in_fd is None or ch.eof_in:
                return
            ch.pending += payload
            self.write_input(ch)
        elif ftype == EOF:
            ch.eof_in = True
            self.write_input(ch)
        elif ftype == ACK:
            (n,) = struct.unpack(">I", payload)
            was_full = ch.unacked >= WINDOW
            ch.unacked = max(0, ch.unacked - n)
            if was_full:
                self.refresh(ch)
        elif ftype == RESIZE:
            size = obj(payload)
            if ch.kind == "pty" and ch.in_fd is not None:
                set_winsize(ch.in_fd, int(size["rows"]), int(size["cols"]))
        elif ftype == SIGNAL:
            sig = int(obj(payload)["signal"])
            if ch.proc is not None and ch.code is None:
                try:
                    os.killpg(ch.proc.pid, sig)
                except OSError:
                    pass
        elif ftype == KILL:
            self.kill(ch)
        elif ftype == CLOSE:
            self.kill(ch)
            for fd in list(ch.outs):
                self.close_out(ch, fd)
            self.maybe_done(ch)

    # ----------------------------------------------------------------- channels
    def open(self, cid: int, req: dict) -> None:  # type: ignore[type-arg]
        if cid == 0 or cid in self.chans:
            self.send_json(ERROR, cid, {"message": f"channel id {cid} is in use"})
            return
        kind = req.get("kind")
        ch = Chan(cid, str(kind))
        if kind == "tcp":
            port = int(req["port"])
            try:
                sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            except OSError as exc:
                self.send_json(ERROR, cid, {"message": f"cannot connect to 127.0.0.1:{port} in the "
                                            f"box: {exc.strerror or exc}",
                                            "code": "unavailable"})
                return
            sock.setblocking(False)
            ch.sock = sock
            ch.in_fd = sock.fileno()
            ch.outs[sock.fileno()] = STDOUT
            self.chans[cid] = ch
            self.send_json(OPENED, cid, {"pid": None})
            self.refresh(ch)
            return
        if kind not in ("exec", "pty"):
            self.send_json(ERROR, cid, {"message": f"unknown channel kind {kind!r}"})
            return
        argv = [str(a) for a in req["argv"]]
        env = dict(BASE_ENV)
        env.update({str(k): str(v) for k, v in (req.get("env") or {}).items()})
        cwd = req.get("cwd") or None
        pidfile = req.get("pidfile")
        if pidfile is not None and not PIDFILE_RE.fullmatch(str(pidfile)):
            self.send_json(ERROR, cid, {"message": "bad pid file name"})
            return
        try:
            proc, master = spawn(str(kind), argv, env, cwd, req)
        except OSError as exc:
            code, msg = start_failure(exc, argv[0] if argv else "", cwd)
            self.send_json(OPENED, cid, {"pid": None})
            self.send(STDERR if kind == "exec" else STDOUT, cid, msg.encode())
            self.send_json(EXIT, cid, {"code": code})
            return
        ch.proc = proc
        ch.pidfile = pidfile
        if pidfile:
            try:
                with open(pidfile, "w") as fh:
                    fh.write(f"{proc.pid}\n")
            except OSError as exc:
                log(f"cannot write {pidfile}: {exc}")
        if kind == "pty":
            os.set_blocking(master, False)
            ch.in_fd = master
            ch.outs[master] = STDOUT
        else:
            for pipe, ftype in ((proc.stdout, STDOUT), (proc.stderr, STDERR)):
                assert pipe is not None
                fd = pipe.fileno()
                os.set_blocking(fd, False)
                ch.outs[fd] = ftype
                ch.files[fd] = pipe
            if proc.stdin is not None:
                ch.in_fd = proc.stdin.fileno()
                os.set_blocking(ch.in_fd, False)
        self.chans[cid] = ch
        self.send_json(OPENED, cid, {"pid": proc.pid})
        self.refresh(ch)

    def write_input(self, ch: Chan) -> None:
        fd = ch.in_fd
        if fd is None:
            return
        written = 0
        while ch.pending:
            try:
                n = os.write(fd, ch.pending[:READ_SIZE])
            except BlockingIOError:
                break
            except OSError:  # the child closed its input: drop what it will never read
                written += len(ch.pending)
                del ch.pending[:]
                break
            del ch.pending[:n]
            written += n
        if written:
            self.send(ACK, ch.cid, struct.pack(">I", written))
        if ch.eof_in and not ch.pending:
            self.end_input(ch)
        self.refresh(ch)

    def end_input(self, ch: Chan) -> None:
        if ch.kind == "pty":
            if ch.in_fd is not None:
                try:
                    os.write(ch.in_fd, EOT)
                except OSError:
                    pass
            ch.eof_in = False  # a PTY may take more input after ^D
            return
        if ch.kind == "tcp" and ch.sock is not None:
            try:
                ch.sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass
        elif ch.proc is not None and ch.proc.stdin is not None and ch.in_fd is not None:
            self.want(ch.in_fd, 0)
            self.owner.pop(ch.in_fd, None)
            try:
                ch.proc.stdin.close()
            except OSError:
                pass
        ch.in_fd = None if ch.kind != "tcp" else ch.in_fd
        ch.pending = bytearray()

    def read_child(self, ch: Chan, fd: int) -> None:
        try:
            data = os.read(fd, READ_SIZE)
        except BlockingIOError:
            return
        except OSError:  # EIO: the PTY's other side is gone; ECONNRESET for TCP
            data = b""
        if not data:
            self.close_out(ch, fd)
            self.maybe_done(ch)
            return
        ch.unacked += len(data)
        self.send(ch.outs[fd], ch.cid, data)
        if ch.unacked >= WINDOW:
            self.refresh(ch)

    def close_out(self, ch: Chan, fd: int) -> None:
        ch.outs.pop(fd, None)
        if fd == ch.in_fd and ch.kind != "exec":
            ch.in_fd = None
            ch.pending = bytearray()
        self.want(fd, 0)
        self.owner.pop(fd, None)
        owner = ch.files.pop(fd, None)
        try:
            if ch.kind == "tcp" and ch.sock is not None:
                ch.sock.close()
                ch.sock = None
            elif owner is not None:  # never os.close() an fd a file object will close again
                owner.close()  # type: ignore[attr-defined]
            else:
                os.close(fd)
        except OSError:
            pass

    def kill(self, ch: Chan) -> None:
        if ch.proc is not None and ch.code is None:
            kill_tree(ch.proc.pid)
            self.reap()
        elif ch.kind == "tcp":
            for fd in list(ch.outs):
                self.close_out(ch, fd)
            self.maybe_done(ch)

    def reap(self) -> None:
        for ch in list(self.chans.values()):
            if ch.proc is not None and ch.code is None:
                rc = ch.proc.poll()
                if rc is not None:
                    ch.code = 128 - rc if rc < 0 else rc
                    if ch.pidfile:
                        try:
                            os.unlink(ch.pidfile)
                        except OSError:
                            pass
                    self.maybe_done(ch)

    def maybe_done(self, ch: Chan) -> None:
        if ch.done or ch.outs:
            return
        if ch.proc is not None and ch.code is None:
            return
        ch.done = True
        if ch.in_fd is not None:
            self.want(ch.in_fd, 0)
            self.owner.pop(ch.in_fd, None)
            if ch.proc is not None and ch.proc.stdin is not None:
                try:
                    ch.proc.stdin.close()
                except OSError:
                    pass
        self.chans.pop(ch.cid, None)
        self.send_json(EXIT, ch.cid, {"code": ch.code if ch.code is not None else 0})

    # ----------------------------------------------------------------- loop
    def run(self) -> None:
        while True:
            for key, events in self.sel.select():
                fd = key.fd
                if fd == 0:
                    self.read_stdin()
                elif fd == FRAME_FD:
                    self.flush()
                elif fd == self.wake_r:
                    try:
                        while os.read(self.wake_r, 512):
                            pass
                    except OSError:
                        pass
                    self.reap()
                else:
                    ch = self.owner.get(fd)
                    if ch is None:
                        continue
                    if events & selectors.EVENT_WRITE and fd == ch.in_fd:
                        self.write_input(ch)
                    if events & selectors.EVENT_READ and fd in ch.outs:
                        self.read_child(ch, fd)
            if not self.stdin_open and not self.chans:
                # Nobody will ever talk to us again on this stdin: idle quietly.
                signal.pause()


BASE_ENV = base_env()


if __name__ == "__main__":
    Supervisor().run()
