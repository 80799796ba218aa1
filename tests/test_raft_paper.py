"""One test per claim of the Raft paper's section 5, plus our protocol extensions.

Section numbers refer to "In Search of an Understandable Consensus Algorithm
(Extended Version)", Ongaro & Ousterhout.  The paper claims are tested on plain
Raft (``pre_vote=False, check_quorum=False``: the default of
:func:`raft_helpers.make_core`); the extension tests switch features on.

Two styles are used: unit tests step a single core with hand-made messages and
look at exactly what comes out of its Ready; network tests wire several cores
through :class:`raft_helpers.Network` and look at the outcome.
"""

from __future__ import annotations

import math
import random

import pytest
from raft_helpers import (
    Network,
    ack,
    append,
    become_leader,
    drive,
    entries,
    log_entries,
    log_terms,
    make_core,
    make_storage,
    only,
    payloads,
    storage_of,
)

from raft.core import RaftCore
from raft.errors import ProposalDropped, ReadIndexDropped
from raft.messages import (
    NONE,
    AppendEntries,
    AppendResponse,
    Entry,
    EntryType,
    Heartbeat,
    HeartbeatResponse,
    Propose,
    ReadIndexRequest,
    ReadIndexResponse,
    RequestVote,
    TimeoutNow,
    VoteResponse,
)
from raft.ready import ReadState, Role

ET = 10  # election_tick used throughout

# ======================================================================================
# 5.1 Raft basics
# ======================================================================================


def test_servers_start_as_followers() -> None:
    """§5.1: "When servers start up, they begin as followers."  A fresh node has
    no term, vote or leader and says nothing until time passes."""
    core = make_core(1)
    assert core.role is Role.FOLLOWER
    assert (core.term, core.vote, core.leader) == (0, NONE, NONE)
    assert drive(core).messages == []


def test_restarted_server_is_a_follower_with_its_persisted_term_and_vote() -> None:
    """§5.1 (Figure 2, persistent state): currentTerm, votedFor and log survive a
    restart; the node comes back as a follower."""
    storage = make_storage(terms=[1, 1, 2], term=3, vote=2)
    core = make_core(1, storage=storage)
    assert core.role is Role.FOLLOWER
    assert (core.term, core.vote, core.leader) == (3, 2, NONE)
    assert log_terms(core) == [1, 1, 2]


def _as_follower() -> RaftCore:
    return make_core(1, storage=make_storage(term=1))


def _as_candidate() -> RaftCore:
    core = make_core(1)
    core.campaign()
    drive(core)
    assert core.role is Role.CANDIDATE and core.term == 1
    return core


def _as_leader() -> RaftCore:
    core = make_core(1)
    become_leader(core)
    assert core.term == 1
    return core


ROLES = {"follower": _as_follower, "candidate": _as_candidate, "leader": _as_leader}


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("kind", ["append", "heartbeat", "vote"])
def test_a_higher_term_in_any_message_updates_the_term_and_makes_a_follower(
    role: str, kind: str
) -> None:
    """§5.1: "If a server's current term is smaller than the other's, it updates
    its current term to the larger value.  If a candidate or leader discovers
    that its term is out of date, it immediately reverts to follower state."
    A message from a leader also names the new leader."""
    core = ROLES[role]()
    if kind == "append":
        core.step(append(2, 1, term=5, prev=(0, 0)))
    elif kind == "heartbeat":
        core.step(Heartbeat(frm=2, to=1, term=5, commit=0))
    else:
        core.step(RequestVote(frm=2, to=1, term=5, last_index=9, last_term=4))
    drive(core)
    assert core.term == 5
    assert core.role is Role.FOLLOWER
    assert core.leader == (NONE if kind == "vote" else 2)


@pytest.mark.parametrize("kind", ["append", "heartbeat"])
def test_a_request_with_a_stale_term_is_rejected_and_the_sender_learns_the_term(
    kind: str,
) -> None:
    """§5.1: "If a server receives a request with a stale term number, it rejects
    the request" (and its reply carries currentTerm, Figure 2)."""
    storage = make_storage(terms=[1, 2], term=3)
    core = make_core(1, storage=storage)
    if kind == "append":
        core.step(append(2, 1, term=2, prev=(0, 0), ents=entries([2, 2, 2]), commit=3))
    else:
        core.step(Heartbeat(frm=2, to=1, term=2, commit=2))
    out = drive(core)
    assert log_terms(core) == [1, 2]
    assert core.log.committed == 0
    assert (core.term, core.leader, core.role) == (3, NONE, Role.FOLLOWER)
    replies = [m for m in out.messages if m.to == 2]
    assert replies and all(m.term == 3 for m in replies)
    assert not any(isinstance(m, AppendResponse) and not m.reject for m in replies)


def test_a_stale_leader_steps_down_when_a_reply_carries_a_higher_term() -> None:
    """§5.1: a leader that learns of a higher term from a response reverts to
    follower and adopts the term."""
    core = make_core(1)
    become_leader(core)
    core.step(AppendResponse(frm=2, to=1, term=4, index=0, reject=True))
    drive(core)
    assert (core.role, core.term, core.leader) == (Role.FOLLOWER, 4, NONE)


def test_a_vote_request_with_a_stale_term_is_not_granted() -> None:
    """§5.1: a RequestVote from an earlier term is never granted and changes
    nothing at the receiver; the stale candidate learns the current term (our
    core, like etcd, does not answer it: the leader's next heartbeat tells it)."""
    core = make_core(1, storage=make_storage(term=3))
    core.step(RequestVote(frm=2, to=1, term=2, last_index=5, last_term=2))
    out = drive(core)
    assert (core.term, core.vote) == (3, NONE)
    assert not [m for m in only(out.messages, VoteResponse) if not m.reject]

    net = Network()
    net.campaign(1)
    net.isolate(3)
    net.campaign(2)
    net.campaign(1)  # the cluster is in term 3, node 3 still in term 1
    net.recover()
    net.campaign(3)  # asks for votes in term 2
    assert net.nodes[3].term == 2 and net.leaders() == [1]
    net.tick()
    assert [(c.term, c.leader) for c in net.nodes.values()] == [(3, 1)] * 3


# ======================================================================================
# 5.2 Leader election
# ======================================================================================


def test_leader_broadcasts_heartbeats_every_heartbeat_tick() -> None:
    """§5.2: "Leaders send periodic heartbeats (AppendEntries RPCs that carry no
    log entries) to all followers in order to maintain their authority."
    Here: one Heartbeat to every follower every ``heartbeat_tick`` ticks."""
    core = make_core(1, heartbeat_tick=3)
    become_leader(core)
    drive(core)
    for tick in range(1, 10):
        core.tick()
        heartbeats = only(drive(core).messages, Heartbeat)
        if tick % 3:
            assert heartbeats == [], tick
        else:
            assert sorted(m.to for m in heartbeats) == [2, 3], tick
            assert all(m.term == core.term and m.frm == 1 for m in heartbeats)


