"""The checkers must catch broken Raft variants, and hand-made bad histories.

A checker that never fires proves nothing.  Each test here builds a history
that violates one property and asserts the matching checker raises:

* a node whose storage forgets its vote across a crash (scripted: two leaders
  in one term);
* a leader that commits entries of earlier terms by counting replicas (the
  scenario of Figure 8 of the Raft paper: a "committed" entry is then
  overwritten by the next leader);
* four more realistic mutants of the core: votes without the log up-to-date
  check and heartbeats carrying an uncapped commit index, which the
  Hypothesis state machine of ``test_sim_properties`` must find within a
  bounded budget; ReadIndex answered without confirming leadership and append
  acknowledgements sent before persisting, each with a scripted schedule;
* hand-made observations for every property.

Each scripted scenario also runs against the correct core/storage and must
then pass, so the scripts test the checkers and not the script.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest
from hypothesis import Phase, settings
from hypothesis.stateful import run_state_machine_as_test
from test_sim_properties import RaftSimulation

from raft.core import Config, RaftCore
from raft.messages import (
    AppendEntries,
    AppendResponse,
    Entry,
    HardState,
    Heartbeat,
    Message,
    RequestVote,
    SnapshotMeta,
    VoteResponse,
)
from raft.read_only import ReadRequest
from raft.ready import Role
from raft.sim import (
    Cluster,
    CrashPoint,
    DurabilityViolation,
    ElectionSafetyViolation,
    LeaderAppendOnlyViolation,
    LeaderCompletenessViolation,
    LogMatchingViolation,
    MemoryDisk,
    ReadIndexViolation,
    SafetyChecker,
    StateMachineSafetyViolation,
    Violation,
)
from raft.sim.checkers import (
    Applied,
    LogView,
    NodeView,
    ReadIssued,
    ReadResult,
    Restarted,
    SnapshotRestored,
)
from raft.sim.cluster import DiskFactory
from raft.sim.network import Envelope
from raft.storage import Storage

# -- broken variants ----------------------------------------------------------------------


class ForgetfulVoteDisk(MemoryDisk):
    """Storage that loses ``HardState.vote`` when the node crashes (bug a)."""

    def crash(self) -> None:
        hs = self.memory.hard_state
        self.memory.set_hard_state(HardState(term=hs.term, vote=0, commit=hs.commit))


class OldTermCommitCore(RaftCore):
    """A leader that commits by counting replicas whatever the entry's term (bug b)."""

    def _can_commit_at(self, index: int) -> bool:
        return True


def is_msg(kind: type, frm: int | None = None, to: int | None = None) -> Callable[[Envelope], bool]:
    def match(envelope: Envelope) -> bool:
        return (
            isinstance(envelope.message, kind)
            and (frm is None or envelope.frm == frm)
            and (to is None or envelope.to == to)
        )

    return match


def drop_all(cluster: Cluster) -> None:
    cluster.drop_where(lambda envelope: True)


# -- (a) a vote forgotten across a crash ------------------------------------------------------


def forgotten_vote_scenario(disk_factory: DiskFactory, checker: SafetyChecker | None) -> Cluster:
    """n1 and n3 campaign in term 1; n2 votes for n1, crashes, restarts, votes for n3."""
    config = Config(id=1, election_tick=5, pre_vote=False)
    cluster = Cluster(3, seed=11, config=config, disk_factory=disk_factory, checker=checker)
    cluster.campaign(1)
    cluster.campaign(3)
    assert cluster.core(1).term == cluster.core(3).term == 1
    cluster.deliver_where(is_msg(RequestVote, frm=1, to=2))
    cluster.deliver_where(is_msg(VoteResponse, frm=2, to=1))
    assert cluster.core(1).role is Role.LEADER
    cluster.crash(2)
    cluster.restart(2)
    cluster.deliver_where(is_msg(RequestVote, frm=3, to=2))
    cluster.deliver_where(is_msg(VoteResponse, frm=2, to=3))
    return cluster


def test_forgotten_vote_elects_two_leaders_in_one_term() -> None:
    checker = SafetyChecker([1, 2, 3], properties=frozenset({"election"}))
    with pytest.raises(ElectionSafetyViolation, match="leader of term 1") as info:
        forgotten_vote_scenario(ForgetfulVoteDisk, checker)
    assert "n3 is leader of term 1, but n1 was already leader" in str(info.value)


