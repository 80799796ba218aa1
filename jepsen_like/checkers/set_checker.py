"""Set checker: no acknowledged add is lost, nothing appears from nowhere.

What it proves, given every ``add`` the clients attempted and one final read
of the set taken after the cluster healed:

* every add acknowledged ``ok`` is in the final read (``lost`` is empty);
* every element in the final read was attempted by some add that did not
  definitely fail (``unexpected`` and ``failed_but_present`` are empty);
* no element appears twice in the final read (``duplicated`` is empty).

Adds with unknown outcome (``info``) may or may not be present; they are
counted (``indeterminate_present`` / ``indeterminate_absent``) but never make
the history invalid.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass, field

from jepsen_like.checkers.linearizable import Verdict, freeze
from jepsen_like.history import Operation, complete_operations


@dataclass
class SetResult:
    """Outcome of :func:`check_set`; element sets are of frozen (hashable) values."""

    verdict: Verdict
    acknowledged: int = 0
    lost: set[Hashable] = field(default_factory=set)
    unexpected: set[Hashable] = field(default_factory=set)
    failed_but_present: set[Hashable] = field(default_factory=set)
    duplicated: set[Hashable] = field(default_factory=set)
    indeterminate_present: set[Hashable] = field(default_factory=set)
    indeterminate_absent: set[Hashable] = field(default_factory=set)

    @property
    def valid(self) -> bool:
        return self.verdict is Verdict.VALID

    def counts(self) -> dict[str, int]:
        """Sizes of every category, for ``results.json``."""
        return {
            "acknowledged": self.acknowledged,
            "lost": len(self.lost),
            "unexpected": len(self.unexpected),
            "failed_but_present": len(self.failed_but_present),
            "duplicated": len(self.duplicated),
            "indeterminate_present": len(self.indeterminate_present),
            "indeterminate_absent": len(self.indeterminate_absent),
        }

    def describe(self) -> str:
        lines = [f"set: {self.verdict} {self.counts()}"]
        for name in ("lost", "unexpected", "failed_but_present", "duplicated"):
            items: set[Hashable] = getattr(self, name)
            if items:
                lines.append(f"  {name}: {sorted(items, key=repr)[:20]!r}")
        return "\n".join(lines)


def check_set(
    history: Sequence[Operation], final_read: Iterable[object] | None = None
) -> SetResult:
    """Check the ``add`` operations of ``history`` against ``final_read``.

    When ``final_read`` is None, the result of the last ``ok`` read in the
    history is used; with no such read the verdict is ``unknown``.
    """
    ops = complete_operations(history, include_failed=True)
    if final_read is None:
        reads = [op for op in ops if op.f == "read" and op.outcome == "ok"]
        if not reads:
            return SetResult(Verdict.UNKNOWN)
        final_read = max(reads, key=lambda op: (op.ret, op.index)).result or []
    observed = Counter(freeze(e) for e in final_read)
    present = set(observed)
    ok: set[Hashable] = set()
    info: set[Hashable] = set()
    failed: set[Hashable] = set()
    for op in ops:
        if op.f != "add":
            continue
        element = freeze(op.value)
        {"ok": ok, "info": info, "fail": failed}[op.outcome].add(element)
    # An element also added by an ok or info add is not "failed".
    failed -= ok | info
    result = SetResult(
        Verdict.VALID,
        acknowledged=len(ok),
        lost=ok - present,
        unexpected=present - ok - info - failed,
        failed_but_present=failed & present,
        duplicated={e for e, c in observed.items() if c > 1},
        indeterminate_present=(info - ok) & present,
        indeterminate_absent=(info - ok) - present,
    )
    if result.lost or result.unexpected or result.failed_but_present or result.duplicated:
        result.verdict = Verdict.INVALID
    return result
