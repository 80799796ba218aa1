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

Sizing: ``KVSTORE_MEMBERSHIP_EXAMPLES`` (default 300) examples of up to
``KVSTORE_MEMBERSHIP_STEPS`` (default 80) rules.
"""

from __future__ import annotations

import os

from hypothesis import event, settings
from hypothesis import strategies as st
from hypothesis.stateful import initialize, rule

from raft.core import Config
from raft.membership import ConfChange, ConfChangeType
from raft.ready import Role
from raft.sim import Cluster, SafetyChecker
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
    )
    @step
    def setup(  # type: ignore[override]
        self,
        size: int,
        seed: int,
        pre_vote: bool,
        check_quorum: bool,
        small_messages: bool,
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
        )
        self._cluster = Cluster(
            size,
            seed,
            spares=TOTAL_NODES - size,
            config=config,
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
