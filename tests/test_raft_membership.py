"""Membership changes in the Raft core, one server at a time (Raft dissertation §4).

Unit tests step one core with hand-made messages; cluster tests run the
deterministic simulator (:class:`raft.sim.Cluster`, every safety checker on
after every step) with spare nodes that start outside the configuration, as a
member started with ``--initial-cluster-state existing`` does.
"""

from __future__ import annotations

import pytest
from raft_helpers import ack, append, become_leader, drive, make_core, only, storage_of

from raft.core import Config
from raft.errors import ProposalDropped
from raft.membership import ConfChange, ConfChangeType, complete_change, conf_change_entry
from raft.messages import AppendEntries, ConfState, Entry, RequestVote
from raft.ready import Role
from raft.sim import Cluster
from raft.sim.wal_disk import WALDiskFactory

ADD_VOTER, ADD_LEARNER, REMOVE, PROMOTE = (
    ConfChangeType.ADD_VOTER,
    ConfChangeType.ADD_LEARNER,
    ConfChangeType.REMOVE,
    ConfChangeType.PROMOTE,
)


def cluster(size: int = 3, spares: int = 2, seed: int = 1) -> Cluster:
    return Cluster(size, seed, spares=spares, config=Config(id=1, election_tick=5))


def settle(c: Cluster, rounds: int = 30) -> None:
    for _ in range(rounds):
        c.tick_all()
        c.stabilize()


def change(c: Cluster, kind: ConfChangeType, node: int) -> int:
    leader = c.await_leader()
    index = c.conf_change(leader, ConfChange(kind, node))
    assert index is not None, c.format_trace(20)
    settle(c, 3)
    return index


# -- the leader's rules ------------------------------------------------------------------


def test_new_leader_refuses_a_change_until_it_committed_an_entry_of_its_term() -> None:
    """Ongaro's single-server fix: a change is appended only after the leader
    committed an entry of its own term."""
    leader = make_core(1)
    become_leader(leader)
    with pytest.raises(ProposalDropped, match="committed an entry of its term"):
        leader.propose_conf_change(ConfChange(ADD_LEARNER, 4))
    leader.step(ack(leader, 2, 1))
    drive(leader)
    assert leader.propose_conf_change(ConfChange(ADD_LEARNER, 4)) == 2


def test_one_change_at_a_time() -> None:
    leader = make_core(1)
    become_leader(leader)
    leader.step(ack(leader, 2, 1))
    drive(leader)
    leader.propose_conf_change(ConfChange(ADD_LEARNER, 4))
    drive(leader)
    with pytest.raises(ProposalDropped, match="in progress"):
        leader.propose_conf_change(ConfChange(ADD_LEARNER, 5))
    leader.step(ack(leader, 2, 2))
    out = drive(leader)
    assert [e.index for e in out.applied] == [2]
    assert leader.propose_conf_change(ConfChange(ADD_LEARNER, 5)) == 3


@pytest.mark.parametrize(
    ("kind", "node", "reason"),
    [
        (ADD_VOTER, 2, "already a member"),
        (PROMOTE, 2, "not a learner"),
        (REMOVE, 9, "not a member"),
    ],
)
def test_invalid_changes_are_refused_and_change_nothing(
    kind: ConfChangeType, node: int, reason: str
) -> None:
    leader = make_core(1)
    become_leader(leader)
    leader.step(ack(leader, 2, 1))
    drive(leader)
    with pytest.raises(ProposalDropped, match=reason):
        leader.propose_conf_change(ConfChange(kind, node))
    assert leader.log.last_index() == 1
    assert leader.voters == {1, 2, 3}


def test_the_last_voter_cannot_be_removed() -> None:
    leader = make_core(1, peers=(1,))
    become_leader(leader)
    drive(leader)
    with pytest.raises(ProposalDropped, match="last voter"):
        leader.propose_conf_change(ConfChange(REMOVE, 1))


def test_a_follower_does_not_take_changes_and_names_the_leader() -> None:
    follower = make_core(2)
    follower.step(append(1, 2, 1, (0, 0), [Entry(1, 1)], commit=1))
    drive(follower)
    with pytest.raises(ProposalDropped) as refused:
        follower.propose_conf_change(ConfChange(ADD_LEARNER, 4))
    assert refused.value.leader == 1


# -- when a change takes effect ----------------------------------------------------------


def test_a_change_takes_effect_when_appended_and_reverts_when_truncated() -> None:
    follower = make_core(2)
    change = complete_change(ConfState(voters=(1, 2, 3)), ConfChange(REMOVE, 3))
    follower.step(append(1, 2, 1, (0, 0), [Entry(1, 1), conf_change_entry(1, 2, change)]))
    out = drive(follower)
    assert follower.voters == {1, 2}, "in effect on append, before any commit"
    assert out.applied == []
    # A leader of term 2 never had that entry: it overwrites index 2.
    follower.step(append(3, 2, 2, (1, 1), [Entry(2, 2)]))
    drive(follower)
    assert follower.voters == {1, 2, 3}