def test_forgotten_vote_is_caught_by_durability_at_once() -> None:
    with pytest.raises(DurabilityViolation, match="persisted vote of n2 in term 1 changed"):
        forgotten_vote_scenario(ForgetfulVoteDisk, None)


def test_forgotten_vote_schedule_is_safe_with_durable_votes() -> None:
    cluster = forgotten_vote_scenario(MemoryDisk, None)
    assert cluster.leaders() == [1]
    assert cluster.core(3).role is Role.CANDIDATE


# -- (b) Figure 8: committing an entry of an earlier term by counting replicas -----------------


def figure8_scenario(core_factory: type[RaftCore]) -> Cluster:
    """Raft paper, Figure 8, with five nodes (n1..n5 for S1..S5).

    (a) n1 leads term 1 and gets entry ``x`` (index 2) to n2 only.
    (b) n1 crashes; n5 leads term 2 (votes of n3, n4) with its own entry at index 2.
    (c) n5 crashes; n1 restarts and leads term 3 (votes of n2, n3, n4); it gets
        ``x`` to n3: now on a majority (n1, n2, n3), but its own term-3 entry is
        only on n1 and n2.  The buggy leader commits ``x`` here.
    (d) n1 crashes; n5 restarts and leads term 4 (votes of n3, n4): its log has
        no ``x``, and it would overwrite it everywhere.
    """
    config = Config(id=1, election_tick=5, pre_vote=False, check_quorum=False, max_size_per_msg=1)
    cluster = Cluster(5, seed=8, config=config, core_factory=core_factory)
    # Term 1: n1 leads; its no-op (index 1) is committed everywhere.
    cluster.campaign(1)
    cluster.stabilize()
    assert cluster.stable_leader() == 1 and cluster.core(1).term == 1
    # (a)
    assert cluster.propose(1, b"x") == 2
    cluster.deliver_where(is_msg(AppendEntries, frm=1, to=2))
    drop_all(cluster)
    assert cluster.core(2).log.last_index() == 2
    # (b)
    cluster.crash(1)
    cluster.campaign(5)
    cluster.deliver_where(
        lambda e: isinstance(e.message, (RequestVote, VoteResponse)) and e.to in (3, 4, 5)
    )
    assert cluster.core(5).role is Role.LEADER and cluster.core(5).term == 2
    assert cluster.core(5).log.term(2) == 2
    drop_all(cluster)
    cluster.crash(5)
    # (c)
    cluster.restart(1)
    cluster.campaign(1)  # term 2: n3 and n4 already voted for n5
    cluster.campaign(1)  # term 3
    cluster.deliver_where(is_msg(RequestVote))
    cluster.deliver_where(is_msg(VoteResponse))
    n1 = cluster.core(1)
    assert n1.role is Role.LEADER and n1.term == 3 and n1.log.last_index() == 3
    # n2 takes the term-3 no-op (index 3); n3 is probed back to index 2 and takes x.
    cluster.deliver_where(is_msg(AppendEntries, frm=1, to=2))
    cluster.deliver_where(is_msg(AppendResponse, frm=2, to=1))

    def to_n3_without_index_3(envelope: Envelope) -> bool:
        m = envelope.message
        if not isinstance(m, AppendEntries) or envelope.to != 3:
            return False
        carries_3 = any(entry.index >= 3 for entry in m.entries)
        return not carries_3 or cluster.core(3).log.last_index() < m.prev_index

    cluster.deliver_where(lambda e: to_n3_without_index_3(e) or is_msg(AppendResponse, 3, 1)(e))
    assert cluster.core(3).log.last_index() == 2 and cluster.core(3).log.term(2) == 1
    drop_all(cluster)
    # (d)
    cluster.crash(1)
    cluster.restart(5)
    cluster.campaign(5)  # term 3: everyone alive already voted in term 3
    cluster.campaign(5)  # term 4
    cluster.deliver_where(lambda e: isinstance(e.message, (RequestVote, VoteResponse)))
    return cluster


def test_figure8_old_term_commit_is_caught() -> None:
    with pytest.raises(LeaderCompletenessViolation) as info:
        figure8_scenario(OldTermCommitCore)
    message = str(info.value)
    assert "(index 2, term 1" in message and "n5, leader of term 4" in message


