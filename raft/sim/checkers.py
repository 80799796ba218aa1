"""Safety checkers for a simulated Raft cluster (Raft paper, Figure 3, and more).

The checkers are independent of the simulator: they consume plain
observations (:class:`NodeView` snapshots of every node, and :class:`Event`
records of applies and reads), keep whatever history a property needs across
*all* time (not just the current instant), and raise a subclass of
:class:`Violation` (an ``AssertionError``) with a message that says what went
wrong where.  :meth:`SafetyChecker.check` is cheap enough to call after every
simulated step.

Properties (names usable in ``SafetyChecker(properties=...)``):

``election``
    Election safety: at most one leader per term, ever.
``append_only``
    Leader append-only: while a node leads a term, the log it had at the
    previous check is a prefix of its log now.
``log_matching``
    Log matching: an entry is identified by ``(index, term)``; every log that
    ever holds that pair holds the same data there and the same term at
    ``index - 1``, which by induction makes the whole prefixes identical.
``completeness``
    Leader completeness: every entry ever covered by some node's commit index
    is in the log of every leader of that term or a later one.
``state_machine``
    State machine safety: no two nodes ever apply different entries at one
    index; each node applies indexes in order without gaps; no two different
    entries are ever committed at one index.
``durability``
    A node's persisted term and commit index never go backwards (across
    crashes too), a persisted vote never changes within a term, the persisted
    commit index never exceeds the persisted log, and every committed entry is
    held in the *durable* logs of enough voters that every majority holds it
    (so no crash of a minority can lose it).  "Voters" are those of the latest
    *committed* configuration (the initial voters, changed by every committed
    conf-change entry in index order); with one-server-at-a-time changes a
    majority of the configuration an entry was committed under intersects
    every majority of the adjacent configurations.
``reads``
    ReadIndex linearizability: a read returned at index ``i`` was issued when
    every commit index known anywhere was ``<= i``.
``membership``
    At most one membership change is uncommitted at a time: no log (in
    memory or durable) ever holds two conf-change entries above the highest
    commit index any node has reached.  (Election safety stays per term,
    whatever configuration each candidate used.)
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import msgspec

from raft.membership import decode_conf_change, is_conf_change
from raft.messages import ConfState, Entry, HardState, SnapshotMeta
from raft.ready import Role
from raft.sim.network import format_bytes

# -- violations ----------------------------------------------------------------------


class Violation(AssertionError):
    """A safety property of Raft does not hold."""

    prop = "safety"


class ElectionSafetyViolation(Violation):
    prop = "election"


class LeaderAppendOnlyViolation(Violation):
    prop = "append_only"


class LogMatchingViolation(Violation):
    prop = "log_matching"


class LeaderCompletenessViolation(Violation):
    prop = "completeness"


class StateMachineSafetyViolation(Violation):
    prop = "state_machine"


class DurabilityViolation(Violation):
    prop = "durability"


class ReadIndexViolation(Violation):
    prop = "reads"


class MembershipViolation(Violation):
    prop = "membership"


ALL_PROPERTIES = frozenset(
    {
        "election",
        "append_only",
        "log_matching",
        "completeness",
        "state_machine",
        "durability",
        "reads",
        "membership",
    }
)


# -- observations --------------------------------------------------------------------


@dataclass(frozen=True)
class LogView:
    """A contiguous run of a log: ``entries[k]`` has index ``first + k``.

    ``prev_term`` is the term of the entry at ``first - 1`` (covered by a
    snapshot, or the zero sentinel when ``first == 1``).
    """

    first: int = 1
    prev_term: int = 0
    entries: Sequence[Entry] = ()

    @property
    def last(self) -> int:
        return self.first + len(self.entries) - 1

    def get(self, index: int) -> Entry | None:
        offset = index - self.first
        if 0 <= offset < len(self.entries):
            return self.entries[offset]
        return None

    def term(self, index: int) -> int | None:
        if index == self.first - 1:
            return self.prev_term
        entry = self.get(index)
        return None if entry is None else entry.term


@dataclass(frozen=True)
class NodeView:
    """What the checkers see of one node at one instant.

    When the node is up, ``term``/``role``/``commit``/``log`` come from its
    running core (its in-memory log, including entries not yet persisted);
    when it is down they come from its durable state and ``role`` is ``None``.
    ``durable``/``hard_state`` are always what a crash right now would keep.
    """

    id: int
    up: bool
    incarnation: int
    term: int
    role: Role | None
    commit: int
    log: LogView
    durable: LogView
    hard_state: HardState


@dataclass(frozen=True)
class Applied:
    """``node`` (in its ``incarnation``-th life) applied ``entry`` to its state machine."""

    node: int
    incarnation: int
    entry: Entry


@dataclass(frozen=True)
class Restarted:
    """``node`` started a new incarnation that has already applied ``applied``."""

    node: int
    incarnation: int
    applied: int


@dataclass(frozen=True)
class ReadIssued:
    """``read_index(context)`` was called on ``node`` while ``known_commit`` was the
    highest commit index any node had reached."""

    node: int
    context: bytes
    known_commit: int


@dataclass(frozen=True)
class ReadResult:
    """``node``'s Ready carried ``ReadState(index, context)``."""

    node: int
    context: bytes
    index: int


