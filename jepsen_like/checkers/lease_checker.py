"""Lease checker: no key outlives its lease by more than the bound, and no key
of a kept-alive lease vanishes while its lease is guaranteed alive.

The lease workload records these operations (``f``; ``key`` is always the
name of the one key attached to the lease):

=========== ============================== ===================================
f           invoke ``value``                ok ``result``
=========== ============================== ===================================
grant       ``{"ttl": asked, "mode": m}``   ``{"lease": id, "ttl": granted}``
put         lease id                        --
keepalive   lease id                        TTL answered (0: the lease is gone)
stop        lease id                        why keep-alives stop here (``end``:
                                            the run ended)
read        -- or ``"serializable"``        sorted names of the keys present;
            (``key`` is the prefix)         ``revision``: the header's
status      round number (``node``: member) ``{"term": t, "leader": id}``
=========== ============================== ===================================

``mode`` is ``kept`` (kept alive for the whole run) or ``stopped`` (its
keep-alives stop at a recorded ``stop``); ``put`` records its revision.
Reads are linearizable unless their value says ``serializable``.  A
serializable read on a lagging member may legitimately show a key long after
its lease was revoked, so rule 1 uses linearizable reads only; rule 2 uses
both, a serializable one only once its member has applied the key's put (the
read's revision is at least the put's).  ``status`` rounds poll every member
at once; they let the checker place leader changes in time.

**Why the bound is not just "TTL".**  Only the leader tracks expiry
(:mod:`kvstore.lease`): a keep-alive it receives at time ``k`` sets the
deadline to ``k + TTL``; a new leader, once it has applied its predecessors'
log (it waits at most one election timeout ``ET`` for that), gives every lease
its full TTL plus ``ET``.  So a leader change resets the clock: the lease
lives at most ``TTL + 2 ET`` after the election, whatever its last keep-alive
was (the README's "outlives its TTL by up to one election timeout per leader
change" counts from the promotion, not from the last keep-alive).  Once
expired, the leader notices on its next expiry check (every
``min(0.5, ET / 2)`` s), confirms its leadership (one ReadIndex round, given
``ET`` before it tries again) and commits a revoke.

**Rule 1, no key outlives its lease** (every lease, kept or stopped).  For a
linearizable read that completed ``ok`` and saw the key, with invocation time
``r0`` and completion ``r1``::

    violation  iff  r0 > max(R + TTL, L + TTL + 2 ET) + revoke_delay

* ``R``: the last time the lease may have been renewed: the completion of the
  grant and of every keep-alive answered with TTL > 0; a keep-alive that
  failed or timed out may still have reached the leader, up to ``2 ET`` late
  (a leader paused for longer is deposed), so it counts as its completion time
  plus ``2 ET``.
* ``L``: the latest time the leader that served the read can have been elected,
  from the ``status`` rounds.  A round is *settled* when a majority answered
  and one of the answers with the highest term ``M`` names a leader.  Since
  electing a leader in a term above ``M`` needs a majority in that term, and
  any two majorities share a member, no such election completed before the
  round began; and the leader of ``M`` was elected before the first answer
  that named it.  So for the first settled round that begins after the read,
  the read's leader was elected in a term ``<= M``, no later than the first
  answer naming a leader in ``M`` (terms are elected in increasing order):
  ``L = min(r1, first_named(M))``, maximised over the settled rounds that begin
  within ``[r0, r1]`` and the first one after.  With no settled round after the
  read, ``L = r1`` and the read cannot be judged: it is counted ``unjudged``.
* ``revoke_delay = 2 interval + ET + rearm + commit_slack``: the expiry
  check interval; one failed ReadIndex round (given ``ET``) or failed revoke,
  after which the lessor re-arms the lease for another try ``rearm`` = 1 s
  later (:meth:`kvstore.lease.Lessor.expired`), and one more interval; and the
  revoke's own commit (``commit_slack``, 0.5 s by default).  More than one
  failure in a row means the leader lost its quorum, and check-quorum then
  deposes it: the next leader's election moves ``L``.

**Rule 2, no key of a kept-alive lease vanishes.**  A lease is guaranteed
alive for TTL after any keep-alive it answered with TTL > 0 (the leader
renewed it on receipt, after the keep-alive was invoked; a new leader only
extends).  So a read that completed ``ok`` without the key, invoked after the
key's put completed (linearizable) or at a revision at or after the put's
(serializable), is a violation iff it completed before
``max(invocation of the grant or of an ok keep-alive with TTL > 0) + TTL``.
A kept-alive lease that lost its key later than that had a keep-alive gap
longer than its TTL (a fault kept keep-alives from the leader): that is
counted as ``expired_after_gap``, not an anomaly, and the workload re-creates
the lease; or its keep-alives stopped with the run (a ``stop`` whose result is
``end``: ``kept_expired_after_stop``).

``ET`` must be an upper bound of the cluster's election timeout; the workload
derives one from the server's minimum TTL (``ceil(1.5 ET)``) unless told.
"""