def test_figure8_schedule_is_safe_with_the_real_commit_rule() -> None:
    cluster = figure8_scenario(RaftCore)
    assert cluster.core(5).role is Role.LEADER and cluster.core(5).term == 4
    # x was never committed, so n5 may overwrite it; everything stays safe.
    cluster.restart(1)
    cluster.stabilize()
    assert all(cluster.core(i).log.term(2) == 2 for i in cluster.up())


# -- mutants the property-based search must find ------------------------------------------------


class VotesForAnyLog(RaftCore):
    """Grants votes without the election restriction (§5.4.1)."""

    def __init__(self, config: Config, storage: Storage, rng: random.Random) -> None:
        super().__init__(config, storage, rng)
        self.log.is_up_to_date = lambda last_index, last_term: True  # type: ignore[method-assign]


class ReadsWithoutConfirmation(RaftCore):
    """Answers ReadIndex at once: no heartbeat round, no entry of its own term needed."""

    def _leader_read(self, requester: int, context: bytes) -> None:
        self._deliver_read(ReadRequest(self.log.committed, requester, context))


class AcksBeforePersisting(RaftCore):
    """Sends append acknowledgements with the messages that may leave before the disk write."""

    def _send(self, message: Message) -> None:
        if isinstance(message, AppendResponse):
            self._messages.append(message)
        else:
            super()._send(message)


class UncappedHeartbeatCommit(RaftCore):
    """Tells every follower the full commit index, whatever the follower holds."""

    def _broadcast_heartbeat(self, read_round: int) -> None:
        for peer in sorted(self._progress):
            if peer != self.id:
                self._send(
                    Heartbeat(
                        frm=self.id,
                        to=peer,
                        term=self.term,
                        commit=self.log.committed,
                        read_round=read_round,
                    )
                )


MUTANT_BUDGET = 300
"""Examples allowed to the search.  Measured with random seeds, these mutants
are found within 4-80 examples (typically ~20), so a miss is astronomically
unlikely; the CI profile is derandomized, so the outcome is also fixed."""


@pytest.mark.parametrize(
    "mutant", [VotesForAnyLog, UncappedHeartbeatCommit], ids=lambda m: m.__name__
)
def test_property_search_finds_mutant(mutant: type[RaftCore]) -> None:
    class Mutated(RaftSimulation):
        core_factory = mutant

    budget = settings(
        max_examples=MUTANT_BUDGET,
        stateful_step_count=100,
        phases=[Phase.generate],
        report_multiple_bugs=False,
    )
    with pytest.raises(AssertionError):
        run_state_machine_as_test(Mutated, settings=budget)


# The two mutants below need rarer schedules (a random search takes hundreds of
# examples), so each gets the short scripted schedule that exposes it.


def stale_read_scenario(core_factory: type[RaftCore]) -> Cluster:
    """n1 leads and is cut off; n2 and n3 elect n2, which commits more; then a
    client reads at n1, which still believes it leads (no CheckQuorum)."""
    config = Config(id=1, election_tick=5, check_quorum=False)
    cluster = Cluster(3, seed=21, config=config, core_factory=core_factory)
    cluster.campaign(1)
    cluster.stabilize()
    assert cluster.stable_leader() == 1
    cluster.partition({1})
    cluster.run_until(
        lambda: cluster.core(2).role is Role.LEADER or cluster.core(3).role is Role.LEADER,
        cluster.election_bound(),
        "a leader in the majority",
    )
    new = 2 if cluster.core(2).role is Role.LEADER else 3
    cluster.propose(new, b"after-the-split")
    cluster.stabilize()
    assert cluster.core(new).log.committed > cluster.core(1).log.committed
    assert cluster.core(1).role is Role.LEADER
    cluster.read_index(1, b"stale?")
    cluster.stabilize()
    return cluster


def test_read_without_leadership_confirmation_is_caught() -> None:
    with pytest.raises(ReadIndexViolation, match="stale read"):
        stale_read_scenario(ReadsWithoutConfirmation)


def test_read_schedule_is_safe_with_confirmation() -> None:
    cluster = stale_read_scenario(RaftCore)
    assert b"stale?" not in cluster.nodes[1].read_results


