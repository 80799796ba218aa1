"""Unit tests of the Raft core's building blocks: quorum arithmetic, flow
control, ReadIndex rounds, the log, MemoryStorage and the message codec."""

from __future__ import annotations

import random

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from raft import quorum
from raft.core import Config, RaftCore
from raft.errors import SafetyViolation
from raft.log import RaftLog
from raft.messages import (
    AppendEntries,
    ConfState,
    Entry,
    HardState,
    Heartbeat,
    RequestVote,
    decode_message,
    encode_message,
)
from raft.progress import Inflights, Progress, ProgressState
from raft.read_only import ReadOnly, ReadRequest
from raft.storage import CompactedError, MemoryStorage, UnavailableError


def entries(*terms: int, start: int = 1) -> list[Entry]:
    return [Entry(term=term, index=start + offset) for offset, term in enumerate(terms)]


# -- quorum ------------------------------------------------------------------------


@pytest.mark.parametrize(("voters", "need"), [(1, 1), (2, 2), (3, 2), (4, 3), (5, 3)])
def test_majority(voters: int, need: int) -> None:
    assert quorum.majority(voters) == need


def test_committed_index_is_the_quorum_minimum() -> None:
    assert quorum.committed_index({1, 2, 3}, {1: 5, 2: 3, 3: 9}) == 5
    assert quorum.committed_index({1, 2, 3}, {1: 5}) == 0
    assert quorum.committed_index({1, 2, 3, 4, 5}, {1: 1, 2: 2, 3: 3, 4: 4, 5: 5}) == 3
    # Ids outside the voter set (learners) never count.
    assert quorum.committed_index({1, 2, 3}, {1: 9, 4: 9, 5: 9}) == 0


@given(st.dictionaries(st.integers(1, 7), st.integers(0, 100), min_size=1))
def test_committed_index_is_held_by_a_majority(match: dict[int, int]) -> None:
    voters = set(match)
    index = quorum.committed_index(voters, match)
    holding = sum(1 for voter in voters if match[voter] >= index)
    assert holding >= quorum.majority(len(voters))
    higher = sum(1 for voter in voters if match[voter] >= index + 1)
    assert higher < quorum.majority(len(voters))


def test_vote_result() -> None:
    voters = {1, 2, 3}
    assert quorum.vote_result(voters, {1: True}) is quorum.VoteResult.PENDING
    assert quorum.vote_result(voters, {1: True, 2: True}) is quorum.VoteResult.WON
    assert quorum.vote_result(voters, {1: True, 2: False, 3: False}) is quorum.VoteResult.LOST
    assert quorum.vote_result(voters, {1: True, 2: False}) is quorum.VoteResult.PENDING
    assert quorum.vote_result(voters, {4: True, 5: True}) is quorum.VoteResult.PENDING


# -- progress ----------------------------------------------------------------------


def test_inflights_are_bounded_and_freed_in_order() -> None:
    window = Inflights(3)
    for index in (5, 10, 15):
        window.add(index)
    assert window.full()
    with pytest.raises(OverflowError):
        window.add(20)
    window.free_through(10)
    assert len(window) == 1 and not window.full()
    window.free_first()
    assert len(window) == 0


def test_probe_pauses_after_one_message_until_answered() -> None:
    progress = Progress(next_index=11, max_inflight=4)
    assert not progress.is_paused()
    progress.sent_entries(12)
    assert progress.is_paused()
    assert progress.maybe_update(12)
    assert not progress.is_paused()


def test_replicate_pipelines_up_to_the_window() -> None:
    progress = Progress(next_index=1, max_inflight=2)
    progress.maybe_update(0)
    progress.become_replicate()
    progress.sent_entries(5)
    progress.sent_entries(9)
    assert progress.next == 10 and progress.is_paused()
    progress.maybe_update(5)
    progress.inflights.free_through(5)
    assert not progress.is_paused()