from __future__ import annotations

import bisect
import math
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from jepsen_like.checkers.linearizable import Verdict
from jepsen_like.history import HistoryError, Operation

NS = 1_000_000_000


@dataclass(frozen=True)
class LeaseBounds:
    """The timing assumptions of the rules, in seconds."""

    election_timeout: float
    """An upper bound of the members' election timeout."""
    commit_slack: float = 0.5
    """Time a revoke may take from proposal to being applied on a healthy leader."""
    rearm: float = 1.0
    """How long the lessor waits before retrying a revoke that did not land."""

    @property
    def expiry_interval(self) -> float:
        """How often the leader looks for expired leases (``kvstore.server``)."""
        return min(0.5, self.election_timeout / 2)

    @property
    def revoke_delay(self) -> float:
        return 2 * self.expiry_interval + self.election_timeout + self.rearm + self.commit_slack

    @property
    def promotion_extension(self) -> float:
        """A new leader waits up to ET to apply, then gives TTL + ET."""
        return 2 * self.election_timeout

    @property
    def late_keepalive(self) -> float:
        """How late an unanswered keep-alive may still reach the leader."""
        return 2 * self.election_timeout


@dataclass(frozen=True)
class LeaseAnomaly:
    kind: str
    key: str
    time_ns: int
    detail: str = ""


@dataclass
class LeaseResult:
    """Outcome of :func:`check_leases`."""

    verdict: Verdict
    anomalies: list[LeaseAnomaly] = field(default_factory=list)
    stats: dict[str, int] = field(default_factory=dict)

    @property
    def valid(self) -> bool:
        return self.verdict is Verdict.VALID

    def counts(self) -> dict[str, int]:
        return {**self.stats, **Counter(a.kind for a in self.anomalies)}

    def describe(self, limit: int = 30) -> str:
        lines = [f"lease: {self.verdict} {self.counts()}"]
        for a in self.anomalies[:limit]:
            lines.append(f"  {a.kind} {a.key!r} at {a.time_ns / NS:.3f}s: {a.detail}")
        return "\n".join(lines)


@dataclass(frozen=True)
class _Op:
    """An invocation with its completion (``end`` None: never completed)."""

    process: int
    f: str
    key: str | None
    value: Any
    start: int
    end: int | None
    outcome: str
    result: Any
    node: str | None
    revision: int | None = None

    @property
    def serializable(self) -> bool:
        return self.f == "read" and self.value == "serializable"