def early_ack_scenario(core_factory: type[RaftCore]) -> Cluster:
    """A follower crashes right after acknowledging entries it never persisted."""
    cluster = Cluster(3, seed=22, config=Config(id=1, election_tick=5), core_factory=core_factory)
    leader = cluster.await_leader()
    follower = next(i for i in cluster.ids if i != leader)
    cluster.propose(leader, b"x")
    position = cluster.network.find(is_msg(AppendEntries, frm=leader, to=follower))
    assert position is not None
    cluster.deliver(position, crash_at=CrashPoint.AFTER_SEND)
    cluster.deliver_where(is_msg(AppendResponse, frm=follower, to=leader))
    return cluster


def test_acks_before_persisting_are_caught() -> None:
    with pytest.raises(DurabilityViolation, match="durable on only 1 of 3"):
        early_ack_scenario(AcksBeforePersisting)


def test_ack_schedule_is_safe_when_acks_wait_for_the_disk() -> None:
    cluster = early_ack_scenario(RaftCore)
    leader = cluster.stable_leader() or cluster.leaders()[0]
    assert cluster.core(leader).log.committed < cluster.core(leader).log.last_index()


# -- hand-made histories -----------------------------------------------------------------------


def entries(*terms: int, data: bytes = b"") -> tuple[Entry, ...]:
    return tuple(Entry(term=t, index=i, data=data) for i, t in enumerate(terms, start=1))


def view(
    node: int,
    term: int,
    role: Role | None,
    log: tuple[Entry, ...] = (),
    commit: int = 0,
    durable: tuple[Entry, ...] | None = None,
    hard: HardState | None = None,
    incarnation: int = 1,
) -> NodeView:
    log_view = LogView(1, 0, log)
    return NodeView(
        id=node,
        up=role is not None,
        incarnation=incarnation,
        term=term,
        role=role,
        commit=commit,
        log=log_view,
        durable=log_view if durable is None else LogView(1, 0, durable),
        hard_state=hard or HardState(term=term, commit=commit),
    )


F, L = Role.FOLLOWER, Role.LEADER


def test_two_leaders_in_one_term_at_once() -> None:
    checker = SafetyChecker([1, 2, 3])
    with pytest.raises(ElectionSafetyViolation):
        checker.check([view(1, 2, L), view(2, 2, L), view(3, 2, F)])


def test_two_leaders_in_one_term_at_different_times() -> None:
    checker = SafetyChecker([1, 2, 3])
    checker.check([view(1, 2, L), view(2, 2, F), view(3, 2, F)])
    checker.check([view(1, 3, F), view(2, 3, F), view(3, 3, F)])
    with pytest.raises(ElectionSafetyViolation, match="n2 is leader of term 2"):
        checker.check([view(1, 3, F), view(2, 2, L), view(3, 3, F)])


def test_divergent_applied_entries() -> None:
    checker = SafetyChecker([1, 2, 3])
    checker.check([], [Applied(1, 1, Entry(1, 1, b"a"))])
    with pytest.raises(StateMachineSafetyViolation, match="applied"):
        checker.check([], [Applied(2, 1, Entry(1, 1, b"b"))])


def test_apply_must_not_skip_an_index() -> None:
    checker = SafetyChecker([1, 2, 3])
    with pytest.raises(StateMachineSafetyViolation, match="next index to apply was 1"):
        checker.check([], [Restarted(1, 1, 0), Applied(1, 1, Entry(1, 2, b"a"))])


def test_two_different_entries_committed_at_one_index() -> None:
    checker = SafetyChecker([1, 2, 3], properties=frozenset({"state_machine"}))
    checker.check([view(1, 1, F, entries(1, data=b"a"), commit=1)])
    with pytest.raises(StateMachineSafetyViolation, match="committed"):
        checker.check([view(2, 1, F, entries(1, data=b"b"), commit=1)])


def test_leader_truncating_its_own_log() -> None:
    checker = SafetyChecker([1, 2, 3])
    checker.check([view(1, 2, L, entries(1, 2, 2))])
    with pytest.raises(LeaderAppendOnlyViolation, match="truncated"):
        checker.check([view(1, 2, L, entries(1, 2))])