def test_stale_rejections_are_ignored() -> None:
    progress = Progress(next_index=10, max_inflight=4)
    assert not progress.maybe_decrease_to(rejected=5, hint_index=3)  # not our last probe
    assert progress.maybe_decrease_to(rejected=9, hint_index=3)
    assert progress.next == 4
    progress.match = 6
    progress.become_replicate()
    assert not progress.maybe_decrease_to(rejected=6, hint_index=0)
    assert progress.state is ProgressState.REPLICATE


# -- ReadIndex rounds ----------------------------------------------------------------


def test_reads_before_a_broadcast_share_one_round() -> None:
    reads = ReadOnly()
    reads.add(ReadRequest(4, 1, b"a"), self_id=1)
    reads.add(ReadRequest(4, 1, b"b"), self_id=1)
    round_id = reads.take_open_round()
    reads.add(ReadRequest(5, 1, b"c"), self_id=1)
    assert reads.take_open_round() == round_id + 1
    released = reads.ack(round_id, 2, voters={1, 2, 3})
    assert [request.context for request in released] == [b"a", b"b"]
    assert reads.pending_count() == 1


def test_a_later_round_releases_earlier_ones() -> None:
    reads = ReadOnly()
    reads.add(ReadRequest(4, 1, b"a"), self_id=1)
    first = reads.take_open_round()
    reads.add(ReadRequest(5, 1, b"b"), self_id=1)
    second = reads.take_open_round()
    assert reads.ack(second, 3, voters={1, 2, 3, 4, 5}) == []
    released = reads.ack(second, 2, voters={1, 2, 3, 4, 5})
    assert [request.context for request in released] == [b"a", b"b"]
    assert reads.ack(first, 2, voters={1, 2, 3, 4, 5}) == []


def test_unsent_rounds_cannot_be_acknowledged() -> None:
    reads = ReadOnly()
    reads.add(ReadRequest(4, 1, b"a"), self_id=1)
    assert reads.ack(1, 2, voters={1, 2, 3}) == []
    assert reads.pending_count() == 1


# -- log and storage ---------------------------------------------------------------------


def test_memory_storage_append_truncates_conflicts() -> None:
    storage = MemoryStorage()
    storage.append(entries(1, 1, 2))
    storage.append([Entry(term=3, index=2)])
    assert storage.last_index() == 2
    assert storage.term(2) == 3
    with pytest.raises(ValueError, match="gap"):
        storage.append([Entry(term=3, index=9)])


def test_memory_storage_compaction_keeps_boundary_term() -> None:
    storage = MemoryStorage()
    storage.append(entries(1, 2, 3, 4))
    storage.compact(2)
    assert storage.first_index() == 3
    assert storage.term(2) == 2
    with pytest.raises(CompactedError):
        storage.term(1)
    with pytest.raises(CompactedError):
        storage.entries(2, 4)
    with pytest.raises(UnavailableError):
        storage.entries(3, 6)


def test_log_reads_across_stable_and_unstable() -> None:
    storage = MemoryStorage()
    storage.append(entries(1, 1, 2))
    raft_log = RaftLog(storage)
    raft_log.append(entries(2, 3, start=4))
    assert [entry.index for entry in raft_log.entries(2, 6)] == [2, 3, 4, 5]
    assert raft_log.term(5) == 3
    assert raft_log.stable_last_index() == 3
    raft_log.stable_to(5, 3)
    assert raft_log.unstable == []


def test_log_size_cap_returns_at_least_one_entry() -> None:
    raft_log = RaftLog(MemoryStorage())
    raft_log.append([Entry(term=1, index=i, data=b"x" * 100) for i in range(1, 6)])
    assert len(raft_log.entries(1, 6, max_bytes=1)) == 1
    assert len(raft_log.entries(1, 6, max_bytes=250)) == 2


