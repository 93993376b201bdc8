"""The simulated spokes' network: source addresses and fault injection under the real connector.

Each simulated spoke runs the real :func:`spoke.connector.run` (the real ``websockets`` dial,
TLS, pin check, backoff and :class:`spoke.session.Session`). To give it a source address of its
own and to break its connection on purpose without touching that code, the simulator runs on
:class:`SimLoop`, an event loop whose ``create_connection`` — which ``websockets.connect`` calls
for its TCP+TLS connection — asks the dialling spoke's :class:`SimLink` (found through a context
variable set in that spoke's task) how to dial, and puts a :class:`FaultyTransport` between the
socket and the WebSocket protocol. Faults, as the hub experiences them:

- **kill**: the socket is aborted with no WebSocket close frame (a crashed spoke process) and
  the spoke stays down (new dials are refused) until restarted: the hub must call it ``lost``.
- **partition**: nothing flows either way for a while (bytes are held, reads paused) and new
  dials hang; a side that gives up meanwhile sees its connection end while the other side sees
  nothing, as across a real partition. When it heals, held bytes flow or a given-up socket is
  aborted.
- **slow**: every byte in and out is delayed by ``delay_s`` (order kept).

Source addresses: the hub caps connections per address (``hub serve --max-connections-per-ip``,
256 by default), so against a loopback hub the links are spread over 127.0.0.2, 127.0.0.3, … .
Dials are limited to ``dial_slots`` at a time: one process handshaking 10,000 TLS connections
at once would time its own handshakes out. Pinned by tests/sim/test_spoke_sim.py.
"""

from __future__ import annotations

import asyncio
import contextvars
import resource
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")
CURRENT: contextvars.ContextVar[SimLink | None] = contextvars.ContextVar("spokehub_sim_link",
                                                                         default=None)
PARTITION_DIAL_S = 10.0  # a dial into a partition hangs this long, then times out


class SimNetwork:
    """What all links share: the dial slots, and who to tell when a connection ends."""

    def __init__(self, *, dial_slots: int = 200,
                 on_lost: Callable[[SimLink], None] | None = None) -> None:
        self.slots = asyncio.Semaphore(dial_slots)
        self.on_lost = on_lost
        self.dials = 0

    async def dial(self, link: SimLink, create: Callable[..., Awaitable[tuple[Any, Any]]],
                   factory: Callable[[], Any], host: Any, port: Any,
                   kwargs: dict[str, Any]) -> tuple[asyncio.Transport, Any]:
        if link.down:
            raise ConnectionRefusedError(f"simulated crash: spoke {link.name} is down")
        if link.partitioned:
            await asyncio.sleep(PARTITION_DIAL_S)
            if link.partitioned:
                raise TimeoutError(f"simulated partition: spoke {link.name} cannot reach the hub")
        if link.source and kwargs.get("sock") is None:
            kwargs.setdefault("local_addr", (link.source, 0))
        async with self.slots:
            self.dials += 1
            _transport, shim = await create(lambda: _ShimProtocol(factory(), link), host, port,
                                            **kwargs)
        assert isinstance(shim, _ShimProtocol)
        if link.down:  # killed while dialling
            shim.faulty.real.abort()
            raise ConnectionRefusedError(f"simulated crash: spoke {link.name} is down")
        return shim.faulty, shim.inner


@dataclass(eq=False)
class SimLink:
    """One simulated spoke's side of the network and the faults applied to it."""

    name: str
    network: SimNetwork
    source: str | None = None
    down: bool = False
    partitioned: bool = False
    delay_s: float = 0.0
    transports: set[FaultyTransport] = field(default_factory=set)

    def kill(self) -> None:
        """Crash: abort every socket (no close frame) and refuse dials until :meth:`revive`."""
        self.down = True
        for transport in list(self.transports):
            transport.real.abort()

    def revive(self) -> None:
        self.down = False

    def partition(self, on: bool) -> None:
        self.partitioned = on
        for transport in list(self.transports):
            transport.set_partition(on)