def test_leader_overwriting_its_own_log() -> None:
    checker = SafetyChecker([1, 2, 3], properties=frozenset({"append_only"}))
    checker.check([view(1, 2, L, entries(1, 2, 2, data=b"a"))])
    with pytest.raises(LeaderAppendOnlyViolation, match="overwritten"):
        checker.check([view(1, 2, L, entries(1, 2, 2, data=b"b"))])


def test_log_matching_same_index_and_term_different_data() -> None:
    checker = SafetyChecker([1, 2, 3])
    with pytest.raises(LogMatchingViolation, match="two different entries"):
        checker.check(
            [view(1, 2, F, entries(1, 2, data=b"a")), view(2, 2, F, entries(1, 2, data=b"b"))]
        )


def test_log_matching_same_entry_different_prefix() -> None:
    checker = SafetyChecker([1, 2, 3])
    with pytest.raises(LogMatchingViolation, match="prefixes differ"):
        checker.check([view(1, 3, F, entries(1, 3)), view(2, 3, F, entries(2, 3))])


def test_leader_missing_a_committed_entry() -> None:
    checker = SafetyChecker([1, 2, 3])
    committed = entries(1, 1, data=b"x")
    checker.check([view(1, 1, L, committed, commit=2), view(2, 1, F, committed, commit=2)])
    with pytest.raises(LeaderCompletenessViolation, match="n3, leader of term 2"):
        checker.check([view(1, 1, F, committed, commit=2), view(3, 2, L, committed[:1], commit=1)])


def test_committed_entry_on_a_minority_of_disks() -> None:
    checker = SafetyChecker([1, 2, 3])
    log = entries(1, 1)
    with pytest.raises(DurabilityViolation, match="durable on only 1 of 3"):
        checker.check(
            [
                view(1, 1, L, log, commit=2, durable=log),
                view(2, 1, F, log, commit=0, durable=entries(1)),
                view(3, 1, F, (), durable=()),
            ]
        )


def test_persisted_commit_going_backwards() -> None:
    checker = SafetyChecker([1], properties=frozenset({"durability"}))
    log = entries(1, 1)
    checker.check([view(1, 1, None, log, commit=2)])
    with pytest.raises(DurabilityViolation, match="commit index of n1 went back from 2 to 1"):
        checker.check([view(1, 1, None, log, commit=1)])


def test_persisted_commit_beyond_persisted_log() -> None:
    checker = SafetyChecker([1])
    with pytest.raises(DurabilityViolation, match="beyond its persisted log"):
        checker.check([view(1, 1, None, entries(1), commit=3)])


def test_stale_read_index() -> None:
    checker = SafetyChecker([1, 2, 3])
    checker.check([], [ReadIssued(2, b"r1", known_commit=7)])
    with pytest.raises(ReadIndexViolation, match="stale read"):
        checker.check([], [ReadResult(2, b"r1", 5)])


def test_read_state_for_an_unknown_read() -> None:
    checker = SafetyChecker([1, 2, 3])
    with pytest.raises(ReadIndexViolation, match="nobody issued"):
        checker.check([], [ReadResult(2, b"r9", 5)])


def test_every_violation_is_an_assertion_error() -> None:
    assert issubclass(Violation, AssertionError)
    with pytest.raises(ValueError, match="unknown properties"):
        SafetyChecker([1], properties=frozenset({"nonsense"}))


def test_snapshot_image_that_differs_from_what_was_applied() -> None:
    checker = SafetyChecker([1, 2, 3])
    good = entries(1, 1, data=b"a")
    checker.check([], [Applied(1, 1, good[0]), Applied(1, 1, good[1])])
    bad = (good[0], Entry(term=1, index=2, data=b"z"))
    with pytest.raises(StateMachineSafetyViolation, match="applied"):
        checker.check([], [SnapshotRestored(2, 1, SnapshotMeta(index=2, term=1), bad)])


def test_snapshot_image_with_a_hole() -> None:
    checker = SafetyChecker([1, 2, 3])
    image = (Entry(term=1, index=1), Entry(term=1, index=3))
    with pytest.raises(StateMachineSafetyViolation, match=r"does not hold entries 1\.\.3"):
        checker.check([], [SnapshotRestored(2, 1, SnapshotMeta(index=3, term=1), image)])