def test_follower_remains_follower_while_it_hears_from_the_leader() -> None:
    """§5.2: "A server remains in follower state as long as it receives valid
    RPCs from a leader or candidate" -- and campaigns once they stop."""
    core = make_core(1, storage=make_storage(term=1))
    for _ in range(5 * ET):
        core.tick()
        core.step(Heartbeat(frm=2, to=1, term=1, commit=0))
        drive(core)
        assert (core.role, core.term, core.leader) == (Role.FOLLOWER, 1, 2)
    for _ in range(2 * ET):
        core.tick()
    assert core.role is Role.CANDIDATE and core.term == 2


def test_follower_starts_an_election_when_the_election_timeout_elapses() -> None:
    """§5.2: on election timeout a follower "increments its current term and
    transitions to candidate state.  It then votes for itself and issues
    RequestVote RPCs in parallel to each of the other servers"; the request
    carries its last log index and term (§5.4.1)."""
    core = make_core(1, storage=make_storage(terms=[1, 1, 2], term=2))
    for _ in range(2 * ET):
        core.tick()
        if core.role is not Role.FOLLOWER:
            break
    out = drive(core)
    assert (core.role, core.term, core.vote) == (Role.CANDIDATE, 3, 1)
    requests = only(out.messages, RequestVote)
    assert sorted(m.to for m in requests) == [2, 3]
    for m in requests:
        assert (m.frm, m.term, m.last_index, m.last_term, m.pre_vote) == (1, 3, 3, 2, False)


GRANT, DENY = True, False


@pytest.mark.parametrize(
    ("peers", "votes", "outcome"),
    [
        ((1,), {}, "won"),
        ((1, 2, 3), {2: GRANT, 3: GRANT}, "won"),
        ((1, 2, 3), {2: GRANT}, "won"),
        ((1, 2, 3, 4, 5), {2: GRANT, 3: GRANT, 4: GRANT, 5: GRANT}, "won"),
        ((1, 2, 3, 4, 5), {2: GRANT, 3: GRANT}, "won"),
        ((1, 2, 3, 4, 5), {2: GRANT}, "pending"),
        ((1, 2, 3, 4, 5), {2: DENY, 3: DENY}, "pending"),
        ((1, 2, 3, 4, 5), {2: GRANT, 3: DENY}, "pending"),
        ((1, 2, 3), {2: DENY, 3: DENY}, "lost"),
        ((1, 2, 3, 4, 5), {2: DENY, 3: DENY, 4: DENY, 5: GRANT}, "lost"),
    ],
)
def test_candidate_wins_with_votes_from_a_majority(
    peers: tuple[int, ...], votes: dict[int, bool], outcome: str
) -> None:
    """§5.2: "A candidate wins an election if it receives votes from a majority
    of the servers in the full cluster for the same term."  Until then it stays
    candidate; with a majority against it, it cannot win."""
    core = make_core(1, peers=peers)
    core.campaign()
    drive(core)
    for voter, granted in votes.items():
        core.step(VoteResponse(frm=voter, to=1, term=1, reject=not granted))
    drive(core)
    assert core.term == 1
    if outcome == "won":
        assert core.role is Role.LEADER and core.leader == 1
    elif outcome == "pending":
        assert core.role is Role.CANDIDATE
    else:
        assert core.role is not Role.LEADER


@pytest.mark.parametrize("size", [3, 5])
def test_an_election_completes_in_one_round_of_rpcs(size: int) -> None:
    """§5.2: with a healthy network the first candidate wins in a single round
    (one RequestVote per peer, no retries) and every server learns the leader."""
    net = Network(tuple(range(1, size + 1)))
    net.campaign(1)
    assert net.leaders() == [1]
    votes = only(net.delivered, RequestVote)
    assert sorted(m.to for m in votes) == list(range(2, size + 1))
    for core in net.nodes.values():
        assert (core.term, core.leader) == (1, 1)


def test_follower_votes_at_most_once_per_term_first_come_first_served() -> None:
    """§5.2: "Each server will vote for at most one candidate in a given term, on
    a first-come-first-served basis."  Repeating the request of the candidate it
    voted for is answered the same way (a lost reply may be retried)."""
    core = make_core(1)
    answers = []
    for candidate in (2, 3, 2):
        core.step(RequestVote(frm=candidate, to=1, term=1, last_index=0, last_term=0))
        (reply,) = only(drive(core).messages, VoteResponse)
        assert reply.to == candidate
        answers.append(not reply.reject)
    assert answers == [True, False, True]
    assert core.vote == 2
    # the vote is persisted, so it survives a crash and restart:
    restarted = make_core(1, storage=storage_of(core))
    restarted.step(RequestVote(frm=3, to=1, term=1, last_index=0, last_term=0))
    (reply,) = only(drive(restarted).messages, VoteResponse)
    assert reply.reject and restarted.vote == 2


@pytest.mark.parametrize("kind", ["append", "heartbeat"])
@pytest.mark.parametrize("term_delta", [0, 1])
def test_candidate_falls_back_to_follower_when_a_legitimate_leader_appears(
    kind: str, term_delta: int
) -> None:
    """§5.2: "If the leader's term ... is at least as large as the candidate's
    current term, then the candidate recognizes the leader as legitimate and
    returns to follower state.\""""
    core = _as_candidate()
    term = core.term + term_delta
    if kind == "append":
        core.step(append(2, 1, term=term, prev=(0, 0)))
    else:
        core.step(Heartbeat(frm=2, to=1, term=term, commit=0))
    drive(core)
    assert (core.role, core.term, core.leader) == (Role.FOLLOWER, term, 2)


def test_candidate_ignores_a_leader_of_an_older_term() -> None:
    """§5.2: "If the term in the RPC is smaller than the candidate's current term,
    then the candidate rejects the RPC and continues in candidate state.\""""
    core = make_core(1, storage=make_storage(term=4))
    core.campaign()
    drive(core)
    core.step(append(2, 1, term=4, prev=(0, 0)))
    drive(core)
    assert (core.role, core.term, core.leader) == (Role.CANDIDATE, 5, NONE)


