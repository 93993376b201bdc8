"""Choosing a spoke for a queued workstream, and saying why none fits (pure).

Routing is directed (a named spoke, or the spoke that holds a resumed workstream's box), by
label, or generic: among connected spokes that have the model and a free slot, the least
loaded (busy / capacity) wins, then the fewest busy, then the name (a stable order). Capacity
counts only *busy* workstreams (starting, thinking, running, waiting for approval): idle ones
keep their box but hold no slot.

When nothing fits, :func:`pick` returns the reason a user is shown ("waiting: …"), naming the
spokes and their load, so a queued workstream never waits silently. Pinned by
``tests/hub/test_routing.py``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class Candidate:
    """What routing needs to know of one connected spoke."""

    name: str
    labels: tuple[str, ...]
    models: tuple[str, ...]  # models the spoke itself declares
    capacity: int  # workstream slots


@dataclass(frozen=True)
class Want:
    """What a queued workstream asks for."""

    spoke: str | None  # directed, or the spoke that holds its box
    label: str | None
    model: str
    hub_models: frozenset[str]  # aliases the hub's relay serves


def pick(want: Want, candidates: Iterable[Candidate], busy: Mapping[str, int],
         refused: frozenset[str] = frozenset()) -> tuple[str | None, str]:
    """The spoke to lease to (and ""), or None and why nothing fits."""
    pool = [c for c in candidates if want.spoke is None or c.name == want.spoke]
    if want.spoke is not None and not pool:
        return None, f"waiting: spoke {want.spoke} is not connected"
    if not pool:
        return None, "waiting: no spoke is connected"
    if want.label is not None:
        pool = [c for c in pool if want.label in c.labels]
        if not pool:
            return None, f"waiting: no connected spoke has the label {want.label!r}"
    if want.model not in want.hub_models:
        pool = [c for c in pool if want.model in c.models]
        if not pool:
            return None, f"waiting: no connected spoke offers the model {want.model!r}"
    usable = [c for c in pool if c.name not in refused]
    if not usable:
        names = ", ".join(sorted(c.name for c in pool))
        return None, f"waiting: refused recently by {names}; trying again shortly"
    best: tuple[float, int, str] | None = None
    for c in usable:
        active = busy.get(c.name, 0)
        if active >= c.capacity:
            continue
        key = (active / c.capacity, active, c.name)
        if best is None or key < best:
            best = key
    if best is not None:
        return best[2], ""
    loads = ", ".join(f"{c.name}: {busy.get(c.name, 0)}/{c.capacity} busy"
                      for c in sorted(usable, key=lambda c: c.name))
    return None, f"waiting: no connected spoke has a free slot ({loads})"