def test_each_entry_carries_the_whole_configuration() -> None:
    """A node that joined with no configuration learns all of it from the entry
    that added it (it never saw the bootstrap configuration)."""
    joiner = make_core(4, peers=())
    assert joiner.voters == frozenset()
    change = complete_change(ConfState(voters=(1, 2, 3)), ConfChange(ADD_LEARNER, 4))
    joiner.step(append(1, 4, 1, (0, 0), [Entry(1, 1), conf_change_entry(1, 2, change)]))
    drive(joiner)
    assert joiner.voters == {1, 2, 3}
    assert joiner.learners == {4}


def test_a_node_outside_the_configuration_never_campaigns() -> None:
    joiner = make_core(4, peers=())
    for _ in range(100):
        joiner.tick()
        out = drive(joiner)
        assert not only(out.messages, RequestVote)
    assert joiner.role is Role.FOLLOWER


def test_configuration_survives_a_restart_through_the_log() -> None:
    c = cluster()
    change(c, ADD_LEARNER, 4)
    c.crash(1)
    c.restart(1)
    assert c.core(1).learners == {4}
    assert c.core(1).voters == {1, 2, 3}


def test_snapshot_metadata_carries_the_configuration_of_its_index() -> None:
    c = cluster()
    change(c, ADD_LEARNER, 4)
    change(c, PROMOTE, 4)
    leader = c.await_leader()
    c.compact(leader)
    meta = c.nodes[leader].disk.storage.snapshot_meta()
    assert meta.conf == ConfState(voters=(1, 2, 3, 4))


# -- learners ----------------------------------------------------------------------------


def test_a_learner_replicates_but_does_not_count_for_commit() -> None:
    leader = make_core(1, peers=(1,))
    become_leader(leader)
    drive(leader)
    leader.propose_conf_change(ConfChange(ADD_LEARNER, 2))
    out = drive(leader)
    assert [e.index for e in out.applied] == [2], "committed by the lone voter alone"
    assert leader.learners == {2}
    leader.propose(b"x")
    out = drive(leader)
    assert [e.data for e in out.applied] == [b"x"]


def test_a_new_member_catches_up_from_an_empty_log_and_through_a_snapshot() -> None:
    c = cluster()
    leader = c.await_leader()
    for k in range(5):
        c.propose(leader, f"v{k}".encode())
    settle(c, 3)
    for node in c.up():
        c.compact(node)
    change(c, ADD_LEARNER, 4)
    settle(c)
    assert c.snapshots_installed >= 1
    assert b"v4" in c.nodes[4].applied_data
    change(c, PROMOTE, 4)
    assert c.core(4).voters == {1, 2, 3, 4}
    c.check_liveness()


def test_quorum_excludes_learners() -> None:
    """Voters {1, 2} and learners {3, 4, 5}: with voter 2 cut off, the learners
    cannot make up a quorum, so nothing commits."""
    c = cluster(size=2, spares=3)
    for node in (3, 4, 5):
        change(c, ADD_LEARNER, node)
    leader = c.await_leader()
    other = 2 if leader == 1 else 1
    c.isolate(other)
    before = c.core(leader).log.committed
    c.propose(leader, b"blocked")
    settle(c, 3)
    assert c.core(leader).log.committed == before


# -- removal -------------------------------------------------------------------------------


def test_removed_leader_steps_down_after_committing_its_removal() -> None:
    c = cluster(spares=0)
    leader = c.await_leader()
    c.conf_change(leader, ConfChange(REMOVE, leader))
    assert leader not in c.core(leader).voters
    settle(c)
    assert c.core(leader).role is Role.FOLLOWER
    new_leader = c.await_leader()
    assert new_leader != leader
    assert c.core(new_leader).voters == set(range(1, 4)) - {leader}
    # It never campaigns again, and the cluster works without it.
    terms = c.core(new_leader).term
    settle(c, 50)
    assert c.core(new_leader).term == terms
    c.check_liveness()


def test_removed_leader_hands_over_with_timeout_now() -> None:
    """Once its removal commits, the leader tells a caught-up voter to
    campaign at once: a new leader without waiting out an election timeout."""
    c = cluster(spares=0)
    leader = c.await_leader()
    c.conf_change(leader, ConfChange(REMOVE, leader))
    c.stabilize()  # no tick: only the hand-over can elect someone
    assert c.core(leader).role is Role.FOLLOWER
    assert "TimeoutNow" in c.format_trace()
    new_leaders = [i for i in (1, 2, 3) if i != leader and c.core(i).role is Role.LEADER]
    assert len(new_leaders) == 1


def test_removed_node_that_missed_its_removal_cannot_disrupt() -> None:
    c = cluster(spares=0)
    leader = c.await_leader()
    victim = next(i for i in (1, 2, 3) if i != leader)
    c.isolate(victim)
    change(c, REMOVE, victim)
    settle(c, 5)
    term = c.core(leader).term
    c.heal()
    settle(c, 60)  # the victim times out and campaigns again and again
    assert c.core(leader).role is Role.LEADER
    assert c.core(leader).term == term


