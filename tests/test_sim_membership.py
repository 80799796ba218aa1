"""Property-based safety and liveness of membership changes in the simulator.

The fault schedule of :mod:`tests.test_sim_properties` (delivery in any order,
drops, duplicates, partitions, crashes half way through a Ready, restarts,
held Readies, compaction and InstallSnapshot, transfers, forced elections),
plus random membership changes: spare nodes start outside the configuration
(as a member started with ``--initial-cluster-state existing``) and are added
as voters or learners, learners are promoted, members are removed, the
leader included.  Every safety checker runs after every step, including the
membership one (at most one conf change uncommitted at a time); election
safety is checked per term whatever configuration each node used.  At the
end the cluster is healed and the members of the leader's configuration must
elect a leader, apply new proposals and answer reads.

The checkers must also catch broken rules: a core that accepts a second
change before the first is committed (found by the property search), and one
that lets a new leader change the configuration before it committed an entry
of its own term (Ongaro's single-server bug, with the scripted schedule that
exposes it; the same schedule is safe with the real rule).

Sizing: ``KVSTORE_MEMBERSHIP_EXAMPLES`` (default 300) examples of up to
``KVSTORE_MEMBERSHIP_STEPS`` (default 80) rules.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import Phase, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import initialize, rule, run_state_machine_as_test

from raft.core import Config, RaftCore
from raft.membership import ConfChange, ConfChangeType
from raft.messages import ConfState
from raft.ready import Role
from raft.sim import (
    Cluster,
    LeaderCompletenessViolation,
    MembershipViolation,
    SafetyChecker,
)
from raft.sim.cluster import CoreFactory
from tests.test_sim_properties import ELECTION_TICK, RaftSimulation, _bucket, nodes, step

EXAMPLES = int(os.environ.get("KVSTORE_MEMBERSHIP_EXAMPLES", "300"))
STEPS = int(os.environ.get("KVSTORE_MEMBERSHIP_STEPS", "80"))
TOTAL_NODES = 5


class MembershipSimulation(RaftSimulation):
    """Five nodes in all: the initial voters plus spares to add."""

    @initialize(
        size=st.sampled_from([1, 3]),
        seed=st.integers(min_value=0, max_value=2**32),
        pre_vote=st.booleans(),
        check_quorum=st.booleans(),
        small_messages=st.booleans(),
        eager_commit=st.booleans(),
    )
    @step
    def setup(  # type: ignore[override]
        self,
        size: int,
        seed: int,
        pre_vote: bool,
        check_quorum: bool,
        small_messages: bool,
        eager_commit: bool,
    ) -> None:
        config = Config(
            id=1,
            election_tick=ELECTION_TICK,
            pre_vote=pre_vote,
            check_quorum=check_quorum,
            max_size_per_msg=1 if small_messages else 1 << 20,
            max_inflight_msgs=2 if small_messages else 256,
            max_snapshot_chunk=16 if small_messages else 1 << 20,
            snapshot_window=2 if small_messages else 4,
            eager_commit_broadcast=eager_commit,
        )
        self._cluster = Cluster(
            size,
            seed,
            spares=TOTAL_NODES - size,
            config=config,
            core_factory=type(self).core_factory,
            checker=SafetyChecker(range(1, size + 1), properties=self.properties),
        )
        # Start from a working cluster, so membership changes get going early.
        leader = self.cluster.await_leader()
        value = self.unique("w")
        self.cluster.propose(leader, value)
        self.cluster.await_applied([value])

    def leader(self) -> int | None:
        leaders = [
            (self.cluster.core(i).term, i)
            for i in self.cluster.leaders()
            if self.cluster.core(i).role is Role.LEADER
        ]
        return max(leaders)[1] if leaders else None

    @rule(
        kind=st.sampled_from(ConfChangeType),
        member=nodes,
        via=nodes,
        at_leader=st.booleans(),
    )
    @step
    def change_membership(
        self, kind: ConfChangeType, member: int, via: int, at_leader: bool
    ) -> None:
        """Propose a change at the current leader (or anywhere: then refused)."""
        leader = self.leader()
        proposer = leader if at_leader and leader is not None else self.node(via)
        self.cluster.conf_change(proposer, ConfChange(kind, self.node(member)))

    @rule()
    @step
    def remove_leader(self) -> None:
        """The leader proposes its own removal."""
        leader = self.leader()
        if leader is not None:
            self.cluster.conf_change(leader, ConfChange(ConfChangeType.REMOVE, leader))

    @rule(member=nodes, rounds=st.integers(min_value=1, max_value=10))
    @step
    def add_and_settle(self, member: int, rounds: int) -> None:
        """Add a spare as a learner (or promote it) and let time pass: gets
        runs to larger configurations more often than random changes alone."""
        leader = self.leader()
        if leader is None:
            return
        node = self.node(member)
        conf = self.cluster.core(leader).conf_state()
        kind = (
            ConfChangeType.PROMOTE
            if node in conf.learners
            else ConfChangeType.ADD_LEARNER
            if node not in conf.voters
            else ConfChangeType.ADD_VOTER
        )
        self.cluster.conf_change(leader, ConfChange(kind, node))
        for _ in range(rounds):
            self.cluster.tick_all()
            self.cluster.stabilize(limit=20_000)

    @staticmethod
    def report_coverage(cluster: Cluster) -> None:
        RaftSimulation.report_coverage(cluster)
        conf = cluster.checker.committed_conf
        event(f"conf changes accepted: {_bucket(cluster.conf_changes_accepted)}")
        event(f"committed voters at the end: {len(conf.voters)}")
        event(f"committed learners at the end: {len(conf.learners)}")


MembershipSimulation.TestCase.settings = settings(
    max_examples=EXAMPLES,
    stateful_step_count=STEPS,
)
TestMembershipSimulation = MembershipSimulation.TestCase


# -- the checkers catch broken membership rules -------------------------------------------


class ManyPendingChanges(RaftCore):
    """Mutant: accepts a change while the previous one is still uncommitted."""

    def propose_conf_change(self, change: ConfChange) -> int:
        confs = self.log.confs
        confs.last_change_index = lambda: 0  # type: ignore[method-assign]
        try:
            return super().propose_conf_change(change)
        finally:
            del confs.last_change_index


class ChangesBeforeOwnTermCommit(RaftCore):
    """Mutant: a new leader may propose a change before it has committed an
    entry of its own term (the bug Ongaro found in single-server changes)."""

    def propose_conf_change(self, change: ConfChange) -> int:
        self._committed_in_current_term = lambda: True  # type: ignore[method-assign]
        try:
            return super().propose_conf_change(change)
        finally:
            del self._committed_in_current_term


def test_property_search_finds_two_pending_changes() -> None:
    class Mutated(MembershipSimulation):
        core_factory = ManyPendingChanges

    budget = settings(
        max_examples=300,
        stateful_step_count=STEPS,
        phases=[Phase.generate],
        report_multiple_bugs=False,
    )
    with pytest.raises(MembershipViolation):
        run_state_machine_as_test(Mutated, settings=budget)


def ongaro_scenario(core_factory: CoreFactory) -> Cluster:
    """Voters {1,2,3,4}.  Leader 1 (term 1) appends "add 5" and only 5 gets it.
    Leader 2 (term 2, votes of 2, 3, 4) appends its no-op, which reaches 3 only,
    and at once "remove 4", committed by 2 and 3 under {1,2,3}.  Then 1, whose
    log ends with "add 5" (term 1), restarts and campaigns with {1,...,5}: 4 (which never
    heard from 2's appends) and 5 vote for it, and the entries 2 committed are
    overwritten.  A leader that must commit its no-op first needs 4's copy of
    it, after which 4 refuses 1 its vote."""
    config = Config(id=1, election_tick=5, pre_vote=False, check_quorum=False)
    c = Cluster(4, seed=3, spares=1, config=config, core_factory=core_factory)
    c.campaign(1)
    c.stabilize()
    assert c.stable_leader() == 1
    for peer in (2, 3, 4):
        c.cut(1, peer)
    assert c.conf_change(1, ConfChange(ConfChangeType.ADD_VOTER, 5)) is not None
    c.stabilize()
    assert c.core(5).log.last_index() == 2
    c.partition({1}, {2, 3, 4, 5})
    c.campaign(2)
    c.deliver_where(lambda e: type(e.message).__name__ in ("RequestVote", "VoteResponse"))
    assert c.core(2).role is Role.LEADER
    c.drop_where(lambda e: e.to == 4)
    c.conf_change(2, ConfChange(ConfChangeType.REMOVE, 4))
    c.drop_where(lambda e: e.to == 4)
    c.deliver_where(lambda e: e.frm in (2, 3) and e.to in (2, 3))
    c.heal()
    c.partition({2, 3}, {1, 4, 5})
    c.crash(1)  # it still believed it led term 1
    c.restart(1)
    c.campaign(1)
    c.stabilize()
    c.campaign(1)
    c.stabilize()
    return c


def test_change_before_own_term_commit_is_caught() -> None:
    with pytest.raises(LeaderCompletenessViolation):
        ongaro_scenario(ChangesBeforeOwnTermCommit)


def test_ongaro_schedule_is_safe_with_the_real_rule() -> None:
    c = ongaro_scenario(RaftCore)
    # "remove 4" was refused (2 had not committed its no-op); 1 may then lead
    # term 3 and commit "add 5": nothing committed was lost.
    assert all(4 in c.core(i).voters for i in c.up())
    assert c.checker.committed_conf == ConfState(voters=(1, 2, 3, 4, 5))
