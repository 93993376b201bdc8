"""What ``hub doctor`` and ``spoke doctor`` report: one result per check, and the judgements
both doctors share (file modes, certificate dates, clock skew).

The checks themselves live beside what they check (:mod:`hub.doctor`, :mod:`spoke.doctor`)
and the printing in :mod:`cli.doctor_command`; this module is the common vocabulary of the
two, so it sits in ``protocol/`` and stays pure: no files, sockets or clocks are read here,
every function gets the facts it judges as arguments. Pinned by tests/test_doctor.py.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, TypeVar

OK, WARN, FAIL, SKIP = "ok", "warn", "fail", "skip"
STATUSES = (OK, WARN, FAIL, SKIP)
# How a status is printed: FAIL in capitals so it stands out in a column of "ok".
LABELS = {OK: "ok", WARN: "warn", FAIL: "FAIL", SKIP: "skip"}

SKEW_WARN_S = 30.0  # more than this between two clocks is worth a warning
EXPIRY_WARN_DAYS = 30  # a certificate that ends sooner is worth a warning
TROUBLESHOOTING = "docs/troubleshooting.md"

C = TypeVar("C")  # a doctor's context (what its checks look at)


@dataclass(frozen=True)
class Check:
    """One check's result: ``status`` is one of :data:`STATUSES`; ``detail`` says what was
    found; ``fix`` (for ``warn`` and ``fail``) what to do about it, a command where one
    exists. ``skip``: the check could not run because an earlier one failed."""

    name: str
    status: str
    detail: str
    fix: str = ""

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"bad status {self.status!r}")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def ok(name: str, detail: str) -> Check:
    return Check(name, OK, detail)


def warn(name: str, detail: str, fix: str = "") -> Check:
    return Check(name, WARN, detail, fix)


def fail(name: str, detail: str, fix: str = "") -> Check:
    return Check(name, FAIL, detail, fix)


def skip(name: str, detail: str) -> Check:
    return Check(name, SKIP, detail)


def run_checks(checks: Sequence[Callable[[C], Check]], ctx: C, *, runs_as: str,
               alone: Callable[[Check], bool]) -> list[Check]:
    """Every check in order, each on its own: one that raises becomes its own FAIL line and
    the rest still run. ``alone(first)``: the first result says there is nothing else to
    look at (no data dir). Shared by hub/doctor.py and spoke/doctor.py."""
    results: list[Check] = []
    for index, check in enumerate(checks):
        name = check.__name__.removeprefix("check_").replace("_", "-")
        try:
            result = check(ctx)
        except PermissionError as err:
            result = fail(name, f"not allowed: {err}",
                          f"run the doctor as the user that runs {runs_as} (or root)")
        except Exception as err:  # a check that breaks must not hide the others
            result = fail(name, f"the check itself failed: {type(err).__name__}: {err}",
                          f"report this; see {TROUBLESHOOTING}")
        results.append(result)
        if index == 0 and alone(result):
            break
    return results


def exit_code(checks: Iterable[Check]) -> int:
    """0 when nothing failed (warnings included), 1 otherwise."""
    return 1 if any(c.status == FAIL for c in checks) else 0


def render(checks: Sequence[Check]) -> list[str]:
    """One line per check: status, name, what was found, and the fix where there is one."""
    width = max((len(c.name) for c in checks), default=0)
    lines = []
    for c in checks:
        line = f"{LABELS[c.status]:<4}  {c.name:<{width}}  {c.detail}"
        if c.fix and c.status in (WARN, FAIL):
            line += f"  -- fix: {c.fix}"
        lines.append(line)
    return lines


def summary(checks: Sequence[Check]) -> str:
    counts = {s: sum(1 for c in checks if c.status == s) for s in STATUSES}
    verdict = "problems found" if counts[FAIL] else "no problems found"
    return (f"{verdict}: {counts[FAIL]} failed, {counts[WARN]} warning(s), {counts[OK]} ok"
            + (f", {counts[SKIP]} skipped" if counts[SKIP] else ""))


def document(kind: str, data_dir: str, checks: Sequence[Check]) -> dict[str, Any]:
    """The ``--json`` document: ``ok`` is false when any check failed."""
    return {"kind": kind, "data_dir": data_dir, "ok": exit_code(checks) == 0,
            "checks": [c.as_dict() for c in checks]}


# ------------------------------------------------------------------ shared judgements
def loose_mode(mode: int, allowed: int) -> int:
    """The permission bits of ``mode`` beyond ``allowed`` (0: none; e.g. 0o044 for a 0644
    file that should be 0600)."""
    return mode & 0o777 & ~allowed


def describe_loose(mode: int, allowed: int) -> str:
    """Who else may use a file of ``mode``: "group and others can read it" and the like."""
    extra = loose_mode(mode, allowed)
    who = [w for w, bits in (("group", 0o070), ("others", 0o007)) if extra & bits]
    what = [w for w, bits in (("read", 0o044), ("write", 0o022), ("enter/run", 0o011))
            if extra & bits]
    return f"mode {mode & 0o777:04o}: {' and '.join(who)} may {'/'.join(what)} it"


def cert_dates(not_before: dt.datetime, not_after: dt.datetime, now: dt.datetime,
               name: str = "certificate") -> tuple[str, str]:
    """``(status, detail)`` for a certificate valid from ``not_before`` to ``not_after`` at
    ``now``: fail when not yet or no longer valid, warn within :data:`EXPIRY_WARN_DAYS`."""
    if now < not_before:
        return FAIL, (f"{name} is not valid before {not_before:%Y-%m-%d %H:%M} UTC "
                      "(is this machine's clock behind?)")
    if now >= not_after:
        return FAIL, f"{name} expired on {not_after:%Y-%m-%d}"
    days = (not_after - now).days
    if days < EXPIRY_WARN_DAYS:
        return WARN, f"{name} expires in {days} day(s), on {not_after:%Y-%m-%d}"
    return OK, f"{name} valid until {not_after:%Y-%m-%d} ({days} days)"


def clock_skew(skew_s: float, uncertainty_s: float, other: str = "the hub") -> tuple[str, str]:
    """``(status, detail)`` for a clock measured ``skew_s`` seconds behind (negative) or
    ahead of (positive) ``other``'s, give or take ``uncertainty_s`` (half the round trip plus
    the one-second resolution of an HTTP ``Date``): warn only when it is surely more than
    :data:`SKEW_WARN_S`."""
    direction = "ahead of" if skew_s > 0 else "behind"
    if abs(skew_s) - uncertainty_s > SKEW_WARN_S:
        return WARN, (f"this clock is about {abs(skew_s):.0f}s {direction} {other}'s "
                      f"(more than {SKEW_WARN_S:.0f}s: expiry times will be off)")
    return OK, f"within {max(abs(skew_s), uncertainty_s):.0f}s of {other}'s clock"
