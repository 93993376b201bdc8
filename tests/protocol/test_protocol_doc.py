"""docs/protocol.md documents every verb of the one verb table (protocol/verbs.py)."""

from __future__ import annotations

from pathlib import Path

from protocol.verbs import VERBS

DOC = (Path(__file__).resolve().parents[2] / "docs" / "protocol.md").read_text()


def test_every_verb_is_in_the_protocol_reference() -> None:
    table = DOC[DOC.index("## The verb table"):DOC.index("## Error codes")]
    missing = [name for name in VERBS if f"`{name}`" not in table]
    assert not missing, f"docs/protocol.md's verb table lacks {missing}"