def _pair(history: Sequence[Operation]) -> list[_Op]:
    pending: dict[int, Operation] = {}
    out: list[_Op] = []
    for i, ev in enumerate(history):
        if ev.type == "invoke":
            if ev.process in pending:
                raise HistoryError(f"event {i}: process {ev.process} has two invocations")
            pending[ev.process] = ev
            continue
        inv = pending.pop(ev.process, None)
        if inv is None or inv.f != ev.f:
            raise HistoryError(f"event {i}: {ev.type} {ev.f} without its invocation")
        out.append(
            _Op(
                inv.process,
                inv.f,
                inv.key,
                inv.value,
                inv.time_ns,
                ev.time_ns,
                ev.type,
                ev.result,
                ev.node or inv.node,
                ev.revision,
            )
        )
    for inv in pending.values():
        out.append(
            _Op(inv.process, inv.f, inv.key, inv.value, inv.time_ns, None, "info", None, inv.node)
        )
    out.sort(key=lambda o: o.start)
    return out


@dataclass
class _Lease:
    key: str
    mode: str
    lease_id: int
    ttl_ns: int
    granted_at: int
    """Invocation of the grant."""
    renewed_until: float
    """R: the last time the lease may have been renewed (inf: unknown)."""
    alive_since_call: int
    """The latest invocation of the grant or of an ok keep-alive with TTL > 0."""
    stopped_at: int | None = None
    """Invocation of the ``stop``: no keep-alive after it."""
    stop_reason: str = ""
    put_called: int | None = None
    put_done: int | None = None
    put_revision: int | None = None


class LeadershipTimeline:
    """Leader elections placed in time by ``status`` rounds (see the module doc)."""

    def __init__(self, status_ops: Sequence[_Op], members: int) -> None:
        rounds: dict[Any, list[_Op]] = defaultdict(list)
        self.first_named: dict[int, int] = {}
        for op in status_ops:
            rounds[op.value].append(op)
            if op.outcome == "ok" and op.end is not None and isinstance(op.result, dict):
                term, leader = int(op.result.get("term", 0)), int(op.result.get("leader", 0))
                if leader and (term not in self.first_named or op.end < self.first_named[term]):
                    self.first_named[term] = op.end
        settled: list[tuple[int, int]] = []  # (round start, highest term M)
        for ops in rounds.values():
            answers = [o for o in ops if o.outcome == "ok" and isinstance(o.result, dict)]
            if len(answers) * 2 <= members:
                continue
            top = max(int(a.result.get("term", 0)) for a in answers)
            named = any(
                int(a.result.get("term", 0)) == top and int(a.result.get("leader", 0))
                for a in answers
            )
            if named:
                settled.append((min(o.start for o in ops), top))
        settled.sort()
        self.settled = settled
        self._starts = [start for start, _ in settled]
        self.terms = sorted(self.first_named)

    def latest_election(self, r0: int, r1: int) -> int | None:
        """``L`` for a read invoked at ``r0`` and completed at ``r1``; None when
        no settled round began after the read."""
        bound: int | None = None
        for i in range(bisect.bisect_left(self._starts, r0), len(self.settled)):
            start, top = self.settled[i]
            named = self.first_named[top]
            bound = named if bound is None else max(bound, named)
            if start >= r1:
                return min(r1, bound)
        return None