def test_candidate_starts_a_new_election_after_a_split_vote() -> None:
    """§5.2: with no winner, "each candidate will time out and start a new
    election by incrementing its term and initiating another round of
    RequestVote RPCs"."""
    core = make_core(1, peers=(1, 2, 3, 4))
    core.campaign()
    drive(core)
    core.step(VoteResponse(frm=2, to=1, term=1, reject=False))  # 2 of 4: a split
    core.step(VoteResponse(frm=3, to=1, term=1, reject=True))
    drive(core)
    assert core.role is Role.CANDIDATE
    for _ in range(2 * ET):
        core.tick()
        if core.term == 2:
            break
    out = drive(core)
    assert (core.role, core.term, core.vote) == (Role.CANDIDATE, 2, 1)
    assert sorted(m.to for m in only(out.messages, RequestVote, term=2)) == [2, 3, 4]


def test_split_vote_is_resolved_by_randomized_timeouts() -> None:
    """§5.2: two candidates split the vote of a 4-node cluster in term 1;
    randomized timeouts then let exactly one of them win a later term."""
    net = Network((1, 2, 3, 4))
    net.cut(1, 4)
    net.cut(2, 3)
    net.nodes[1].campaign()
    net.nodes[2].campaign()
    net.stabilize()
    assert net.leaders() == []
    assert [net.nodes[i].vote for i in (1, 2, 3, 4)] == [1, 2, 1, 2]
    net.recover()
    net.tick_until(lambda: len(net.leaders()) == 1, max_ticks=10 * ET)
    (leader,) = net.leaders()
    term = net.nodes[leader].term
    assert term >= 2
    assert all((c.term, c.leader) == (term, leader) for c in net.nodes.values())


def _ticks_until_campaign(core: RaftCore, limit: int = 4 * ET) -> int:
    start = core.term
    for n in range(1, limit + 1):
        core.tick()
        if core.term != start:
            drive(core)
            return n
    raise AssertionError("never campaigned")


def test_election_timeouts_are_randomized_in_et_to_2et() -> None:
    """§5.2: "election timeouts are chosen randomly from a fixed interval";
    ours is ``[election_tick, 2 * election_tick)``, redrawn at every election."""
    core = make_core(1, seed=7)
    seen = [_ticks_until_campaign(core) for _ in range(300)]
    assert set(seen) == set(range(ET, 2 * ET))


def test_election_timeouts_of_different_nodes_rarely_coincide() -> None:
    """§5.2: randomization "spread[s] out the servers so that in most cases only
    a single server will time out".  With 5 nodes and 10 possible timeouts the
    earliest timeout is shared in about 23% of fresh starts."""
    master = random.Random(2024)
    rounds, conflicts = 200, 0
    for _ in range(rounds):
        cores = [
            make_core(i, peers=(1, 2, 3, 4, 5), seed=master.getrandbits(32)) for i in range(1, 6)
        ]
        timeouts = [_ticks_until_campaign(c) for c in cores]
        conflicts += timeouts.count(min(timeouts)) > 1
    assert conflicts / rounds <= 0.3


# ======================================================================================
# 5.3 Log replication
# ======================================================================================


def test_new_leader_appends_a_noop_entry_of_its_term_and_replicates_it() -> None:
    """§5.3 / §8: a leader starts its term by appending a blank no-op entry, sent
    to every follower right away."""
    core = make_core(1, storage=make_storage(terms=[1, 1], term=1))
    out = become_leader(core)
    noop = Entry(term=2, index=3, data=b"", type=EntryType.NORMAL)
    assert log_entries(core)[-1] == noop
    appends = only(out.messages, AppendEntries)
    assert sorted(m.to for m in appends) == [2, 3]
    for m in appends:
        assert (m.term, m.prev_index, m.prev_term, m.entries) == (2, 2, 1, [noop])


@pytest.mark.parametrize(
    ("peers", "acks", "committed"),
    [
        ((1,), (), True),
        ((1, 2, 3), (), False),
        ((1, 2, 3), (2,), True),
        ((1, 2, 3), (2, 3), True),
        ((1, 2, 3, 4, 5), (), False),
        ((1, 2, 3, 4, 5), (2,), False),
        ((1, 2, 3, 4, 5), (2, 3), True),
        ((1, 2, 3, 4, 5), (2, 3, 4, 5), True),
    ],
)
def test_leader_commits_an_entry_once_a_majority_stored_it_and_applies_it(
    peers: tuple[int, ...], acks: tuple[int, ...], committed: bool
) -> None:
    """§5.3: "Once the entry has been safely replicated [on a majority] ... the
    leader applies the entry to its state machine."  The leader counts itself
    once its own log is durable."""
    core = make_core(1, peers=peers)
    become_leader(core)
    index = core.propose(b"x")
    assert index == 2
    out = drive(core)
    assert b"x" not in payloads(out.applied) or peers == (1,)
    for peer in acks:
        core.step(ack(core, peer, index))
    out2 = drive(core)
    applied = payloads(out.applied + out2.applied)
    assert (core.log.committed == index) is committed
    assert (applied == [b"x"]) is committed
    if not committed:
        assert core.log.committed < index and applied == []


def test_committing_an_entry_commits_all_preceding_entries() -> None:
    """§5.3: committing an entry "also commits all preceding entries in the
    leader's log, including entries created by previous leaders"."""
    core = make_core(1, storage=make_storage(terms=[1, 1, 2], term=2))
    become_leader(core)
    core.propose(b"x")
    drive(core)
    core.step(ack(core, 2, 5))
    out = drive(core)
    assert core.log.committed == 5
    assert [e.index for e in out.applied] == [1, 2, 3, 4, 5]


def test_followers_learn_the_commit_index_from_the_leader_and_apply() -> None:
    """§5.3: "The leader keeps track of the highest index it knows to be
    committed, and it includes that index in future AppendEntries RPCs
    (including heartbeats) ... Once a follower learns that a log entry is
    committed, it applies the entry."  A follower never commits past what it
    knows matches the leader."""
    core = make_core(1, storage=make_storage(term=1))
    ents = [Entry(term=1, index=i, data=b"e%d" % i) for i in (1, 2, 3)]
    core.step(append(2, 1, term=1, prev=(0, 0), ents=ents, commit=1))
    assert payloads(drive(core).applied) == [b"e1"]
    core.step(append(2, 1, term=1, prev=(3, 1), ents=[], commit=2))
    assert payloads(drive(core).applied) == [b"e2"]
    core.step(Heartbeat(frm=2, to=1, term=1, commit=3))
    assert payloads(drive(core).applied) == [b"e3"]
    assert core.log.committed == 3
    # commit beyond the entries it carries: only what is known to match commits
    other = make_core(1, storage=make_storage(terms=[1, 1, 1], term=1))
    other.step(append(2, 1, term=1, prev=(0, 0), ents=[Entry(term=1, index=1)], commit=3))
    drive(other)
    assert other.log.committed == 1


