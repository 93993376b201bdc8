"""Identities of simulated spokes, kept in one data dir so a second run resumes them.

A real spoke writes its own private key file at enrollment. Ten thousand key files written
while ten thousand spokes enroll would measure the disk, not the hub, so the simulator keeps
one random seed (``sim.json``, mode 0600) and derives each spoke's Ed25519 key from it and the
spoke's name (HMAC-SHA256). The hub sees ordinary, distinct keys; the private keys never
leave this machine; and the names that enrolled are written back (in batches) so the next run
resumes them with signed challenges instead of spending token uses. Pinned by
tests/sim/test_sim_parts.py::test_identities_come_from_one_seed_and_enrolled_names_are_saved
and, against a hub, tests/sim/test_spoke_sim.py::test_steady_and_burst_answer_every_call.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from protocol.tokens import JoinToken
from spoke.identity import Identity, SpokeState

STATE_FILE = "sim.json"


class SimStateError(ValueError):
    """The data dir holds simulated spokes of another hub or prefix; the message says so."""


@dataclass
class FleetState:
    """What ``sim.json`` holds: which hub, the names' prefix, the key seed, who enrolled."""

    hub_url: str
    pin: str
    prefix: str
    seed: str  # hex
    enrolled: set[str] = field(default_factory=set)
    dirty: bool = False

    @classmethod
    def load_or_create(cls, data_dir: Path, token: JoinToken | None) -> FleetState:
        """The saved state, checked against ``token`` when one is given; a new one from the
        token when the data dir holds none. :class:`SimStateError` when they disagree."""
        if token is not None and not token.prefix:
            raise SimStateError("the simulator needs a multi-use token (hub token create "
                                "--name PREFIX --uses N); this one enrolls one spoke only")
        path = data_dir / STATE_FILE
        if path.exists():
            doc = json.loads(path.read_text())
            state = cls(hub_url=doc["hub_url"], pin=doc["pin"], prefix=doc["prefix"],
                        seed=doc["seed"], enrolled=set(doc.get("enrolled", [])))
            if token is not None and (token.url, token.name) != (state.hub_url, state.prefix):
                raise SimStateError(
                    f"{data_dir} holds simulated spokes {state.prefix}-… of {state.hub_url}; "
                    "use another --data-dir for this token")
            return state
        if token is None:
            raise SimStateError(f"no simulated spokes in {data_dir} yet: give --token (a "
                                "multi-use token: hub token create --name PREFIX --uses N)")
        return cls(hub_url=token.url, pin=token.pin, prefix=token.name,
                   seed=secrets.token_hex(32), dirty=True)

    def save(self, data_dir: Path) -> None:
        """Write ``sim.json`` atomically, readable by its owner only (blocking: run it in a
        thread from the event loop)."""
        data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        doc = {"hub_url": self.hub_url, "pin": self.pin, "prefix": self.prefix,
               "seed": self.seed, "enrolled": sorted(self.enrolled)}
        tmp = data_dir / (STATE_FILE + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(doc, fh)
        os.replace(tmp, data_dir / STATE_FILE)
        self.dirty = False

    def name(self, index: int) -> str:
        """Spoke ``index`` (from 1): PREFIX-00001, PREFIX-00002, …"""
        return f"{self.prefix}-{index:05d}"

    def spoke_state(self, name: str) -> SpokeState:
        return SpokeState(hub_url=self.hub_url, pin=self.pin, name=name,
                          enrolled=name in self.enrolled)


class SimIdentity(Identity):
    """One simulated spoke's identity: the key derived from the fleet's seed and its name,
    and enrollment recorded in the fleet state (saved later, in a batch)."""

    def __init__(self, data_dir: Path, fleet: FleetState, name: str) -> None:
        super().__init__(data_dir)
        self.fleet, self.name = fleet, name
        seed = hmac.new(bytes.fromhex(fleet.seed), name.encode(), hashlib.sha256).digest()
        self._key = Ed25519PrivateKey.from_private_bytes(seed)

    def key(self, create: bool = False) -> Ed25519PrivateKey:
        return self._key

    def load_state(self) -> SpokeState | None:
        return self.fleet.spoke_state(self.name)

    def save_state(self, state: SpokeState) -> None:
        if state.enrolled and state.name not in self.fleet.enrolled:
            self.fleet.enrolled.add(state.name)
            self.fleet.dirty = True
