"""The leader's commit broadcast, eager (etcd's) and deferred.

Deferred (``eager_commit_broadcast=False``, what :class:`raft.node.RaftNode`
uses by default): a commit index moving on sends no empty AppendEntries; it
rides on the next AppendEntries or heartbeat, or goes out when the driver calls
``broadcast_commit()``, and ``commit_broadcast_due()`` says whether a peer
still needs it.  The simulator checks safety with both modes; these pin the
behaviour down.
"""

from __future__ import annotations

from raft.core import RaftCore
from raft.membership import ConfChange, ConfChangeType
from raft.messages import AppendEntries, AppendResponse, Heartbeat
from tests.raft_helpers import ack, become_leader, drive, make_core, only


def _leader_with_entry(eager: bool) -> tuple[RaftCore, int]:
    """Leader 1 of (1, 2, 3) with its no-op committed and one more entry
    appended and acknowledged by node 2 (so committed), not yet by node 3."""
    leader = make_core(1, eager_commit_broadcast=eager)
    become_leader(leader)
    noop = leader.log.last_index()
    leader.step(ack(leader, 2, noop))
    leader.step(ack(leader, 3, noop))
    drive(leader)
    index = leader.propose(b"x")
    assert index is not None
    drive(leader)
    leader.step(ack(leader, 2, index))
    return leader, index


def test_eager_broadcast_sends_the_new_commit_index_at_once() -> None:
    leader, index = _leader_with_entry(eager=True)
    out = drive(leader)
    assert leader.log.committed == index
    empty = [m for m in only(out.messages, AppendEntries) if not m.entries]
    assert {m.to for m in empty} == {2, 3}
    assert all(m.commit == index for m in empty)
    assert not leader.commit_broadcast_due()


def test_deferred_broadcast_waits_for_the_driver() -> None:
    leader, index = _leader_with_entry(eager=False)
    out = drive(leader)
    assert leader.log.committed == index
    assert only(out.messages, AppendEntries) == []
    # Node 2 holds the entry but has not heard it is committed; node 3 does
    # not hold it yet, so there is nothing it could commit.
    assert leader.commit_broadcast_due()

    leader.broadcast_commit()
    out = drive(leader)
    sent = only(out.messages, AppendEntries)
    assert [(m.to, m.commit, m.entries) for m in sent] == [(2, index, [])]
    assert not leader.commit_broadcast_due()


def test_deferred_commit_rides_on_the_next_append() -> None:
    leader, index = _leader_with_entry(eager=False)
    drive(leader)
    assert leader.commit_broadcast_due()
    leader.propose(b"y")
    out = drive(leader)
    to_2 = only(out.messages, AppendEntries, to=2)
    assert len(to_2) == 1 and to_2[0].commit == index and to_2[0].entries
    assert not leader.commit_broadcast_due()


def test_deferred_commit_rides_on_heartbeats() -> None:
    leader, index = _leader_with_entry(eager=False)
    drive(leader)
    assert leader.commit_broadcast_due()
    leader.tick()
    out = drive(leader)
    beat = only(out.messages, Heartbeat, to=2)
    assert beat and beat[0].commit == index
    assert not leader.commit_broadcast_due()


def test_a_refused_append_is_retried_with_the_commit_index() -> None:
    """What a follower was told alongside entries it refused does not count;
    the retry tells it again."""
    leader, index = _leader_with_entry(eager=False)
    drive(leader)
    leader.propose(b"y")
    drive(leader)  # the append carrying the commit index goes to 2
    assert not leader.commit_broadcast_due()
    leader.step(
        AppendResponse(
            frm=2, to=1, term=leader.term, index=index + 1, reject=True, hint_index=index
        )
    )
    retry = only(drive(leader).messages, AppendEntries, to=2)
    assert len(retry) == 1 and retry[0].commit == index
    leader.step(ack(leader, 2, index + 1))
    drive(leader)
    assert leader.log.committed == index + 1
    assert leader.commit_broadcast_due()  # 2 holds index + 1, not yet told it is committed
    leader.broadcast_commit()
    told = only(drive(leader).messages, AppendEntries, to=2)
    assert [(m.commit, m.entries) for m in told] == [(index + 1, [])]
    assert not leader.commit_broadcast_due()


def test_a_committed_membership_change_is_told_at_once() -> None:
    """Members learn promptly that they were added, promoted or removed."""
    leader, index = _leader_with_entry(eager=False)
    leader.step(ack(leader, 3, index))
    leader.broadcast_commit()
    drive(leader)
    assert not leader.commit_broadcast_due()
    change = leader.propose_conf_change(ConfChange(ConfChangeType.ADD_LEARNER, 4))
    drive(leader)
    leader.step(ack(leader, 2, change))
    out = drive(leader)
    assert leader.log.committed == change
    told = [m for m in only(out.messages, AppendEntries) if m.commit == change]
    assert {m.to for m in told} >= {2, 3}
    assert not leader.commit_broadcast_due()


def test_followers_are_never_due_a_broadcast() -> None:
    follower = make_core(2, eager_commit_broadcast=False)
    assert not follower.commit_broadcast_due()
    follower.broadcast_commit()  # a no-op off the leader
    assert drive(follower).messages == []