class _Delayed:
    """Callbacks run ``delay_s`` after they were queued, in the order they were queued."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.queue: deque[tuple[float, Callable[[], object]]] = deque()
        self.timer: asyncio.TimerHandle | None = None

    def add(self, delay_s: float, fn: Callable[[], object]) -> None:
        due = self.loop.time() + delay_s
        if self.queue:
            due = max(due, self.queue[-1][0])
        self.queue.append((due, fn))
        if self.timer is None:
            self.timer = self.loop.call_at(due, self._fire)

    def _fire(self) -> None:
        self.timer = None
        now = self.loop.time()
        while self.queue and self.queue[0][0] <= now:
            self.queue.popleft()[1]()
        if self.queue:
            self.timer = self.loop.call_at(self.queue[0][0], self._fire)


class FaultyTransport(asyncio.Transport):
    """The transport the WebSocket protocol sees: the real one, unless a fault says otherwise."""

    def __init__(self, real: asyncio.Transport, link: SimLink, inner: asyncio.Protocol) -> None:
        super().__init__()
        self.real, self.link, self.inner = real, link, inner
        loop = asyncio.get_running_loop()
        self.loop = loop
        self.out_delay, self.in_delay = _Delayed(loop), _Delayed(loop)
        self.held_out: list[bytes] = []  # written during a partition
        self.held_in: list[Callable[[], object]] = []  # received during a partition
        self.app_paused = False
        self.detached = False  # the app saw the end; the socket stays silent until healed
        self.lost_told = False

    # ----------------------------------------------------------------- app -> network
    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self.detached or self.link.down:
            return
        chunk = bytes(data)
        if self.link.partitioned:
            self.held_out.append(chunk)
        elif self.link.delay_s > 0 or self.out_delay.queue:
            self.out_delay.add(self.link.delay_s, lambda: self._write_now(chunk))
        else:
            self.real.write(chunk)

    def _write_now(self, chunk: bytes) -> None:
        if not self.real.is_closing() and not self.detached:
            self.real.write(chunk)

    def writelines(self, list_of_data: Any) -> None:
        for data in list_of_data:
            self.write(data)

    def can_write_eof(self) -> bool:
        return self.real.can_write_eof()

    def write_eof(self) -> None:
        if not (self.detached or self.link.down or self.link.partitioned):
            self.real.write_eof()

    def close(self) -> None:
        if self.link.partitioned or self.link.down:
            self.detach()
        elif self.out_delay.queue:
            self.out_delay.add(0.0, self.real.close)
        else:
            self.real.close()

    def abort(self) -> None:
        if self.link.partitioned:
            self.detach()
        else:
            self.real.abort()

    def is_closing(self) -> bool:
        return self.detached or self.real.is_closing()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.real.get_extra_info(name, default)

    def pause_reading(self) -> None:
        self.app_paused = True
        self.real.pause_reading()

    def resume_reading(self) -> None:
        self.app_paused = False
        if not self.link.partitioned:
            self.real.resume_reading()

    def is_reading(self) -> bool:
        return not self.app_paused

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self.real.set_write_buffer_limits(high, low)

    def get_write_buffer_size(self) -> int:
        return self.real.get_write_buffer_size() + sum(len(b) for b in self.held_out)

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        assert isinstance(protocol, asyncio.Protocol)
        self.inner = protocol

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self.inner

    # ----------------------------------------------------------------- faults
    def set_partition(self, on: bool) -> None:
        if on:
            self.real.pause_reading()
            return
        if self.detached:  # the app gave up during the partition: now the peer learns it
            self.real.abort()
            return
        held_out, self.held_out = self.held_out, []
        for chunk in held_out:
            self.real.write(chunk)
        held_in, self.held_in = self.held_in, []
        for deliver in held_in:
            deliver()
        if not self.app_paused:
            self.real.resume_reading()

    def detach(self) -> None:
        """The app ends its connection during a partition or after a crash: it is told at
        once; the socket itself stays silent (aborted when the partition heals)."""
        if self.detached:
            return
        self.detached = True
        self.held_out.clear()
        self.held_in.clear()
        self.loop.call_soon(self.tell_lost, None)
        if self.link.down:
            self.real.abort()

    def tell_lost(self, exc: Exception | None) -> None:
        if self.lost_told:
            return
        self.lost_told = True
        self.link.transports.discard(self)
        self.inner.connection_lost(exc)
        if self.link.network.on_lost is not None:
            self.link.network.on_lost(self.link)

    # ----------------------------------------------------------------- network -> app
    def deliver(self, fn: Callable[[], object]) -> None:
        if self.detached:
            return
        if self.link.partitioned:
            self.held_in.append(fn)
        elif self.link.delay_s > 0 or self.in_delay.queue:
            self.in_delay.add(self.link.delay_s, fn)
        else:
            fn()


class _ShimProtocol(asyncio.Protocol):
    """Sits under the app's protocol and hands it a :class:`FaultyTransport`."""

    def __init__(self, inner: asyncio.Protocol, link: SimLink) -> None:
        self.inner, self.link = inner, link
        self.faulty: FaultyTransport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.faulty = FaultyTransport(transport, self.link, self.inner)
        self.link.transports.add(self.faulty)
        if self.link.partitioned:
            transport.pause_reading()
        self.inner.connection_made(self.faulty)

    def data_received(self, data: bytes) -> None:
        self.faulty.deliver(lambda: self.faulty.inner.data_received(data))

    def eof_received(self) -> bool | None:
        self.faulty.deliver(self.faulty.inner.eof_received)
        return None  # close the socket: the app answers through its own close

    def connection_lost(self, exc: Exception | None) -> None:
        faulty = self.faulty
        faulty.link.transports.discard(faulty)
        if faulty.detached:
            return
        if faulty.link.down:  # a crash: no delay, no holding
            faulty.tell_lost(exc)
        else:
            faulty.deliver(lambda: faulty.tell_lost(exc))

    def pause_writing(self) -> None:
        self.faulty.inner.pause_writing()

    def resume_writing(self) -> None:
        self.faulty.inner.resume_writing()


