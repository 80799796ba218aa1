"""Watch checker: every watcher saw exactly the committed events from its start.

Inputs: the committed sequence of events (from a final read of the store's
history, e.g. a watch from revision 1 on a healthy member or a replay of the
Raft log), and for every watcher the revision it started from and the watch
responses it received (each response a list of events), concatenated across
the streams it resumed from its last revision + 1.

What it proves, per watcher (restricted to its key prefix and to revisions
``start_revision .. end_revision``):

* ordered -- revisions never decrease along the delivered events;
* unique -- no event is delivered twice (``duplicate``);
* atomic -- all events of one revision arrive in one response, complete
  (``split_revision``);
* reliable -- no committed event is skipped (``gap`` below the last revision
  received, ``missing_tail`` after it when the watcher must be complete);
* faithful -- nothing is delivered that was not committed, or before the
  start revision (``phantom``, ``before_start``).

Together these mean the watcher's stream equals the committed sequence.
"""

from __future__ import annotations

import itertools
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec

from jepsen_like.checkers.linearizable import Verdict, freeze


class Event(msgspec.Struct, frozen=True, array_like=True):
    """A committed change: ``(revision, key, type, value)``; type is put or delete."""

    revision: int
    key: str
    type: str
    value: Any = None

    def ident(self) -> tuple[int, str, str, Any]:
        """A hashable identity of the event."""
        return (self.revision, self.key, self.type, freeze(self.value))


class WatcherLog(msgspec.Struct, kw_only=True):
    """What one watcher received.

    ``end_revision`` None means the watcher must have caught up to the last
    committed revision (the harness waits for that after healing).
    """

    watcher: str
    start_revision: int
    responses: list[list[Event]]
    prefix: str = ""
    end_revision: int | None = None


@dataclass(frozen=True)
class WatchAnomaly:
    """One violation seen by one watcher."""

    kind: str
    watcher: str
    revision: int
    detail: str = ""


@dataclass
class WatchResult:
    """Outcome of :func:`check_watches`."""

    verdict: Verdict
    anomalies: list[WatchAnomaly] = field(default_factory=list)
    watchers: int = 0
    events_checked: int = 0

    @property
    def valid(self) -> bool:
        return self.verdict is Verdict.VALID

    def counts(self) -> dict[str, int]:
        """Number of anomalies per kind."""
        return dict(Counter(a.kind for a in self.anomalies))

    def describe(self, limit: int = 30) -> str:
        lines = [f"watch: {self.verdict} ({self.watchers} watchers) {self.counts()}"]
        for a in self.anomalies[:limit]:
            lines.append(f"  {a.kind} watcher={a.watcher} rev={a.revision} {a.detail}")
        return "\n".join(lines)


def check_watches(committed: Sequence[Event], watchers: Sequence[WatcherLog]) -> WatchResult:
    """Check every watcher's responses against the committed sequence."""
    anomalies: list[WatchAnomaly] = []
    for a, b in itertools.pairwise(committed):
        if b.revision < a.revision:
            raise ValueError(f"committed sequence not ordered at revision {b.revision}")
    last_committed = committed[-1].revision if committed else 0
    checked = 0
    for w in watchers:
        found = _check_one(committed, w, last_committed)
        anomalies.extend(found)
        checked += sum(len(r) for r in w.responses)
    verdict = Verdict.INVALID if anomalies else Verdict.VALID
    return WatchResult(verdict, anomalies, len(watchers), checked)


def _check_one(
    committed: Sequence[Event], w: WatcherLog, last_committed: int
) -> list[WatchAnomaly]:
    out: list[WatchAnomaly] = []
    end = w.end_revision if w.end_revision is not None else last_committed
    expected = [
        e for e in committed if e.key.startswith(w.prefix) and w.start_revision <= e.revision <= end
    ]
    by_rev: dict[int, set[tuple[int, str, str, Any]]] = defaultdict(set)
    for e in expected:
        by_rev[e.revision].add(e.ident())
    expected_ids = {e.ident() for e in expected}
    all_committed = {e.ident() for e in committed}

    def add(kind: str, rev: int, detail: str = "") -> None:
        out.append(WatchAnomaly(kind, w.watcher, rev, detail))

    seen: set[tuple[int, str, str, Any]] = set()
    rev_response: dict[int, int] = {}
    last_rev = 0
    for ri, response in enumerate(w.responses):
        for e in response:
            ident = e.ident()
            if e.revision < last_rev:
                add("unordered", e.revision, f"after revision {last_rev}")
            last_rev = max(last_rev, e.revision)
            if ident in seen:
                add("duplicate", e.revision, f"{e.type} {e.key!r}")
                continue
            seen.add(ident)
            if e.revision < w.start_revision:
                add("before_start", e.revision, f"start_revision={w.start_revision}")
            elif ident not in expected_ids:
                where = "outside the watched range" if ident in all_committed else "never committed"
                add("phantom", e.revision, f"{e.type} {e.key!r}={e.value!r} {where}")
            first = rev_response.setdefault(e.revision, ri)
            if first != ri:
                add("split_revision", e.revision, f"delivered in responses {first} and {ri}")
        # Atomicity: a response that carries some of a revision carries all of it.
        for rev in {e.revision for e in response}:
            want = by_rev.get(rev, set())
            got = {e.ident() for e in response if e.revision == rev}
            if want - got and rev_response.get(rev) == ri and got & want:
                add("split_revision", rev, f"response {ri} has {len(got & want)}/{len(want)}")
    max_seen = max((e.revision for e in expected if e.ident() in seen), default=0)
    reported_split = {a.revision for a in out if a.kind == "split_revision"}
    for rev in sorted(by_rev):
        missing = by_rev[rev] - seen
        if not missing or (rev in reported_split and missing != by_rev[rev]):
            continue
        kind = "gap" if rev < max_seen else "missing_tail"
        add(kind, rev, f"{len(missing)} event(s) never delivered")
    return out