def test_entries_are_replicated_applied_in_order_on_every_server() -> None:
    """§5.3 end to end: a leader appends client commands, replicates them, and
    every server applies the same commands in the same order."""
    net = Network()
    net.campaign(1)
    for data in (b"a", b"b", b"c"):
        net.propose(1, data)
    net.tick()  # a heartbeat carries the final commit index
    for id in net.peers:
        assert payloads(net.applied[id]) == [b"a", b"b", b"c"], id
        assert log_entries(net.nodes[id]) == log_entries(net.nodes[1])


def test_leader_retries_appends_to_a_follower_that_missed_them() -> None:
    """§5.3: "If followers crash or run slowly, or if network packets are lost,
    the leader retries AppendEntries RPCs indefinitely ... until all followers
    eventually store all log entries."""
    net = Network()
    net.campaign(1)
    net.drop(1, 3)
    net.propose(1, b"x")
    net.tick(3)
    assert payloads(net.applied[1]) == payloads(net.applied[2]) == [b"x"]
    assert payloads(net.applied[3]) == []
    net.recover()
    net.tick(3)
    assert payloads(net.applied[3]) == [b"x"]
    assert log_entries(net.nodes[3]) == log_entries(net.nodes[1])


# Follower log for the consistency-check cases: index 1 term 1, index 2 term 2.
@pytest.mark.parametrize(
    ("prev", "accepted", "hint"),
    [
        ((0, 0), True, None),
        ((1, 1), True, None),
        ((2, 2), True, None),
        ((2, 1), False, (1, 1)),  # term mismatch at 2: back up to term <= 1
        ((3, 3), False, (2, 2)),  # follower has no index 3: its last entry
        ((1, 2), False, (1, 1)),  # mismatch at 1, but term 1 <= 2 may match there
        ((2, 3), False, (2, 2)),  # mismatch at 2: its own entry 2 may still match
    ],
)
def test_follower_rejects_an_append_whose_previous_entry_does_not_match(
    prev: tuple[int, int], accepted: bool, hint: tuple[int, int] | None
) -> None:
    """§5.3: "If the follower does not find an entry in its log with the same
    index and term [as prevLogIndex/prevLogTerm], then it refuses the new
    entries."  The rejection names the last index whose term is not newer than
    the leader's prev term: the hint to skip a term per round trip."""
    core = make_core(1, storage=make_storage(terms=[1, 2], term=2))
    new = Entry(term=3, index=prev[0] + 1, data=b"n")
    core.step(append(2, 1, term=3, prev=prev, ents=[new]))
    (reply,) = only(drive(core).messages, AppendResponse)
    assert reply.reject is not accepted
    if accepted:
        assert reply.index == prev[0] + 1
        assert log_entries(core)[prev[0]] == new
    else:
        assert reply.index == prev[0]
        assert (reply.hint_index, reply.hint_term) == hint
        assert log_terms(core) == [1, 2]


@pytest.mark.parametrize(
    ("prev", "ents", "expected"),
    [
        # appends after a matching entry
        ((2, 2), [(3, 3)], [1, 2, 3]),
        ((1, 1), [(2, 3), (3, 4)], [1, 3, 4]),  # conflict at 2: suffix replaced
        ((0, 0), [(1, 3)], [3]),  # conflict at 1: everything replaced
        ((0, 0), [(1, 1)], [1, 2]),  # already present: nothing truncated
        ((0, 0), [(1, 1), (2, 2)], [1, 2]),
    ],
)
def test_follower_deletes_a_conflicting_suffix_and_appends_new_entries(
    prev: tuple[int, int], ents: list[tuple[int, int]], expected: list[int]
) -> None:
    """§5.3: "If an existing entry conflicts with a new one (same index but
    different terms), delete the existing entry and all that follow it" and
    "Append any new entries not already in the log" (Figure 2) -- a stale or
    duplicate append never truncates entries that match."""
    storage = make_storage(terms=[1, 2], term=2)
    core = make_core(1, storage=storage)
    new = [Entry(term=t, index=i) for i, t in ents]
    core.step(append(2, 1, term=4, prev=prev, ents=new))
    (reply,) = only(drive(core).messages, AppendResponse)
    assert not reply.reject and reply.index == prev[0] + len(ents)
    assert log_terms(core) == expected
    assert [e.term for e in storage.entries(1, storage.last_index() + 1)] == expected
    # retrying the same append (a lost reply) is harmless
    core.step(append(2, 1, term=4, prev=prev, ents=new))
    (again,) = only(drive(core).messages, AppendResponse)
    assert again == reply and log_terms(core) == expected


def test_follower_deletes_a_conflicting_suffix_it_has_not_persisted_yet() -> None:
    """§5.3: the conflicting suffix is deleted even while it is still in memory
    (received, not yet written): what gets persisted is the leader's version."""
    storage = make_storage(term=1)
    core = make_core(1, storage=storage)
    core.step(append(2, 1, term=1, prev=(0, 0), ents=entries([1, 1, 1])))
    core.step(append(3, 1, term=2, prev=(1, 1), ents=entries([2], start=2)))
    out = drive(core)
    assert log_terms(core) == [1, 2]
    assert [e.term for e in storage.entries(1, storage.last_index() + 1)] == [1, 2]
    assert [(m.to, m.index) for m in only(out.messages, AppendResponse)] == [(2, 3), (3, 2)]


def _backing_up(leader_terms: list[int], follower_terms: list[int]) -> tuple[Network, int]:
    term = max(leader_terms[-1], follower_terms[-1])
    net = Network(logs={1: leader_terms, 2: follower_terms}, terms={1: term, 2: term, 3: 0})
    net.isolate(3)
    net.campaign(1)
    assert net.leaders() == [1]
    rejections = len(only(net.delivered, AppendResponse, frm=2, reject=True))
    return net, rejections


def test_leader_backs_up_a_whole_term_per_round_trip_using_the_conflict_hint() -> None:
    """§5.3: "the follower can include the term of the conflicting entry and the
    first index it stores for that term.  With this information, the leader can
    decrement nextIndex to bypass all of the conflicting entries in that term;
    one AppendEntries RPC will be required for each term with conflicting
    entries, rather than one RPC per entry."  Here the follower diverges in two
    terms (4 against 3, then 4 against 5): two rejections, where backing up one
    entry at a time would take six."""
    leader = [1, 2, 2, 2, 3, 3, 3, 5, 5, 5]
    follower = [1, 2, 2, 2, 4, 4, 4, 4, 4, 4, 4, 4]
    net, rejections = _backing_up(leader, follower)
    assert rejections == 2
    assert log_terms(net.nodes[2]) == log_terms(net.nodes[1]) == [*leader, 6]


