"""Lock checker: fenced critical sections never overlap.

The lock workload's clients take the lock, receive a fencing token (the lock
key's create revision), and append ``begin`` and ``end`` entries to a log key
through a txn that succeeds only while the token is at least the highest one
written so far.  The log, read at the end, is the ordered list of
:class:`FencedEntry`.

What :func:`check_fenced_log` proves about that log:

* mutual exclusion -- between a section's ``begin`` and ``end`` no entry of
  another section appears (``overlap``);
* fencing -- each new section's token is strictly greater than every earlier
  section's (``token_not_increasing``), tokens are never reused by another
  client (``token_reused``), and no entry carries a token older than the
  current holder's (``stale_token``);
* well-formedness -- an ``end`` follows its own ``begin`` (``end_without_begin``),
  and a section begins once (``double_begin``).

A section whose holder crashed may stay open (``abandoned``): that is
reported, not a violation, because the lock passed on by lease expiry and
fencing kept the old holder out.

:func:`unfenced_overlaps` only *reports* overlapping intervals during which
two clients each believed they held the lock (by their own clocks): locks
alone cannot guarantee mutual exclusion in an asynchronous network, which is
the reason for the fencing token.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import msgspec

from jepsen_like.checkers.linearizable import Verdict


class FencedEntry(msgspec.Struct, frozen=True, array_like=True):
    """One entry of the fenced log: ``(client, token, kind)``; kind is begin or end."""

    client: str
    token: int
    kind: str


@dataclass(frozen=True)
class LockAnomaly:
    """A violation found in the fenced log, at log position ``index``."""

    kind: str
    index: int
    detail: str = ""


@dataclass
class LockResult:
    """Outcome of :func:`check_fenced_log`."""

    verdict: Verdict
    sections: int = 0
    anomalies: list[LockAnomaly] = field(default_factory=list)
    abandoned: int = 0

    @property
    def valid(self) -> bool:
        return self.verdict is Verdict.VALID

    def counts(self) -> dict[str, int]:
        return dict(Counter(a.kind for a in self.anomalies))

    def describe(self, limit: int = 30) -> str:
        lines = [
            f"lock: {self.verdict} ({self.sections} sections, "
            f"{self.abandoned} abandoned) {self.counts()}"
        ]
        lines += [f"  {a.kind} at #{a.index}: {a.detail}" for a in self.anomalies[:limit]]
        return "\n".join(lines)


def check_fenced_log(log: Sequence[FencedEntry]) -> LockResult:
    """Check the fenced log for overlapping sections and non-increasing tokens."""
    anomalies: list[LockAnomaly] = []
    owners: dict[int, str] = {}
    max_token: int | None = None
    open_section: FencedEntry | None = None
    begun: set[tuple[str, int]] = set()
    sections = abandoned = 0
    for i, e in enumerate(log):
        owner = owners.setdefault(e.token, e.client)
        if owner != e.client:
            anomalies.append(
                LockAnomaly("token_reused", i, f"token {e.token} of {owner} used by {e.client}")
            )
        if e.kind == "begin":
            if (e.client, e.token) in begun:
                anomalies.append(LockAnomaly("double_begin", i, f"{e.client} token {e.token}"))
                continue
            begun.add((e.client, e.token))
            sections += 1
            if max_token is not None and e.token <= max_token:
                anomalies.append(
                    LockAnomaly(
                        "token_not_increasing", i, f"{e.client} token {e.token} <= {max_token}"
                    )
                )
            if open_section is not None:
                if e.token > open_section.token:
                    abandoned += 1  # previous holder lost the lock without an end
                else:
                    anomalies.append(
                        LockAnomaly(
                            "overlap",
                            i,
                            f"{e.client} (token {e.token}) began inside the section of "
                            f"{open_section.client} (token {open_section.token})",
                        )
                    )
            open_section = e
            max_token = e.token if max_token is None else max(max_token, e.token)
        elif e.kind == "end":
            if open_section is None or (open_section.client, open_section.token) != (
                e.client,
                e.token,
            ):
                if (e.client, e.token) in begun:
                    stale = max_token is not None and e.token < max_token
                    kind = "stale_token" if stale else "overlap"
                    anomalies.append(
                        LockAnomaly(kind, i, f"{e.client} ended token {e.token} out of turn")
                    )
                else:
                    anomalies.append(
                        LockAnomaly("end_without_begin", i, f"{e.client} token {e.token}")
                    )
                continue
            open_section = None
        else:
            raise ValueError(f"fenced log entry {i}: unknown kind {e.kind!r}")
    if open_section is not None:
        abandoned += 1
    verdict = Verdict.INVALID if anomalies else Verdict.VALID
    return LockResult(verdict, sections, anomalies, abandoned)


class HeldInterval(msgspec.Struct, frozen=True, array_like=True):
    """A client's own belief that it held the lock from ``start_ns`` to ``end_ns``."""

    client: str
    start_ns: int
    end_ns: int


@dataclass
class UnfencedReport:
    """Overlapping pairs of believed-held intervals (reported, never a failure)."""

    intervals: int
    overlapping_pairs: list[tuple[HeldInterval, HeldInterval]]

    @property
    def overlaps(self) -> int:
        return len(self.overlapping_pairs)


def unfenced_overlaps(intervals: Sequence[HeldInterval]) -> UnfencedReport:
    """Find pairs of intervals of different clients that overlap in time."""
    ordered = sorted(intervals, key=lambda h: (h.start_ns, h.end_ns))
    pairs: list[tuple[HeldInterval, HeldInterval]] = []
    active: list[HeldInterval] = []
    for h in ordered:
        active = [a for a in active if a.end_ns > h.start_ns]
        pairs.extend((a, h) for a in active if a.client != h.client)
        active.append(h)
    return UnfencedReport(len(intervals), pairs)