@dataclass(frozen=True)
class SnapshotRestored:
    """``node`` replaced its state machine with a snapshot image: the entries
    ``1..meta.index`` it claims were applied, in order."""

    node: int
    incarnation: int
    meta: SnapshotMeta
    entries: tuple[Entry, ...]


Event = Applied | Restarted | ReadIssued | ReadResult | SnapshotRestored


def _entry(e: Entry) -> str:
    data = format_bytes(e.data) if e.data else "no-op"
    return f"(index {e.index}, term {e.term}, {data})"


@dataclass
class _Committed:
    entry: Entry
    term: int  # the observer's term when first seen committed
    node: int  # who was first seen with it committed


@dataclass
class SafetyChecker:
    """Checks every property in ``properties`` over all observations ever fed to it.

    ``voters`` are the node ids whose votes count (for the majority in the
    durability check).
    """

    voters: Sequence[int]
    properties: frozenset[str] = ALL_PROPERTIES
    # election
    leaders: dict[int, int] = field(default_factory=dict)
    # append-only: (node, incarnation, term) -> the leader's log at the previous check
    _leader_logs: dict[tuple[int, int, int], LogView] = field(default_factory=dict)
    # log matching: (index, term) -> (the entry, term at index - 1, first holder)
    _entry_ids: dict[tuple[int, int], tuple[Entry, int, int]] = field(default_factory=dict)
    # completeness / state machine
    committed: dict[int, _Committed] = field(default_factory=dict)
    applied: dict[int, tuple[Entry, int]] = field(default_factory=dict)
    _next_apply: dict[tuple[int, int], int] = field(default_factory=dict)
    # durability
    _hard: dict[int, HardState] = field(default_factory=dict)
    _commit_seen: dict[tuple[int, int], int] = field(default_factory=dict)
    # reads
    _reads: dict[bytes, ReadIssued] = field(default_factory=dict)
    max_commit: int = 0
    checks: int = 0
    # membership: the configuration after every committed entry up to _conf_upto
    committed_conf: ConfState = field(default_factory=ConfState)
    _conf_upto: int = 0

    def __post_init__(self) -> None:
        unknown = set(self.properties) - ALL_PROPERTIES
        if unknown:
            raise ValueError(f"unknown properties: {sorted(unknown)}")
        self.committed_conf = ConfState(voters=tuple(sorted(self.voters)))

    # -- entry points ----------------------------------------------------------------

    def check(self, views: Sequence[NodeView], events: Iterable[Event] = ()) -> None:
        """Feed one step's events and the state of every node; raise on a violation."""
        self.checks += 1
        for event in events:
            self.observe_event(event)
        for view in views:
            self.observe_node(view)
        if "completeness" in self.properties:
            for view in views:
                if view.up and view.role is Role.LEADER:
                    self._check_completeness(view)
        self._advance_committed_conf()
        if "durability" in self.properties:
            self._check_quorum_durable(views)
        if "membership" in self.properties:
            for view in views:
                self._check_one_pending_change(view, view.log, "log")
                if view.durable is not view.log:
                    self._check_one_pending_change(view, view.durable, "durable log")

    def observe_event(self, event: Event) -> None:
        if isinstance(event, Applied):
            self._observe_apply(event)
        elif isinstance(event, Restarted):
            self._next_apply[(event.node, event.incarnation)] = event.applied + 1
        elif isinstance(event, ReadIssued):
            self._reads[event.context] = event
        elif isinstance(event, SnapshotRestored):
            self._observe_snapshot(event)
        else:
            self._observe_read_result(event)

    def observe_node(self, view: NodeView) -> None:
        props = self.properties
        if view.up and view.role is Role.LEADER:
            if "election" in props:
                self.observe_leader(view.term, view.id)
            if "append_only" in props:
                self._check_append_only(view)
        if "log_matching" in props:
            self._check_log_matching(view, view.log, "log")
            if view.durable is not view.log:
                self._check_log_matching(view, view.durable, "durable log")
        self._observe_commit(view)
        if "durability" in props:
            self._check_hard_state(view)

    # -- election safety ---------------------------------------------------------------

    def observe_leader(self, term: int, node: int) -> None:
        """Record that ``node`` is a leader in ``term``."""
        previous = self.leaders.setdefault(term, node)
        if previous != node and "election" in self.properties:
            raise ElectionSafetyViolation(
                f"election safety: n{node} is leader of term {term}, "
                f"but n{previous} was already leader of term {term}"
            )

    # -- leader append-only ------------------------------------------------------------

    def _check_append_only(self, view: NodeView) -> None:
        key = (view.id, view.incarnation, view.term)
        before = self._leader_logs.get(key)
        if before is not None:
            for entry in before.entries:
                if entry.index < view.log.first:
                    continue  # compacted into a snapshot, not truncated
                now = view.log.get(entry.index)
                if now != entry:
                    what = "truncated" if now is None else f"overwritten by {_entry(now)}"
                    raise LeaderAppendOnlyViolation(
                        f"leader append-only: n{view.id}, leader of term {view.term}, had "
                        f"{_entry(entry)} in its log; it is now {what}"
                    )
        self._leader_logs[key] = view.log

    # -- log matching ------------------------------------------------------------------

    def _check_log_matching(self, view: NodeView, log: LogView, which: str) -> None:
        ids = self._entry_ids
        prev_term = log.prev_term
        for entry in log.entries:
            key = (entry.index, entry.term)
            seen = ids.get(key)
            if seen is None:
                ids[key] = (entry, prev_term, view.id)
            else:
                other, other_prev, holder = seen
                if other != entry:
                    raise LogMatchingViolation(
                        f"log matching: two different entries with index {entry.index} and "
                        f"term {entry.term}: n{holder} had {_entry(other)}, the {which} of "
                        f"n{view.id} has {_entry(entry)}"
                    )
                if other_prev != prev_term:
                    raise LogMatchingViolation(
                        f"log matching: entry {_entry(entry)} follows an entry of term "
                        f"{prev_term} in the {which} of n{view.id} but one of term "
                        f"{other_prev} in the log of n{holder}: the prefixes differ"
                    )
            prev_term = entry.term

    # -- commits and leader completeness -------------------------------------------------

    def _observe_commit(self, view: NodeView) -> None:
        if view.up:
            key = (view.id, view.incarnation)
            before = self._commit_seen.get(key, 0)
            if view.commit < before and "durability" in self.properties:
                raise DurabilityViolation(
                    f"commit index of n{view.id} went back from {before} to {view.commit}"
                )
            self._commit_seen[key] = view.commit
        self.max_commit = max(self.max_commit, view.commit)
        log = view.log
        top = min(view.commit, log.last)
        for index in range(max(log.first, 1), top + 1):
            entry = log.entries[index - log.first]
            known = self.committed.get(index)
            if known is None:
                self.committed[index] = _Committed(entry, view.term, view.id)
            elif known.entry != entry and "state_machine" in self.properties:
                raise StateMachineSafetyViolation(
                    f"state machine safety: index {index} was committed as "
                    f"{_entry(known.entry)} (at n{known.node}), but n{view.id} has committed "
                    f"{_entry(entry)} there"
                )

    def _check_completeness(self, leader: NodeView) -> None:
        log = leader.log
        for index, known in self.committed.items():
            if known.term > leader.term or index < log.first:
                continue
            have = log.get(index)
            if have != known.entry:
                what = "nothing" if have is None else _entry(have)
                raise LeaderCompletenessViolation(
                    f"leader completeness: {_entry(known.entry)} was committed (seen at "
                    f"n{known.node} in term {known.term}), but n{leader.id}, leader of term "
                    f"{leader.term}, has {what} at index {index}"
                )

    # -- state machine safety ------------------------------------------------------------

    def _observe_apply(self, event: Applied, in_order: bool = True) -> None:
        entry = event.entry
        props = self.properties
        key = (event.node, event.incarnation)
        expected = self._next_apply.get(key)
        if (
            in_order
            and expected is not None
            and entry.index != expected
            and "state_machine" in props
        ):
            raise StateMachineSafetyViolation(
                f"state machine safety: n{event.node} applied index {entry.index} "
                f"but the next index to apply was {expected}"
            )
        self._next_apply[key] = entry.index + 1
        known = self.applied.get(entry.index)
        if known is None:
            self.applied[entry.index] = (entry, event.node)
        elif known[0] != entry and "state_machine" in props:
            raise StateMachineSafetyViolation(
                f"state machine safety: n{known[1]} applied {_entry(known[0])} at index "
                f"{entry.index}, but n{event.node} applied {_entry(entry)}"
            )
        committed = self.committed.get(entry.index)
        if committed is not None and committed.entry != entry and "state_machine" in props:
            raise StateMachineSafetyViolation(
                f"state machine safety: n{event.node} applied {_entry(entry)}, but "
                f"{_entry(committed.entry)} is committed at that index"
            )

    def _observe_snapshot(self, event: SnapshotRestored) -> None:
        """A snapshot image must be exactly the applied prefix up to its index."""
        meta = event.meta
        if "state_machine" in self.properties:
            indexes = [entry.index for entry in event.entries]
            if indexes != list(range(1, meta.index + 1)):
                raise StateMachineSafetyViolation(
                    f"state machine safety: n{event.node} restored a snapshot at index "
                    f"{meta.index} whose image does not hold entries 1..{meta.index} in order"
                )
            if event.entries and event.entries[-1].term != meta.term:
                raise StateMachineSafetyViolation(
                    f"state machine safety: snapshot {meta.index}@{meta.term} restored at "
                    f"n{event.node} ends with {_entry(event.entries[-1])}"
                )
        for entry in event.entries:
            self._observe_apply(Applied(event.node, event.incarnation, entry), in_order=False)
        self._next_apply[(event.node, event.incarnation)] = meta.index + 1

    # -- durability ----------------------------------------------------------------------

    def _check_hard_state(self, view: NodeView) -> None:
        hs = view.hard_state
        before = self._hard.get(view.id)
        if before is not None:
            if hs.term < before.term:
                raise DurabilityViolation(
                    f"durability: persisted term of n{view.id} went back from "
                    f"{before.term} to {hs.term}"
                )
            if hs.commit < before.commit:
                raise DurabilityViolation(
                    f"durability: persisted commit index of n{view.id} went back from "
                    f"{before.commit} to {hs.commit}"
                )
            if hs.term == before.term and before.vote != 0 and hs.vote != before.vote:
                raise DurabilityViolation(
                    f"durability: persisted vote of n{view.id} in term {hs.term} changed "
                    f"from n{before.vote} to {'nobody' if hs.vote == 0 else f'n{hs.vote}'}"
                )
        if hs.commit > view.durable.last:
            raise DurabilityViolation(
                f"durability: n{view.id} persisted commit index {hs.commit} beyond its "
                f"persisted log (last index {view.durable.last})"
            )
        self._hard[view.id] = hs

    def _check_quorum_durable(self, views: Sequence[NodeView]) -> None:
        voters = set(self.committed_conf.voters)
        # Enough holders that every majority includes one (a plain majority
        # for an odd number of voters).
        need = len(voters) - (len(voters) // 2 + 1) + 1
        logs = [v.durable for v in views if v.id in voters]
        for index, known in self.committed.items():
            holders = 0
            compacted = 0
            for log in logs:
                if index < log.first:
                    compacted += 1
                elif log.get(index) == known.entry:
                    holders += 1
            if holders + compacted < need:
                raise DurabilityViolation(
                    f"durability: committed entry {_entry(known.entry)} is durable on only "
                    f"{holders} of {len(voters)} voters; a crash of the others loses it"
                )

    # -- reads ------------------------------------------------------------------------

    def _observe_read_result(self, event: ReadResult) -> None:
        if "reads" not in self.properties:
            return
        issued = self._reads.get(event.context)
        if issued is None:
            raise ReadIndexViolation(
                f"read index: n{event.node} got a read state for context "
                f"{event.context!r} that nobody issued"
            )
        if issued.node != event.node:
            raise ReadIndexViolation(
                f"read index: read {event.context!r} was issued at n{issued.node} but its "
                f"read state arrived at n{event.node}"
            )
        if event.index < issued.known_commit:
            raise ReadIndexViolation(
                f"read index: read {event.context!r} at n{event.node} got index "
                f"{event.index}, but index {issued.known_commit} was already committed "
                "when the read was issued (a stale read)"
            )

    # -- membership --------------------------------------------------------------------

    def _advance_committed_conf(self) -> None:
        """Fold every newly committed conf-change entry, in index order, into
        :attr:`committed_conf` (each states the whole configuration after it)."""
        while (known := self.committed.get(self._conf_upto + 1)) is not None:
            self._conf_upto += 1
            if not is_conf_change(known.entry):
                continue
            try:
                change = decode_conf_change(known.entry.data)
            except msgspec.DecodeError:
                continue
            self.committed_conf = change.conf_after()

    def _check_one_pending_change(self, view: NodeView, log: LogView, which: str) -> None:
        pending = [e.index for e in log.entries if e.index > self.max_commit and is_conf_change(e)]
        if len(pending) > 1:
            raise MembershipViolation(
                f"membership: the {which} of n{view.id} holds {len(pending)} uncommitted "
                f"conf changes (at indexes {pending}); at most one may be pending"
            )