def test_grow_from_one_to_five_and_shrink_to_three() -> None:
    c = cluster(size=1, spares=4)
    for node in (2, 3, 4, 5):
        change(c, ADD_LEARNER, node)
        settle(c, 5)
        change(c, PROMOTE, node)
        c.propose(c.await_leader(), f"after-{node}".encode())
    assert c.core(c.await_leader()).voters == {1, 2, 3, 4, 5}
    for node in (1, 2):
        change(c, REMOVE, node)
        settle(c, 10)
    leader = c.await_leader()
    assert c.core(leader).voters == {3, 4, 5}
    c.check_liveness()
    for node in (3, 4, 5):
        assert all(f"after-{k}".encode() in c.nodes[node].applied_data for k in (2, 3, 4, 5))


def test_removed_node_receives_its_removal_and_learns_it_committed() -> None:
    """The leader keeps replicating to a removed peer until the removal
    commits, then tells it the commit: the member can then shut itself down."""
    c = cluster(spares=0)
    leader = c.await_leader()
    victim = next(i for i in (1, 2, 3) if i != leader)
    index = change(c, REMOVE, victim)
    settle(c, 5)
    victim_core = c.core(victim)
    assert victim_core.log.committed >= index
    assert victim not in victim_core.voters
    assert index in {e.index for e in c.nodes[victim].state}


def test_configuration_survives_crashes_on_the_real_wal() -> None:
    """On the real WAL and snapshot files (simulated disk with fsync
    semantics): the configuration comes back from snapshot metadata plus the
    conf changes in the log, on every node, after every crash."""
    disks = WALDiskFactory(7)
    try:
        c = Cluster(3, 7, spares=2, config=Config(id=1, election_tick=5), disk_factory=disks)
        change(c, ADD_LEARNER, 4)
        settle(c, 5)
        change(c, PROMOTE, 4)
        for node in c.up():
            c.compact(node)  # the snapshots record {1, 2, 3, 4}
        change(c, ADD_LEARNER, 5)
        leader = c.await_leader()
        victim = next(i for i in (1, 2, 3) if i != leader)
        change(c, REMOVE, victim)
        settle(c, 5)
        for node in c.up():
            c.crash(node)
            c.restart(node)
        expected = ({1, 2, 3, 4} - {victim}, {5})
        for node in set(range(1, 6)) - {victim}:
            assert (c.core(node).voters, c.core(node).learners) == expected
        c.check_liveness()
    finally:
        disks.close()


def test_learners_count_for_neither_check_quorum_nor_read_index() -> None:
    """Voters {1, 2} and learner 3: with the other voter cut off, the learner's
    answers confirm no read, and the leader steps down (CheckQuorum) although
    the learner still answers it."""
    c = Cluster(2, 5, spares=1, config=Config(id=1, election_tick=5, check_quorum=True))
    change(c, ADD_LEARNER, 3)
    leader = c.await_leader()
    other = 2 if leader == 1 else 1
    c.cut(leader, other)
    c.cut(other, leader)
    assert c.read_index(leader, b"read")
    settle(c, 3)
    assert b"read" not in c.nodes[leader].read_results
    settle(c, 3 * 5)
    assert c.core(leader).role is not Role.LEADER


def test_a_removed_id_added_back_is_heard_again() -> None:
    """The core does not forbid re-adding an id (the member layer never does
    it); if it happens, the node's answers count again at once: voters {1}
    re-adding 2 need 2's acknowledgement to commit the change itself."""
    c = Cluster(2, 9, config=Config(id=1, election_tick=5))
    leader = c.await_leader()
    other = 2 if leader == 1 else 1
    change(c, REMOVE, other)
    settle(c, 5)
    change(c, ADD_VOTER, other)
    settle(c, 5)
    assert c.core(leader).voters == {1, 2}
    assert c.core(leader).log.committed == c.core(leader).log.last_index()
    c.check_liveness()


def test_a_lone_voter_leads_only_once_its_term_is_durable() -> None:
    """A single voter elects itself without asking anyone: it becomes leader
    (and sends its learners anything) only once its vote for the new term is
    durable, or a crash could let it lead the same term twice with different
    entries at the same indexes."""
    leader = make_core(1, peers=(1,))
    become_leader(leader)
    drive(leader)
    leader.propose_conf_change(ConfChange(ADD_LEARNER, 2))
    drive(leader)
    restarted = make_core(1, peers=(1,), storage=storage_of(leader))
    restarted.campaign()
    rd = restarted.ready()
    assert rd.hard_state is not None and rd.hard_state.term == leader.term + 1
    assert restarted.role is Role.CANDIDATE
    assert not only(rd.messages + rd.persisted_messages, AppendEntries)
    storage_of(restarted).persist(rd)
    restarted.advance(rd)
    assert restarted.role is Role.LEADER
    out = drive(restarted)
    assert only(out.messages, AppendEntries, to=2)
