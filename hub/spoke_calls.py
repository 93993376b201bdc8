"""What the hub's services ask of a spoke, whichever hub holds its link.

A spoke's link is on one hub of the cluster: there it is a :class:`hub.spoke_link.SpokeLink`;
elsewhere a :class:`hub.cluster.peer_link.PeerLink` forwards the same calls through that
hub. Both offer this surface, which is all the box service, channels, workstream leasing and
the janitor use, so they need not know where the spoke is. Structural (Protocols): neither
link class inherits from these. Pinned (mypy, and at run time) by
tests/hub/test_peer_forwarding.py::test_both_links_offer_the_same_surface.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Protocol, TypeVar

from protocol.verbs import P, R, Verb

R_co = TypeVar("R_co", covariant=True)


class ChunkStream(Protocol[R_co]):
    """A running down-streamed call: its chunks, then its result (or typed error);
    :meth:`cancel` ends it on the spoke. As :class:`protocol.hub_driver.StreamCall`."""

    def chunks(self) -> AsyncIterator[tuple[str, bytes]]: ...

    async def result(self) -> R_co: ...

    async def cancel(self) -> None: ...


class SpokeFacts(Protocol):
    """What routing needs to know of a spoke (the cluster store's :class:`hub.store.Holder`
    says it of a spoke another hub holds)."""

    @property
    def labels(self) -> Sequence[str]: ...

    @property
    def models(self) -> Sequence[str]: ...

    @property
    def max_workstreams(self) -> int: ...

    @property
    def leaving(self) -> bool: ...


class SpokeCalls(SpokeFacts, Protocol):
    """A spoke as the hub's services call it: what it declared, and the three ways to call."""

    @property
    def name(self) -> str: ...

    @property
    def closed(self) -> bool: ...

    async def call(self, verb: Verb[P, R], params: P, timeout_s: float | None = None) -> R: ...

    async def call_stream(self, verb: Verb[P, R], params: P,
                          timeout_s: float | None = None) -> ChunkStream[R]: ...

    async def call_upload(self, verb: Verb[P, R], params: P, source: AsyncIterator[bytes],
                          timeout_s: float | None = None) -> R: ...
