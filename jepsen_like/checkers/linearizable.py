"""Linearizability checker for register histories (Wing-Gong / Lowe search).

What it proves: for each key, there is a total order of the key's operations
that (1) respects real time -- if ``a`` returned before ``b`` was invoked,
``a`` comes first -- and (2) is a legal sequential execution of a register
(:class:`RegisterModel`).  Operations with unknown outcome (``info``) have a
return time of +inf, so they may take effect at any point after their
invocation, or never (linearized after everything else, where their effect
is unobservable).  Per-key checking is sound and complete because
linearizability is local (P-compositionality: a register per key).

The search is the depth-first search with backtracking of Wing & Gong, with
Lowe's memoization: a configuration is the set of already linearized
operations (a bitset held in a Python ``int``) plus the model state; a
configuration reached before is never explored again.  Operations are kept in
a doubly linked list of call and return entries ordered by time; at a call
entry the operation is tentatively linearized and both its entries are lifted
out of the list; reaching a return entry means the operation returning there
was not linearized in time, so the search backtracks.

A step budget bounds the work per key; when exhausted the verdict is
``unknown``.  For an ``invalid`` key the checker reports the *smallest failing
window*: the shortest prefix of the key's history (cut at a return time) that
is already not linearizable.  Operations still running at the cut count as
indefinite there, so this prefix is non-linearizable whenever the full
history is, and every shorter one is linearizable.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any, Protocol

from jepsen_like.history import CompleteOp, Operation, complete_operations


class Verdict(StrEnum):
    """Outcome of a check."""

    VALID = "valid"
    INVALID = "invalid"
    UNKNOWN = "unknown"


class Model(Protocol):
    """A sequential specification: a pure step function over hashable states."""

    def init(self) -> Hashable:
        """The initial state."""
        ...

    def step(self, state: Hashable, op: CompleteOp) -> tuple[bool, Hashable]:
        """Whether ``op`` (with its observed output) is legal in ``state``, and the next state."""
        ...

    def read_only(self, op: CompleteOp) -> bool:
        """True if ``op`` leaves every state in which it is legal unchanged.

        The search linearizes such operations greedily (never backtracking
        over the choice), which keeps histories with many concurrent reads
        polynomial.  Returning False is always safe.
        """
        ...


def freeze(value: Any) -> Hashable:
    """Turn JSON-decoded values (lists, dicts) into hashable equivalents."""
    if isinstance(value, list | tuple):
        return tuple(freeze(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((k, freeze(v)) for k, v in value.items()))
    return value  # type: ignore[no-any-return]


class RegisterModel:
    """A register per key; the state is its value (None: absent).

    * ``read``: legal iff the value read equals the state.
    * ``write v``: always legal; the state becomes ``v``.
    * ``delete``: always legal; the state becomes None.
    * ``cas [expected, new]`` that returned ``succeeded=True``: legal iff the
      state equals ``expected``; the state becomes ``new``.  With
      ``succeeded=False``: legal iff the state differs from ``expected``; no
      change.  With unknown outcome: it swaps iff the state equals
      ``expected`` (a cas that did not take effect is linearized last).
    * an indefinite ``read`` constrains nothing (the checker drops it).
    """

    def init(self) -> Hashable:
        return None

    def step(self, state: Hashable, op: CompleteOp) -> tuple[bool, Hashable]:
        f = op.f
        if f == "read":
            return (op.indefinite or freeze(op.result) == state), state
        if f == "write":
            return True, freeze(op.value)
        if f == "delete":
            return True, None
        if f == "cas":
            expected, new = op.value
            matches = freeze(expected) == state
            if op.succeeded is None:
                return True, freeze(new) if matches else state
            if op.succeeded:
                return matches, freeze(new) if matches else state
            return not matches, state
        raise ValueError(f"register model: unknown operation {f!r}")

    def read_only(self, op: CompleteOp) -> bool:
        return op.outcome == "ok" and (op.f == "read" or (op.f == "cas" and op.succeeded is False))


@dataclass
class KeyResult:
    """Verdict for one key (one partition)."""

    key: str | None
    verdict: Verdict
    operations: int
    steps: int
    window: list[CompleteOp] = field(default_factory=list)
    """For an invalid key: the operations of the smallest failing prefix."""
    cut: float | None = None
    """For an invalid key: the return time that ends the failing prefix."""
    culprit: CompleteOp | None = None
    """For an invalid key: the operation whose return ends the failing prefix."""

    def describe(self, max_ops: int = 30) -> str:
        """Readable rendering of the verdict and, if invalid, the failing window."""
        head = f"key {self.key!r}: {self.verdict} ({self.operations} ops, {self.steps} steps)"
        if self.verdict is not Verdict.INVALID:
            return head
        lines = [
            head,
            f"  smallest non-linearizable prefix: {len(self.window)} ops, "
            f"ending when this returned: {self.culprit.describe() if self.culprit else '?'}",
        ]
        shown = self.window[-max_ops:]
        if len(shown) < len(self.window):
            lines.append(f"    ... {len(self.window) - len(shown)} earlier ops")
        for op in shown:
            mark = "  <--" if op is self.culprit else ""
            lines.append(f"    {op.describe()}{mark}")
        return "\n".join(lines)


@dataclass
class LinearizabilityResult:
    """Verdict over all keys: invalid if any key is, else unknown if any is, else valid."""

    verdict: Verdict
    keys: dict[str | None, KeyResult]

    @property
    def valid(self) -> bool:
        return self.verdict is Verdict.VALID

    def describe(self) -> str:
        lines = [f"linearizable: {self.verdict}"]
        for kr in self.keys.values():
            if kr.verdict is not Verdict.VALID:
                lines.append(kr.describe())
        return "\n".join(lines)


class _BudgetExceeded(Exception):
    pass


def _search(ops: Sequence[CompleteOp], model: Model, budget: int | None) -> tuple[bool, int]:
    """Decide whether ``ops`` (one partition) is linearizable.

    Returns (linearizable, steps).  Raises _BudgetExceeded when out of steps.
    """
    n = len(ops)
    if n == 0:
        return True, 0
    # Entries 0..n-1 are calls, n..2n-1 returns, 2n is the head sentinel.
    # At equal times calls sort before returns: touching operations are
    # treated as concurrent (the lenient choice).
    order = sorted(
        range(2 * n),
        key=lambda e: (ops[e].call, 0, e) if e < n else (ops[e - n].ret, 1, e),
    )
    head = 2 * n
    nxt = [-1] * (2 * n + 1)
    prv = [-1] * (2 * n + 1)
    last = head
    for e in order:
        nxt[last] = e
        prv[e] = last
        last = e
    nxt[last] = -1

    def lift(c: int) -> None:
        r = c + n
        nxt[prv[c]] = nxt[c]
        if nxt[c] != -1:
            prv[nxt[c]] = prv[c]
        nxt[prv[r]] = nxt[r]
        if nxt[r] != -1:
            prv[nxt[r]] = prv[r]

    def unlift(c: int) -> None:
        r = c + n
        nxt[prv[r]] = r
        if nxt[r] != -1:
            prv[nxt[r]] = r
        nxt[prv[c]] = c
        if nxt[c] != -1:
            prv[nxt[c]] = c

    read_only = [model.read_only(op) for op in ops]
    seen: set[tuple[int, Hashable]] = set()
    # (call entry, state before it, whether the op is read-only)
    stack: list[tuple[int, Hashable, bool]] = []
    state = model.init()
    linearized = 0
    steps = 0
    entry = nxt[head]
    while nxt[head] != -1:
        steps += 1
        if budget is not None and steps > budget:
            raise _BudgetExceeded
        backtrack = False
        if entry < n:  # call entry
            ok, new_state = model.step(state, ops[entry])
            if ok:
                pure = read_only[entry]
                new_lin = linearized | (1 << entry)
                cfg = (new_lin, new_state)
                if cfg not in seen:
                    seen.add(cfg)
                    stack.append((entry, state, pure))
                    state = new_state
                    linearized = new_lin
                    lift(entry)
                    entry = nxt[head]
                    continue
                # A legal read-only op can always go first (see below),
                # so if that configuration already failed, this one fails too.
                backtrack = pure
            if not backtrack:
                entry = nxt[entry]
                continue
        # A return entry: its operation was not linearized in time.  Undo the
        # latest choice.  Choices of read-only ops are never revisited: if any
        # linearization exists from a configuration where such an op is
        # callable and legal, moving it to the front keeps it valid (every
        # pending op returns after its call, and since the op changes no state
        # the other ops see the same states), so skipping it cannot help.
        while True:
            if not stack:
                return False, steps
            undone, state, pure = stack.pop()
            linearized &= ~(1 << undone)
            unlift(undone)
            if not pure:
                break
        entry = nxt[undone]
    return True, steps


def _prepare(ops: Iterable[CompleteOp]) -> list[CompleteOp]:
    # Indefinite reads constrain nothing; failed operations never happened.
    return [op for op in ops if op.outcome != "fail" and not (op.f == "read" and op.indefinite)]


def _prefix(ops: Sequence[CompleteOp], cut: float) -> list[CompleteOp]:
    """The history as it stood at time ``cut``: later ops removed, running ones indefinite."""
    out: list[CompleteOp] = []
    for op in ops:
        if op.call > cut:
            continue
        if op.ret > cut and not op.indefinite:
            op = replace(op, ret=math.inf, outcome="info", result=None, succeeded=None)
        out.append(op)
    return _prepare(out)


def _culprit(
    window: Sequence[CompleteOp], cut: float, model: Model, budget: int | None
) -> CompleteOp | None:
    """The op returning at ``cut`` whose return makes the window fail.

    With several ops returning at the same time, prefer one that, left
    running, makes the window linearizable.
    """
    ending = [op for op in window if op.ret == cut]
    if len(ending) > 1:
        for op in ending:
            relaxed = [
                replace(o, ret=math.inf, outcome="info", result=None, succeeded=None)
                if o is op
                else o
                for o in window
            ]
            try:
                if _search(_prepare(relaxed), model, budget)[0]:
                    return op
            except _BudgetExceeded:
                break
    return ending[0] if ending else None


def check_key(
    ops: Sequence[CompleteOp],
    model: Model | None = None,
    *,
    key: str | None = None,
    budget: int | None = 1_000_000,
    find_window: bool = True,
) -> KeyResult:
    """Check the operations of one key (one partition)."""
    model = model or RegisterModel()
    prepared = _prepare(ops)
    try:
        ok, steps = _search(prepared, model, budget)
    except _BudgetExceeded:
        return KeyResult(key, Verdict.UNKNOWN, len(prepared), budget or 0)
    if ok:
        return KeyResult(key, Verdict.VALID, len(prepared), steps)
    result = KeyResult(key, Verdict.INVALID, len(prepared), steps, window=list(prepared))
    if not find_window:
        return result
    # Binary search for the earliest return time whose prefix is not linearizable
    # (monotone: linearizability is closed under prefixes of the event sequence).
    cuts = sorted({op.ret for op in prepared if not math.isinf(op.ret)})
    lo, hi = 0, len(cuts) - 1  # invariant: prefix at cuts[hi] is invalid (full history is)
    while lo < hi:
        mid = (lo + hi) // 2
        try:
            mid_ok, _ = _search(_prefix(prepared, cuts[mid]), model, budget)
        except _BudgetExceeded:
            break  # keep the best window found so far
        if mid_ok:
            lo = mid + 1
        else:
            hi = mid
    if cuts:
        cut = cuts[hi]
        window = _prefix(prepared, cut)
        result.window = window
        result.cut = cut
        result.culprit = _culprit(window, cut, model, budget)
    return result


def check_linearizable(
    history: Sequence[Operation] | Sequence[CompleteOp],
    model: Model | None = None,
    *,
    budget: int | None = 1_000_000,
    find_window: bool = True,
) -> LinearizabilityResult:
    """Check a history (raw events or complete operations), partitioned per key.

    ``budget`` is the maximum number of search steps per key (None: unbounded).
    """
    ops: list[CompleteOp]
    if history and isinstance(history[0], Operation):
        ops = complete_operations(history)  # type: ignore[arg-type]
    else:
        ops = list(history)  # type: ignore[arg-type]
    parts: dict[str | None, list[CompleteOp]] = {}
    for op in ops:
        parts.setdefault(op.key, []).append(op)
    keys = {
        k: check_key(p, model, key=k, budget=budget, find_window=find_window)
        for k, p in sorted(parts.items(), key=lambda kv: str(kv[0]))
    }
    verdicts = {kr.verdict for kr in keys.values()}
    if Verdict.INVALID in verdicts:
        verdict = Verdict.INVALID
    elif Verdict.UNKNOWN in verdicts:
        verdict = Verdict.UNKNOWN
    else:
        verdict = Verdict.VALID
    return LinearizabilityResult(verdict, keys)
