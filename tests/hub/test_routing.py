"""hub.workstreams.routing.pick: which spoke a queued workstream goes to, or why it waits."""

from __future__ import annotations

from hub.workstreams.routing import Candidate, Want, pick

A = Candidate("a", ("gpu",), (), 2)
B = Candidate("b", (), ("local-llm",), 4)


def want(**kw: object) -> Want:
    base: dict[str, object] = {"spoke": None, "label": None, "model": "main",
                               "hub_models": frozenset({"main"})}
    base.update(kw)
    return Want(**base)  # type: ignore[arg-type]


def test_least_loaded_by_share_of_capacity_then_busy_count_then_name() -> None:
    assert pick(want(), [A, B], {}) == ("a", "")
    assert pick(want(), [A, B], {"a": 1}) == ("b", "")  # a is half full, b empty
    assert pick(want(), [A, B], {"a": 1, "b": 2}) == ("a", "")  # both half full: fewer busy


def test_directed_label_and_spoke_declared_models() -> None:
    assert pick(want(spoke="b"), [A, B], {}) == ("b", "")
    assert pick(want(label="gpu"), [A, B], {}) == ("a", "")
    assert pick(want(model="local-llm"), [A, B], {}) == ("b", "")


def test_every_reason_to_wait_is_spelled_out() -> None:
    assert pick(want(), [], {}) == (None, "waiting: no spoke is connected")
    assert pick(want(spoke="c"), [A, B], {}) == (None, "waiting: spoke c is not connected")
    assert pick(want(label="tpu"), [A, B], {}) == (None, "waiting: no connected spoke has the label 'tpu'")
    assert pick(want(model="x"), [A], {}) == (None, "waiting: no connected spoke offers the model 'x'")
    assert pick(want(), [A, B], {"a": 2, "b": 4}) == (
        None, "waiting: no connected spoke has a free slot (a: 2/2 busy, b: 4/4 busy)")
    name, why = pick(want(), [A], {}, refused=frozenset({"a"}))
    assert name is None and "refused recently by a" in why