def test_log_refuses_to_overwrite_committed_entries() -> None:
    raft_log = RaftLog(MemoryStorage())
    raft_log.append(entries(1, 1, 1))
    raft_log.commit_to(2)
    with pytest.raises(SafetyViolation):
        raft_log.append([Entry(term=2, index=2)])
    with pytest.raises(SafetyViolation):
        raft_log.commit_to(7)


def test_find_conflict_by_term_skips_whole_terms() -> None:
    raft_log = RaftLog(MemoryStorage())
    raft_log.append(entries(1, 1, 4, 4, 4, 4, 5, 5))
    # The leader's prev entry (8, term 6): everything of terms 5 and 4 can't match.
    assert raft_log.find_conflict_by_term(8, 3) == (2, 1)
    assert raft_log.find_conflict_by_term(8, 4) == (6, 4)
    assert raft_log.find_conflict_by_term(20, 9) == (8, 5)


def test_stable_to_ignores_an_overwritten_entry() -> None:
    raft_log = RaftLog(MemoryStorage())
    raft_log.append(entries(1, 1))
    raft_log.append([Entry(term=2, index=2)])
    raft_log.stable_to(2, 1)
    assert raft_log.stable_last_index() == 0


# -- codec ----------------------------------------------------------------------------


def test_messages_round_trip() -> None:
    message = AppendEntries(
        frm=1, to=2, term=3, prev_index=4, prev_term=2, entries=entries(3, 3, start=5), commit=4
    )
    assert decode_message(encode_message(message)) == message
    heartbeat = Heartbeat(frm=1, to=2, term=3, commit=4, read_round=7)
    assert decode_message(encode_message(heartbeat)) == heartbeat


@pytest.mark.parametrize(
    "payload",
    [b"", b"\x00", b"\x93\x01\x02\x03", msgspec.msgpack.encode(["Unknown", 1, 2, 3]), b"\xff" * 9],
)
def test_malformed_messages_raise_decode_errors(payload: bytes) -> None:
    with pytest.raises(msgspec.DecodeError):
        decode_message(payload)


def test_wrong_field_types_are_rejected() -> None:
    bad = msgspec.msgpack.encode(["RequestVote", 1, 2, "three", 0, 0, False, False])
    with pytest.raises(msgspec.ValidationError):
        decode_message(bad)


# -- core plumbing ---------------------------------------------------------------------


def test_config_is_validated() -> None:
    with pytest.raises(ValueError):
        Config(id=0).validate()
    with pytest.raises(ValueError):
        Config(id=1, election_tick=1, heartbeat_tick=1).validate()


def test_inputs_between_ready_and_advance_are_refused() -> None:
    core = RaftCore(Config(id=1), MemoryStorage(ConfState(voters=(1,))), random.Random(0))
    core.campaign()
    ready = core.ready()
    with pytest.raises(RuntimeError, match="advance"):
        core.tick()
    core.advance(ready)
    core.tick()


def test_restart_restores_term_vote_and_commit() -> None:
    storage = MemoryStorage(ConfState(voters=(1,)))
    core = RaftCore(Config(id=1), storage, random.Random(0))
    core.campaign()
    while core.has_ready():
        ready = core.ready()
        storage.persist(ready)
        core.advance(ready)
    core.propose(b"data")
    while core.has_ready():
        ready = core.ready()
        storage.persist(ready)
        core.advance(ready)
    assert storage.hard_state == HardState(term=1, vote=1, commit=2)
    restarted = RaftCore(Config(id=1), storage, random.Random(1))
    assert (restarted.term, restarted.vote, restarted.log.committed) == (1, 1, 2)
    ready = restarted.ready()
    assert [entry.data for entry in ready.committed_entries] == [b"", b"data"]


def test_messages_to_other_nodes_are_ignored() -> None:
    core = RaftCore(Config(id=1), MemoryStorage(ConfState(voters=(1, 2, 3))), random.Random(0))
    core.step(RequestVote(frm=2, to=3, term=5, last_index=0, last_term=0))
    assert core.term == 0