class SimLoop(asyncio.SelectorEventLoop):
    """An event loop whose dials from a simulated spoke's task go through its :class:`SimLink`
    (see the module docstring); every other connection is made as usual."""

    async def create_connection(  # type: ignore[override]
        self, protocol_factory: Callable[[], Any], host: Any = None, port: Any = None,
        **kwargs: Any,
    ) -> tuple[asyncio.Transport, Any]:
        link = CURRENT.get()
        if link is None:
            return await super().create_connection(protocol_factory, host, port, **kwargs)
        return await link.network.dial(link, super().create_connection, protocol_factory, host,
                                       port, kwargs)


def run(main: Coroutine[Any, Any, T]) -> T:
    """Run the simulator's ``main`` on a :class:`SimLoop`."""
    with asyncio.Runner(loop_factory=SimLoop) as runner:
        return runner.run(main)


def on_sim_loop() -> bool:
    return isinstance(asyncio.get_running_loop(), SimLoop)


def raise_fd_limit(wanted: int) -> int:
    """Raise this process's open-file limit towards ``wanted`` (at most the hard limit, which
    only root may raise); the soft limit in force afterwards."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft


def source_for(index: int, per_address: int) -> str:
    """The loopback source address of link ``index``: 127.0.0.2, 127.0.0.3, … with
    ``per_address`` links each (127.0.0.1 is left to everything else), then 127.0.1.2, …"""
    block = index // per_address
    return f"127.0.{block // 250}.{2 + block % 250}"