def check_leases(history: Sequence[Operation], *, bounds: LeaseBounds, members: int) -> LeaseResult:
    """Apply rules 1 and 2 of the module docstring to a lease workload history."""
    ops = _pair(history)
    leases: dict[str, _Lease] = {}
    anomalies: list[LeaseAnomaly] = []
    stats: Counter[str] = Counter()
    late = int(bounds.late_keepalive * NS)
    for op in ops:
        if op.f != "grant" or op.outcome != "ok" or op.key is None or op.end is None:
            continue
        result = op.result or {}
        leases[op.key] = _Lease(
            key=op.key,
            mode=str((op.value or {}).get("mode", "stopped")),
            lease_id=int(result["lease"]),
            ttl_ns=int(result["ttl"]) * NS,
            granted_at=op.start,
            renewed_until=op.end,
            alive_since_call=op.start,
        )
        stats[f"leases_{leases[op.key].mode}"] += 1
    reads: list[_Op] = []
    for op in ops:
        lease = leases.get(op.key or "")
        if op.f == "read" and op.outcome == "ok" and op.end is not None:
            reads.append(op)
        elif lease is None:
            continue
        elif op.f == "put":
            lease.put_called = op.start
            if op.outcome == "ok":
                lease.put_done = op.end
                lease.put_revision = op.revision
        elif op.f == "keepalive":
            stats["keepalives"] += 1
            if op.outcome == "ok" and op.end is not None:
                if int(op.result or 0) > 0:
                    lease.renewed_until = max(lease.renewed_until, op.end)
                    lease.alive_since_call = max(lease.alive_since_call, op.start)
            else:
                stats["keepalives_failed"] += 1
                end = op.end + late if op.end is not None else math.inf
                lease.renewed_until = max(lease.renewed_until, end)
        elif op.f == "stop":
            stats["stops"] += 1
            lease.stopped_at = op.start
            lease.stop_reason = str(op.result or "")
    timeline = LeadershipTimeline([o for o in ops if o.f == "status"], members)
    stats["terms_with_leader"] = len(timeline.first_named)
    stats["settled_rounds"] = len(timeline.settled)
    expired_after_gap: set[str] = set()
    expired_after_stop: set[str] = set()
    ext = int(bounds.promotion_extension * NS)
    delay = int(bounds.revoke_delay * NS)
    for read in reads:
        assert read.end is not None
        present = set(read.result or [])
        stats["reads_serializable" if read.serializable else "reads"] += 1
        election = None if read.serializable else timeline.latest_election(read.start, read.end)
        for lease in leases.values():
            if lease.key in present:
                if lease.put_called is None or read.end < lease.put_called:
                    anomalies.append(
                        LeaseAnomaly("phantom", lease.key, read.start, "seen before its put")
                    )
                if read.serializable:
                    continue  # a lagging member may show it long after the revoke
                if election is None or math.isinf(lease.renewed_until):
                    stats["unjudged"] += 1
                    continue
                stats["judged"] += 1
                deadline = max(lease.renewed_until, election + ext) + lease.ttl_ns + delay
                if read.start > deadline:
                    anomalies.append(
                        LeaseAnomaly(
                            "outlived",
                            lease.key,
                            read.start,
                            f"lease {lease.lease_id:x} (TTL {lease.ttl_ns // NS}s) renewed until "
                            f"{lease.renewed_until / NS:.3f}s, last election by "
                            f"{election / NS:.3f}s: gone by {deadline / NS:.3f}s at the latest, "
                            f"seen by the read invoked {(read.start - deadline) / NS:.3f}s later",
                        )
                    )
            elif lease.mode == "kept" and lease.put_done is not None:
                if read.serializable:
                    put, seen = lease.put_revision, read.revision
                    if put is None or seen is None or seen < put:
                        continue  # its member had not applied the put yet
                elif read.start < lease.put_done:
                    continue
                if read.end <= lease.alive_since_call + lease.ttl_ns:
                    anomalies.append(
                        LeaseAnomaly(
                            "vanished",
                            lease.key,
                            read.start,
                            f"kept-alive lease {lease.lease_id:x} (TTL {lease.ttl_ns // NS}s) "
                            f"renewed at {lease.alive_since_call / NS:.3f}s, key absent in a read "
                            f"done at {read.end / NS:.3f}s",
                        )
                    )
                elif lease.stop_reason == "end" and lease.stopped_at is not None:
                    expired_after_stop.add(lease.key)
                else:
                    expired_after_gap.add(lease.key)
    stats["expired_after_gap"] = len(expired_after_gap)
    stats["kept_expired_after_stop"] = len(expired_after_stop)
    verdict = Verdict.INVALID if anomalies else Verdict.VALID
    return LeaseResult(verdict, anomalies, dict(stats))