def test_conflict_hint_skips_a_long_divergent_term_in_one_round_trip() -> None:
    """§5.3: a follower with 50 entries of a term the leader never saw costs one
    rejection, not fifty."""
    net, rejections = _backing_up([1, 1, 3], [1, 1] + [2] * 50)
    assert rejections == 1
    assert log_terms(net.nodes[2]) == [1, 1, 3, 4]


FIGURE_7_LEADER = [1, 1, 1, 4, 4, 5, 5, 6, 6, 6]
FIGURE_7_FOLLOWERS = {
    "a": [1, 1, 1, 4, 4, 5, 5, 6, 6],
    "b": [1, 1, 1, 4],
    "c": [1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 6],
    "d": [1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 7, 7],
    "e": [1, 1, 1, 4, 4, 4, 4],
    "f": [1, 1, 1, 2, 2, 2, 3, 3, 3, 3, 3],
}


@pytest.mark.parametrize("case", FIGURE_7_FOLLOWERS)
def test_leader_brings_every_figure_7_follower_log_in_line_with_its_own(case: str) -> None:
    """§5.3, Figure 7: whatever a follower holds (missing entries, extra
    uncommitted entries, or both), "the leader handles inconsistencies by
    forcing the followers' logs to duplicate its own" -- and (Leader
    Append-Only) never deletes or overwrites anything in its own log."""
    follower = FIGURE_7_FOLLOWERS[case]
    net = Network(
        logs={1: FIGURE_7_LEADER, 2: follower},
        terms={1: 8, 2: max(follower[-1], 7), 3: 0},
    )
    net.campaign(1)  # node 3 (empty log) gives 1 its majority in term 9
    assert net.leaders() == [1] and net.nodes[1].term == 9
    net.tick()
    assert log_terms(net.nodes[1]) == [*FIGURE_7_LEADER, 9]
    assert log_entries(net.nodes[2]) == log_entries(net.nodes[1])
    assert net.nodes[2].log.committed == 11


def test_leader_never_overwrites_its_own_log() -> None:
    """§5.3 (Leader Append-Only): "a leader never overwrites or deletes entries in
    its own log" -- not for a stale leader's conflicting AppendEntries, nor for
    rejections carrying odd hints."""
    core = make_core(1, storage=make_storage(terms=[1, 1], term=2))
    become_leader(core)
    core.propose(b"mine")
    drive(core)
    before = log_entries(core)
    core.step(append(2, 1, term=2, prev=(0, 0), ents=entries([2, 2, 2, 2, 2]), commit=2))
    core.step(AppendResponse(frm=2, to=1, term=3, index=3, reject=True, hint_index=0))
    core.step(AppendResponse(frm=3, to=1, term=3, index=99, reject=True, hint_index=50))
    drive(core)
    assert core.role is Role.LEADER
    assert log_entries(core) == before


# ======================================================================================
# 5.4 Safety
# ======================================================================================


@pytest.mark.parametrize(
    ("voter_terms", "candidate_last", "granted"),
    [
        # voter's last entry: index 2, term 1
        ([1, 1], (2, 1), True),  # equally up to date
        ([1, 1], (3, 1), True),  # same last term, longer
        ([1, 1], (1, 1), False),  # same last term, shorter: rejected
        ([1, 1], (1, 2), True),  # higher last term wins even if shorter
        # voter's last entry: index 2, term 2
        ([1, 2], (3, 1), False),  # lower last term loses even if longer
        ([1, 2], (2, 2), True),
        ([1, 2], (1, 3), True),
        ([], (0, 0), True),
    ],
)
def test_voter_rejects_a_candidate_whose_log_is_less_up_to_date(
    voter_terms: list[int], candidate_last: tuple[int, int], granted: bool
) -> None:
    """§5.4.1: "the voter denies its vote if its own log is more up-to-date than
    that of the candidate ... If the logs have last entries with different
    terms, then the log with the later term is more up-to-date.  If the logs end
    with the same term, then whichever log is longer is more up-to-date.\""""
    core = make_core(1, storage=make_storage(terms=voter_terms, term=2))
    index, term = candidate_last
    core.step(RequestVote(frm=2, to=1, term=3, last_index=index, last_term=term))
    (reply,) = only(drive(core).messages, VoteResponse)
    assert reply.reject is not granted
    assert reply.term == 3 and core.term == 3
    assert core.vote == (2 if granted else NONE)


def test_a_server_missing_a_committed_entry_cannot_become_leader() -> None:
    """§5.4.1 end to end: "A candidate must contact a majority of the cluster in
    order to be elected, which means that every committed entry must be present
    in at least one of those servers" -- node 3 missed an entry committed by
    {1, 2}; with 1 gone it cannot win, while 2 can and keeps the entry."""
    net = Network()
    net.campaign(1)
    net.isolate(3)
    net.propose(1, b"committed")
    net.tick()
    assert payloads(net.applied[2]) == [b"committed"]
    net.crash(1)
    net.recover()
    net.campaign(3)
    assert net.leaders() == []
    assert net.nodes[2].vote != 3
    net.campaign(2)
    assert net.leaders() == [2]
    net.tick()
    assert payloads(net.applied[3]) == [b"committed"]


@pytest.mark.parametrize("peers", [(1, 2, 3), (1, 2, 3, 4, 5)])
def test_leader_only_commits_entries_of_its_current_term_by_counting(
    peers: tuple[int, ...],
) -> None:
    """§5.4.2, Figure 8: "Raft never commits log entries from previous terms by
    counting replicas.  Only log entries from the leader's current term are
    committed by counting replicas."  The leader of term 4 holds index 2 from
    term 2; a majority storing index 2 commits nothing, a majority storing the
    term-4 no-op at index 3 commits both."""
    core = make_core(1, peers=peers, storage=make_storage(peers, terms=[1, 2], term=3))
    become_leader(core)
    assert core.term == 4 and log_terms(core) == [1, 2, 4]
    majority = peers[1 : len(peers) // 2 + 1]
    for peer in majority:
        core.step(ack(core, peer, 2))
    out = drive(core)
    assert core.log.committed == 0 and out.applied == []
    for peer in majority:
        core.step(ack(core, peer, 3))
    out = drive(core)
    assert core.log.committed == 3
    assert [e.index for e in out.applied] == [1, 2, 3]


def test_figure_8_an_uncommitted_old_entry_on_a_majority_may_be_overwritten() -> None:
    """§5.4.2, Figure 8 (c)-(d): an entry of term 2 stored on a majority but not
    committed may legitimately be replaced by a later leader -- which is why
    counting it as committed (the check above) would be unsafe.  S5, holding a
    term-3 entry, wins against S2-S4 holding the term-2 entry and overwrites it."""
    peers = (1, 2, 3, 4, 5)
    net = Network(
        peers,
        logs={1: [1, 2], 2: [1, 2], 3: [1, 2], 4: [1], 5: [1, 3]},
        terms={1: 4, 2: 4, 3: 4, 4: 4, 5: 4},
    )
    net.crash(1)
    net.campaign(5)
    assert net.leaders() == [5]
    net.tick()
    for id in (2, 3, 4, 5):
        assert log_terms(net.nodes[id]) == [1, 3, 5], id


# ======================================================================================
# Extensions: PreVote (thesis §9.6)
# ======================================================================================


def _partitioned_node_rejoins(
    pre_vote: bool, check_quorum: bool, writes: list[bytes]
) -> tuple[Network, int]:
    net = Network(pre_vote=pre_vote, check_quorum=check_quorum)
    net.campaign(1)
    term = net.nodes[1].term
    net.isolate(3)
    for data in writes:
        net.propose(1, data)
    net.tick(10 * ET)  # node 3 times out again and again
    return net, term


@pytest.mark.parametrize(
    ("check_quorum", "writes"),
    [
        (False, [b"while 3 was away"]),  # PreVote alone: 3's log is behind, no pre-votes
        (True, [b"while 3 was away"]),
        (True, []),  # idle cluster: 3's log is as good, but voters are in the leader lease
    ],
)
def test_prevote_a_rejoining_partitioned_node_does_not_disrupt_the_leader(
    check_quorum: bool, writes: list[bytes]
) -> None:
    """PreVote: a node cut off from the cluster keeps timing out but its term does
    not grow (nobody grants its pre-vote), so when it rejoins the leader keeps
    its term and the node simply catches up."""
    net, term = _partitioned_node_rejoins(True, check_quorum, writes)
    assert net.nodes[3].term == term
    assert net.nodes[3].role in (Role.PRE_CANDIDATE, Role.FOLLOWER)
    net.recover()
    net.tick(3 * ET)
    assert net.leaders() == [1]
    assert all((c.term, c.leader) == (term, 1) for c in net.nodes.values())
    assert payloads(net.applied[3]) == writes


def test_without_prevote_a_rejoining_partitioned_node_disrupts_the_leader() -> None:
    """The control for the test above: in plain Raft the isolated node's term
    inflates and its return forces the cluster into a new term."""
    net, term = _partitioned_node_rejoins(False, False, [b"while 3 was away"])
    assert net.nodes[3].term > term + 5
    net.recover()
    net.tick(3 * ET)
    assert net.nodes[1].term > term + 5
    assert len(net.leaders()) == 1


# ======================================================================================
# Extensions: CheckQuorum
# ======================================================================================


def test_check_quorum_leader_steps_down_without_hearing_from_a_quorum() -> None:
    """CheckQuorum: a leader that has not heard from a quorum for an election
    timeout steps down (and stops accepting proposals); one that does hear from
    a quorum stays leader indefinitely."""
    net = Network(check_quorum=True)
    net.campaign(1)
    net.tick(5 * ET)
    assert net.leaders() == [1] and net.nodes[1].term == 1
    net.isolate(1)
    net.tick(ET - 1, ids=[1])
    assert net.nodes[1].role is Role.LEADER
    net.tick(ET + 1, ids=[1])
    assert net.nodes[1].role is Role.FOLLOWER and net.nodes[1].term == 1
    with pytest.raises(ProposalDropped):
        net.nodes[1].propose(b"x")


def test_check_quorum_follower_that_heard_from_the_leader_ignores_vote_requests() -> None:
    """CheckQuorum (thesis §4.2.3): a server that heard from a current leader
    within the minimum election timeout neither grants a vote nor adopts the
    requester's term; without CheckQuorum the same request would win its vote."""
    for check_quorum, ignored in ((True, True), (False, False)):
        net = Network(check_quorum=check_quorum)
        net.campaign(1)
        net.tick()
        node3 = net.nodes[3]
        node3.step(RequestVote(frm=2, to=3, term=2, last_index=50, last_term=1))
        granted = [m for m in only(drive(node3).messages, VoteResponse) if not m.reject]
        if ignored:
            assert granted == [] and (node3.term, node3.leader) == (1, 1)
        else:
            assert len(granted) == 1 and node3.term == 2 and node3.vote == 2


# ======================================================================================
# Extensions: proposal forwarding, batching, pipelining
# ======================================================================================


def test_follower_forwards_proposals_to_the_leader() -> None:
    """A proposal made at a follower is forwarded to the leader, which appends
    and commits it; every node applies it."""
    net = Network()
    net.campaign(1)
    assert net.nodes[2].propose(b"via 2") is None
    net.drive_all()
    forwarded = only(net.in_flight, Propose)
    assert [(m.frm, m.to, [e.data for e in m.entries]) for m in forwarded] == [(2, 1, [b"via 2"])]
    net.stabilize()
    net.tick()
    for id in net.peers:
        assert payloads(net.applied[id]) == [b"via 2"]


def test_proposal_without_a_known_leader_is_dropped() -> None:
    """With no leader known a proposal is refused at once (it definitely did not
    happen); so it is when forwarding is disabled, naming the leader."""
    with pytest.raises(ProposalDropped):
        make_core(1).propose(b"x")
    net = Network(disable_proposal_forwarding=True)
    net.campaign(1)
    with pytest.raises(ProposalDropped) as raised:
        net.nodes[2].propose(b"x")
    assert raised.value.leader == 1


def _stable_cluster(**config: object) -> Network:
    net = Network(**config)
    net.campaign(1)
    net.tick()
    return net


def test_proposals_between_two_readies_go_out_as_one_append_per_follower() -> None:
    """Batching: proposals made between two ready() calls are sent as a single
    AppendEntries to each follower, in proposal order."""
    net = _stable_cluster()
    datas = [b"p%d" % i for i in range(100)]
    for data in datas:
        net.nodes[1].propose(data)
    rd = net.ready(1)
    appends = only(rd.messages, AppendEntries)
    assert sorted(m.to for m in appends) == [2, 3]
    for m in appends:
        assert [e.data for e in m.entries] == datas
    net.stabilize()
    net.tick()
    assert payloads(net.applied[3]) == datas


def test_batches_respect_max_size_per_msg() -> None:
    """Batching: each AppendEntries carries at most ``max_size_per_msg`` bytes of
    entries (at least one entry), filled as far as the cap allows."""
    cap = 1000
    net = _stable_cluster(max_size_per_msg=cap)
    datas = [bytes([i]) * 100 for i in range(30)]  # 116 bytes each: 8 per message
    for data in datas:
        net.nodes[1].propose(data)
    rd = net.ready(1)
    for peer in (2, 3):
        appends = only(rd.messages, AppendEntries, to=peer)
        assert len(appends) == math.ceil(30 / 8)
        assert all(sum(e.size() for e in m.entries) <= cap for m in appends)
        assert [e.data for m in appends for e in m.entries] == datas
    net.stabilize()
    net.tick()
    assert payloads(net.applied[2]) == datas


def test_replicate_state_pipelines_appends_up_to_max_inflight_msgs() -> None:
    """Pipelining: to a follower in replicate state the leader sends several
    AppendEntries without waiting for acknowledgements, but never more than
    ``max_inflight_msgs`` unacknowledged ones; each acknowledgement frees room."""
    net = _stable_cluster(max_inflight_msgs=3, max_size_per_msg=1)  # one entry per message
    leader = net.nodes[1]
    first = leader.log.last_index() + 1
    for i in range(10):
        leader.propose(b"%d" % i)
    rd = net.ready(1)
    net.in_flight.clear()  # nothing reaches the followers
    for peer in (2, 3):
        sent = only(rd.messages, AppendEntries, to=peer)
        assert [[e.index for e in m.entries] for m in sent] == [[first], [first + 1], [first + 2]]
    leader.propose(b"more")
    rd = net.ready(1)
    net.in_flight.clear()
    assert only(rd.messages, AppendEntries) == []
    leader.step(ack(leader, 2, first))  # 2 acknowledges the first message
    rd = net.ready(1)
    net.in_flight.clear()
    sent = only(rd.messages, AppendEntries)
    assert [(m.to, [e.index for e in m.entries]) for m in sent] == [(2, [first + 3])]


# ======================================================================================
# Extensions: ReadIndex (thesis §6.4)
# ======================================================================================


def test_read_index_is_served_only_after_a_quorum_heartbeat_round() -> None:
    """ReadIndex: the leader records its commit index, confirms it is still
    leader with a heartbeat round answered by a quorum, and only then releases
    the read."""
    net = _stable_cluster()
    leader = net.nodes[1]
    commit = leader.log.committed
    net.cut(1, 2)
    net.cut(1, 3)
    leader.read_index(b"r1")
    rd = net.ready(1)
    rounds = {m.read_round for m in only(rd.messages, Heartbeat)}
    assert len(rounds) == 1 and 0 not in rounds
    net.stabilize()
    assert net.read_states[1] == []
    net.recover()
    net.cut(1, 3)  # one follower is enough for a quorum of three
    net.tick()
    assert net.read_states[1] == [ReadState(index=commit, context=b"r1")]


def test_reads_issued_before_the_next_ready_share_one_heartbeat_round() -> None:
    """ReadIndex batching: many reads before the next ready() cost one heartbeat
    per follower and are released together, in order."""
    net = _stable_cluster()
    leader = net.nodes[1]
    contexts = [b"c%d" % i for i in range(20)]
    for ctx in contexts:
        leader.read_index(ctx)
    rd = net.ready(1)
    heartbeats = only(rd.messages, Heartbeat)
    assert sorted(m.to for m in heartbeats) == [2, 3]
    net.stabilize()
    assert net.read_states[1] == [ReadState(leader.log.committed, c) for c in contexts]


def test_a_heartbeat_round_started_before_a_read_does_not_confirm_it() -> None:
    """ReadIndex safety: only heartbeats sent *after* a read arrived can confirm
    leadership for it.  Acks of an earlier round release the earlier read only."""
    net = _stable_cluster()
    leader = net.nodes[1]
    leader.read_index(b"first")
    round1 = only(net.ready(1).messages, Heartbeat)
    leader.read_index(b"second")
    round2 = only(net.ready(1).messages, Heartbeat)
    net.in_flight.clear()
    (r1,) = {m.read_round for m in round1}
    (r2,) = {m.read_round for m in round2}
    assert r1 != r2
    leader.step(HeartbeatResponse(frm=2, to=1, term=leader.term, read_round=r1))
    leader.step(HeartbeatResponse(frm=3, to=1, term=leader.term, read_round=r1))
    assert [r.context for r in drive(leader).read_states] == [b"first"]
    leader.step(HeartbeatResponse(frm=2, to=1, term=leader.term, read_round=r2))
    assert [r.context for r in drive(leader).read_states] == [b"second"]


def test_new_leader_serves_no_read_before_committing_an_entry_of_its_term() -> None:
    """ReadIndex: a new leader does not know the latest commit index until it has
    committed an entry of its own term (its no-op); reads wait until then, and
    are released with an index that covers the no-op."""
    core = make_core(1, storage=make_storage(terms=[1, 1], term=1, commit=0))
    become_leader(core)
    noop = core.log.last_index()
    core.read_index(b"early")
    for _ in range(3):  # heartbeat rounds are answered, yet nothing is released
        core.tick()
        out = drive(core)
        for hb in only(out.messages, Heartbeat):
            core.step(HeartbeatResponse(frm=hb.to, to=1, term=core.term, read_round=hb.read_round))
        assert drive(core).read_states == []
    core.step(ack(core, 2, noop))
    released: list[ReadState] = []
    for _ in range(3):
        out = drive(core)
        released += out.read_states
        for hb in only(out.messages, Heartbeat):
            core.step(HeartbeatResponse(frm=hb.to, to=1, term=core.term, read_round=hb.read_round))
        core.tick()
    released += drive(core).read_states
    assert released == [ReadState(index=noop, context=b"early")]


def test_follower_read_index_is_forwarded_to_the_leader_and_answered() -> None:
    """ReadIndex at a follower: the request goes to the leader, which confirms its
    leadership and answers with its commit index; the follower then reports the
    read state and can serve it once it has applied that index."""
    net = _stable_cluster()
    net.propose(1, b"x")
    commit = net.nodes[1].log.committed
    net.nodes[2].read_index(b"f")
    net.drive_all()
    assert [(m.frm, m.to, m.context) for m in only(net.in_flight, ReadIndexRequest)] == [
        (2, 1, b"f")
    ]
    net.stabilize()
    assert only(net.delivered, ReadIndexResponse, to=2)
    assert net.read_states[2] == [ReadState(index=commit, context=b"f")]
    net.tick()
    assert net.nodes[2].log.applied >= commit


def test_read_index_without_a_leader_is_dropped() -> None:
    with pytest.raises(ReadIndexDropped):
        make_core(1).read_index(b"x")


# ======================================================================================
# Extensions: leadership transfer (thesis §3.10)
# ======================================================================================


def test_leadership_transfer_catches_the_target_up_then_sends_timeout_now() -> None:
    """Transfer: the leader first brings the target's log up to date, then sends
    TimeoutNow; the target campaigns at once and wins even though the voters
    heard from the old leader recently (CheckQuorum and PreVote on).
    Proposals are refused while the transfer is in progress."""
    net = Network(pre_vote=True, check_quorum=True)
    net.campaign(1)
    net.isolate(3)
    for data in (b"a", b"b"):
        net.propose(1, data)
    net.recover()
    old = net.nodes[1]
    last = old.log.last_index()
    assert net.nodes[3].log.last_index() < last
    mark = len(net.delivered)
    old.transfer_leadership(3)
    with pytest.raises(ProposalDropped):
        old.propose(b"refused")
    net.stabilize()
    trace = net.delivered[mark:]
    timeout_at = [i for i, m in enumerate(trace) if isinstance(m, TimeoutNow)]
    caught_up_at = [
        i
        for i, m in enumerate(trace)
        if isinstance(m, AppendResponse) and m.frm == 3 and not m.reject and m.index >= last
    ]
    assert len(timeout_at) == 1 and caught_up_at and caught_up_at[0] < timeout_at[0]
    assert net.leaders() == [3]
    assert all((c.term, c.leader) == (2, 3) for c in net.nodes.values())
    net.propose(3, b"c")
    net.tick()
    assert payloads(net.applied[1]) == [b"a", b"b", b"c"]


def test_leadership_transfer_to_an_unreachable_node_is_abandoned() -> None:
    """Transfer: if the target does not take over within an election timeout the
    transfer is abandoned, the old leader keeps its term and accepts proposals
    again."""
    net = Network(pre_vote=True, check_quorum=True)
    net.campaign(1)
    net.isolate(3)
    leader = net.nodes[1]
    leader.transfer_leadership(3)
    net.stabilize()
    assert leader.status().lead_transferee == 3
    net.tick(ET // 2)
    with pytest.raises(ProposalDropped):
        leader.propose(b"refused")
    net.tick(ET - ET // 2)
    assert leader.status().lead_transferee == NONE
    assert (leader.role, leader.term) == (Role.LEADER, 1)
    assert net.propose(1, b"accepted") is not None
    net.tick()
    assert payloads(net.applied[2]) == [b"accepted"]


def test_transfer_requests_do_not_postpone_a_cut_off_leaders_step_down() -> None:
    """CheckQuorum and the transfer timeout are separate clocks: a leader cut off
    from its quorum steps down within two election timeouts however often it is
    asked to transfer leadership."""
    net = Network(pre_vote=True, check_quorum=True)
    net.campaign(1)
    leader = net.nodes[1]
    net.isolate(1)
    for tick in range(2 * ET):
        if leader.role is not Role.LEADER:
            break
        leader.transfer_leadership(2 + tick % 2)
        net.tick(ids=[1])
    assert leader.role is Role.FOLLOWER


# ======================================================================================
# Durability contract (Figure 2: "respond to RPCs" only after stable storage)
# ======================================================================================


def test_vote_grant_is_only_in_persisted_messages() -> None:
    """A vote is a promise about durable state: the grant leaves only after the
    hard state recording it has been persisted."""
    core = make_core(1)
    core.step(RequestVote(frm=2, to=1, term=1, last_index=0, last_term=0))
    rd = core.ready()
    assert only(rd.messages, VoteResponse) == []
    assert [m.to for m in only(rd.persisted_messages, VoteResponse, reject=False)] == [2]
    assert rd.hard_state is not None and (rd.hard_state.term, rd.hard_state.vote) == (1, 2)
    assert rd.must_sync
    core.advance(rd)


def test_candidate_vote_requests_are_only_in_persisted_messages() -> None:
    """A candidate's RequestVote relies on its durable vote for itself."""
    core = make_core(1)
    core.campaign()
    rd = core.ready()
    assert only(rd.messages, RequestVote) == []
    assert sorted(m.to for m in only(rd.persisted_messages, RequestVote)) == [2, 3]
    assert rd.hard_state is not None and (rd.hard_state.term, rd.hard_state.vote) == (1, 1)
    assert rd.must_sync
    core.advance(rd)


def test_append_acknowledgement_is_only_in_persisted_messages() -> None:
    """An append acknowledgement promises the entries are durable: it leaves
    only after Ready.entries have been persisted."""
    core = make_core(1, storage=make_storage(term=1))
    ents = entries([1, 1])
    core.step(append(2, 1, term=1, prev=(0, 0), ents=ents))
    rd = core.ready()
    assert only(rd.messages, AppendResponse) == []
    assert [m.index for m in only(rd.persisted_messages, AppendResponse)] == [2]
    assert rd.entries == ents and rd.must_sync
    core.advance(rd)


def test_leader_append_entries_may_leave_before_its_own_log_is_persisted() -> None:
    """Thesis §10.2.1: the leader's AppendEntries go in Ready.messages (sent while
    it writes its own log), but the leader counts itself towards a commit only
    once its log is durable."""
    core = make_core(1, peers=(1, 2))
    become_leader(core)
    core.step(ack(core, 2, 1))  # the follower is now in replicate state
    drive(core)
    index = core.propose(b"x")
    rd = core.ready()
    assert sorted(m.to for m in only(rd.messages, AppendEntries)) == [2]
    assert only(rd.persisted_messages, AppendEntries) == []
    assert [e.data for e in rd.entries] == [b"x"]
    core.advance(rd)
    assert index == 2 and core.log.committed == 1


def test_leader_counts_itself_only_for_entries_it_has_persisted() -> None:
    """Thesis §10.2.1: a follower's acknowledgement plus the leader's own
    *unpersisted* copy is not a majority of two."""
    core = make_core(1, peers=(1, 2))
    become_leader(core)
    core.step(ack(core, 2, 1))
    drive(core)
    index = core.propose(b"x")
    core.step(ack(core, 2, index))  # before the leader wrote its own log
    assert core.log.committed == 1
    rd = core.ready()
    assert rd.committed_entries == []
    storage_of(core).persist(rd)
    core.advance(rd)
    out = drive(core)
    assert core.log.committed == index and payloads(out.applied) == [b"x"]


def test_a_restarted_node_keeps_its_log_and_reapplies_committed_entries() -> None:
    """Crash = lose everything not persisted; restart = rebuild from storage.  A
    restarted follower still has its log and commit index (so it re-delivers
    committed entries from index 1) and rejoins as follower of the same leader."""
    net = Network()
    net.campaign(1)
    for data in (b"a", b"b"):
        net.propose(1, data)
    net.tick()
    log_before = log_entries(net.nodes[2])
    net.crash(2)
    net.propose(1, b"c")
    restarted = net.restart(2)
    assert (restarted.role, restarted.term) == (Role.FOLLOWER, 1)
    assert log_entries(restarted) == log_before
    net.tick()
    assert payloads(net.applied[2]) == [b"a", b"b", b"c"]
    assert net.nodes[2].leader == 1
