"""The Raft consensus state machine: all protocol state, no I/O.

:class:`RaftCore` follows the shape of etcd-io/raft.  Its only inputs are
:meth:`~RaftCore.tick`, :meth:`~RaftCore.step`, :meth:`~RaftCore.propose`,
:meth:`~RaftCore.read_index`, :meth:`~RaftCore.transfer_leadership`,
:meth:`~RaftCore.propose_conf_change` and :meth:`~RaftCore.campaign`; it
reads no clock (time is the number of ticks), opens no socket or file, and
draws randomness only from the injected ``random.Random``.  Same state + same
inputs => same outputs, which is what lets the simulator in :mod:`raft.sim`
replay any schedule from a seed.

Membership changes go through the log one server at a time and take effect
when appended; :mod:`raft.membership` explains why that is safe and which rules
the core enforces for it.

Its output is a :class:`~raft.ready.Ready`.  **Durability contract**: nothing
that depends on a vote or on an appended entry leaves the node before the driver
has made it durable.  Vote requests, vote grants and append acknowledgements
are only ever put in :attr:`Ready.persisted_messages`, which the driver sends
after persisting :attr:`Ready.hard_state` and :attr:`Ready.entries`.  The one
exception is the leader's own replication traffic (:attr:`Ready.messages`),
which may go out while the leader writes the same entries to its disk (Raft
thesis §10.2.1); the leader counts itself towards a commit quorum only for
entries the driver has reported durable through :meth:`RaftCore.advance`.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterator
from dataclasses import dataclass

from raft import quorum
from raft.errors import ProposalDropped, ReadIndexDropped, RequestDropped
from raft.log import RaftLog
from raft.membership import ConfChange, ConfChangeError, complete_change, conf_change_entry
from raft.messages import (
    NONE,
    AppendEntries,
    AppendResponse,
    ConfState,
    Entry,
    EntryType,
    HardState,
    Heartbeat,
    HeartbeatResponse,
    InstallSnapshot,
    Message,
    Propose,
    ReadIndexRequest,
    ReadIndexResponse,
    RequestVote,
    Snapshot,
    SnapshotResponse,
    TimeoutNow,
    TransferLeader,
    VoteResponse,
)
from raft.progress import Progress, ProgressState
from raft.read_only import ReadOnly, ReadRequest
from raft.ready import ReadState, Ready, Role, SoftState
from raft.snapshot_transfer import SnapshotReceiver, SnapshotSender
from raft.storage import CompactedError, Storage

log = logging.getLogger(__name__)

_LEADER_TRAFFIC = (AppendEntries, Heartbeat, TimeoutNow, ReadIndexResponse, InstallSnapshot)
"""Messages a leader may send before persisting: they promise nothing about its disk."""


@dataclass(frozen=True)
class Config:
    """Tuning and identity of one node.  Times are in ticks."""

    id: int
    election_tick: int = 10
    """A follower campaigns after a randomized timeout in ``[election_tick, 2 * election_tick)``
    ticks without hearing from a leader; a leader steps down (CheckQuorum) after
    ``election_tick`` ticks without hearing from a quorum."""
    heartbeat_tick: int = 1
    pre_vote: bool = True
    check_quorum: bool = True
    max_size_per_msg: int = 1 << 20
    """Byte cap of the entries in one AppendEntries (at least one entry is always sent)."""
    max_inflight_msgs: int = 256
    """Unacknowledged AppendEntries allowed per follower in replicate state."""
    max_snapshot_chunk: int = 1 << 20
    """Byte cap of one InstallSnapshot chunk."""
    snapshot_window: int = 4
    """Unacknowledged snapshot chunks allowed per follower."""
    max_committed_size_per_ready: int = 64 << 20
    disable_proposal_forwarding: bool = False
    eager_commit_broadcast: bool = True
    """Tell followers of a new commit index at once, with an empty
    AppendEntries if nothing new is to be sent (etcd's behaviour).  When False,
    the commit index rides on the next AppendEntries or heartbeat, and the
    driver calls :meth:`RaftCore.broadcast_commit` once
    :meth:`RaftCore.commit_broadcast_due` has been true for as long as it
    allows: under a steady stream of writes, followers then handle one message
    per write instead of two."""
    applied: int = 0
    """Index the caller's state machine has already applied (on restart)."""

    def validate(self) -> None:
        if self.id <= NONE:
            raise ValueError("node id must be a positive integer")
        if self.heartbeat_tick < 1:
            raise ValueError("heartbeat_tick must be at least 1")
        if self.election_tick <= self.heartbeat_tick:
            raise ValueError("election_tick must be greater than heartbeat_tick")
        if (
            min(
                self.max_inflight_msgs,
                self.max_size_per_msg,
                self.max_snapshot_chunk,
                self.snapshot_window,
            )
            < 1
        ):
            raise ValueError("flow-control limits must be positive")
        if self.applied < 0:
            raise ValueError("applied must not be negative")


@dataclass(frozen=True)
class PeerStatus:
    match: int
    next: int
    state: ProgressState


@dataclass(frozen=True)
class Status:
    id: int
    term: int
    vote: int
    commit: int
    applied: int
    leader: int
    role: Role
    last_index: int
    lead_transferee: int
    progress: dict[int, PeerStatus]
    """Per-peer replication state; filled on the leader only."""
    voters: frozenset[int] = frozenset()
    learners: frozenset[int] = frozenset()


class RaftCore:
    """One Raft node's protocol state.  See the module docstring for the contract."""

    def __init__(self, config: Config, storage: Storage, rng: random.Random) -> None:
        config.validate()
        self._config = config
        self._id = config.id
        self._rng = rng
        hard_state, _ = storage.initial_state()
        self.log = RaftLog(storage, config.applied)
        conf = self.log.confs.current()
        self._voters = frozenset(conf.voters)
        self._learners = frozenset(conf.learners)
        self._conf_version = self.log.confs.version
        self._prev_conf = conf

        self._term = hard_state.term
        self._vote = hard_state.vote
        self._leader = NONE
        self._role = Role.FOLLOWER
        self._progress: dict[int, Progress] = {}
        self._votes: dict[int, bool] = {}
        self._election_elapsed = 0
        self._heartbeat_elapsed = 0
        self._randomized_election_timeout = config.election_tick
        self._lead_transferee = NONE
        self._transfer_elapsed = 0
        self._removed_elapsed = 0
        """Leader: ticks spent replicating to removed peers (see _prune_removed_progress)."""
        self._read_only = ReadOnly()
        self._reads_awaiting_commit: list[tuple[int, bytes]] = []
        self._snapshot_receiver: SnapshotReceiver | None = None
        self._committed_conf_change = False
        """The last commit advance covered a membership change."""

        self._messages: list[Message] = []
        self._persisted_messages: list[Message] = []
        self._read_states: list[ReadState] = []
        self._forward_buffer: list[Entry] = []
        self._broadcast_pending = False
        self._ready_outstanding = False
        self._prev_soft = SoftState(NONE, Role.FOLLOWER)
        self._prev_hard = hard_state
        self._durable_term = hard_state.term
        """The term the driver has reported persisted (see :meth:`_send`)."""
        self._won_when_durable = False
        """Candidate elected by its own vote alone, waiting for it to be durable."""

        self._become_follower(self._term, NONE)

    # -- Read-only views ----------------------------------------------------------

    @property
    def id(self) -> int:
        return self._id

    @property
    def term(self) -> int:
        return self._term

    @property
    def vote(self) -> int:
        return self._vote

    @property
    def leader(self) -> int:
        return self._leader

    @property
    def role(self) -> Role:
        return self._role

    @property
    def voters(self) -> frozenset[int]:
        return self._voters

    @property
    def learners(self) -> frozenset[int]:
        return self._learners

    def conf_state(self) -> ConfState:
        """The membership in effect: the latest configuration in the log,
        committed or not (see :mod:`raft.membership`)."""
        return self.log.confs.current()

    def conf_state_at(self, index: int) -> ConfState:
        """The membership after the entry at ``index`` (for snapshot metadata)."""
        return self.log.confs.at(index)

    def conf_context(self) -> bytes:
        """The context of the newest conf change in the log (b"" if none since
        the latest snapshot or the bootstrap)."""
        return self.log.confs.context()

    def status(self) -> Status:
        progress: dict[int, PeerStatus] = {}
        if self._role is Role.LEADER:
            progress = {
                peer: PeerStatus(pr.match, pr.next, pr.state)
                for peer, pr in sorted(self._progress.items())
            }
        return Status(
            id=self._id,
            term=self._term,
            vote=self._vote,
            commit=self.log.committed,
            applied=self.log.applied,
            leader=self._leader,
            role=self._role,
            last_index=self.log.last_index(),
            lead_transferee=self._lead_transferee,
            progress=progress,
            voters=self._voters,
            learners=self._learners,
        )

    # -- Inputs -------------------------------------------------------------------

    def tick(self) -> None:
        """Advance logical time by one tick."""
        self._check_no_ready_outstanding()
        if self._role is Role.LEADER:
            self._tick_heartbeat()
        else:
            self._tick_election()

    def campaign(self) -> None:
        """Start an election now (PreVote first when enabled), as an election timeout would."""
        self._check_no_ready_outstanding()
        self._hup(transfer=False)

    def propose(self, data: bytes) -> int | None:
        """Propose ``data`` for the log.

        On the leader the entry is appended and its index returned; it goes out
        to followers, batched with other proposals, at the next :meth:`ready`.
        On a follower it is forwarded to the leader (batched likewise) and
        ``None`` is returned: the caller learns the outcome when the entry is
        applied, or never if the leader is lost first.  Raises
        :class:`ProposalDropped` when no leader is known, forwarding is
        disabled, or a leadership transfer is in progress.
        """
        self._check_no_ready_outstanding()
        if self._role is Role.LEADER:
            if self._lead_transferee != NONE:
                raise ProposalDropped("leadership transfer in progress", leader=self._id)
            index = self.log.last_index() + 1
            self.log.append([Entry(term=self._term, index=index, data=data)])
            self._broadcast_pending = True
            return index
        if self._leader == NONE:
            raise ProposalDropped("no leader")
        if self._config.disable_proposal_forwarding:
            raise ProposalDropped("not the leader", leader=self._leader)
        self._forward_buffer.append(Entry(term=0, index=0, data=data))
        return None

    def propose_conf_change(self, change: ConfChange) -> int:
        """Append a membership change on the leader; returns its index.

        The change takes effect at once, on append (see :mod:`raft.membership`
        for why that is safe).  Raises :class:`ProposalDropped` (definitely not
        appended) on a follower (changes are not forwarded: the caller goes to
        the leader named in the error), during a leadership transfer, before
        the leader has committed an entry of its own term, while a previous
        change is not yet committed and applied, or when ``change`` is not
        valid against the current configuration.
        """
        self._check_no_ready_outstanding()
        if self._role is not Role.LEADER:
            raise ProposalDropped("not the leader", leader=self._leader)
        if self._lead_transferee != NONE:
            raise ProposalDropped("leadership transfer in progress", leader=self._id)
        if not self._committed_in_current_term():
            raise ProposalDropped(
                "the leader has not yet committed an entry of its term", leader=self._id
            )
        if self.log.confs.last_change_index() > self.log.applied:
            raise ProposalDropped("another membership change is in progress", leader=self._id)
        try:
            change = complete_change(self.log.confs.current(), change)
        except ConfChangeError as error:
            raise ProposalDropped(str(error), leader=self._id) from None
        index = self.log.last_index() + 1
        self.log.append([conf_change_entry(self._term, index, change)])
        self._sync_conf()
        self._broadcast_pending = True
        return index

    def read_index(self, context: bytes) -> None:
        """Ask for a linearizable read point, identified by ``context``.

        The answer is a :class:`ReadState` in a later Ready: the read may be
        served from the state machine once it has applied ``ReadState.index``.
        Requests issued before the next :meth:`ready` share one heartbeat
        round.  A new leader answers only once it has committed an entry of its
        own term.  If leadership is lost first the request is silently dropped
        (the caller times out).  Raises :class:`ReadIndexDropped` when no
        leader is known.
        """
        self._check_no_ready_outstanding()
        if self._role is Role.LEADER:
            self._leader_read(self._id, context)
        elif self._leader == NONE:
            raise ReadIndexDropped("no leader")
        else:
            self._send(
                ReadIndexRequest(frm=self._id, to=self._leader, term=self._term, context=context)
            )

    def transfer_leadership(self, to: int) -> None:
        """Hand leadership to voter ``to``: catch it up, then tell it to campaign.

        Proposals are refused while the transfer is in progress; it is
        abandoned after one election timeout.  On a follower the request is
        forwarded to the leader.  Raises :class:`RequestDropped` without a leader.
        """
        self._check_no_ready_outstanding()
        if self._role is Role.LEADER:
            self._handle_transfer(to)
        elif self._leader == NONE:
            raise RequestDropped("no leader")
        else:
            self._send(TransferLeader(frm=self._id, to=self._leader, term=self._term, target=to))

    def commit_broadcast_due(self) -> bool:
        """Is this a leader with a follower (or learner) that has not heard of
        the commit index covering entries it holds?  Only ever true without
        :attr:`Config.eager_commit_broadcast`."""
        if self._role is not Role.LEADER:
            return False
        return next(self._peers_unaware_of_commit(), None) is not None

    def broadcast_commit(self) -> None:
        """Send the commit index now to every peer that has not heard of it
        (an empty AppendEntries, unless flow control holds it back: then the
        peer hears it with the next message it is sent)."""
        if self._role is not Role.LEADER:
            return
        for peer in sorted(self._peers_unaware_of_commit()):
            self._send_append(peer)

    def _peers_unaware_of_commit(self) -> Iterator[int]:
        """Peers holding entries up to a commit index they were not sent."""
        committed = self.log.committed
        for peer, progress in self._progress.items():
            if peer != self._id and progress.commit_sent < min(committed, progress.match):
                yield peer

    def step(self, message: Message) -> None:
        """Process one message addressed to this node."""
        self._check_no_ready_outstanding()
        if message.to != self._id:
            log.warning("node %d ignoring message addressed to %d", self._id, message.to)
            return
        confs = self.log.confs
        if (
            isinstance(message, RequestVote)
            and confs.last_change_index()
            and message.frm in confs.removed_through(self.log.committed)
            and message.frm not in self._voters
            and message.frm not in self._learners
        ):
            # Its removal is committed and it is not (back) in the configuration:
            # a removed node that missed its removal must not disrupt the
            # cluster with ever higher terms.  Only its vote requests are
            # ignored: anything else from a higher term can only come from a
            # legitimate leader (of a configuration that added it back, which
            # a lagging node must hear to learn that).
            log.debug("node %d ignoring vote request of removed node %d", self._id, message.frm)
            return
        if message.term > self._term:
            if not self._accept_higher_term(message):
                return
        elif message.term < self._term:
            self._answer_stale(message)
            return

        if isinstance(message, RequestVote):
            self._handle_vote_request(message)
        elif self._role is Role.LEADER:
            self._step_leader(message)
        elif self._role is Role.FOLLOWER:
            self._step_follower(message)
        else:
            self._step_candidate(message)
        self._prune_removed_progress()
        self._maybe_step_down_removed()

    # -- Output -------------------------------------------------------------------

    def has_ready(self) -> bool:
        return bool(
            self._broadcast_pending
            or self._forward_buffer
            or self._read_only.has_open_round()
            or self._messages
            or self._persisted_messages
            or self._read_states
            or self.log.unstable
            or self.log.pending_snapshot is not None
            or self.log.committed > self.log.applied
            or self._soft_state() != self._prev_soft
            or self._hard_state() != self._prev_hard
            or self.log.confs.current() != self._prev_conf
        )

    def ready(self) -> Ready:
        """Collect the work accumulated since the last :meth:`advance`."""
        self._check_no_ready_outstanding()
        self._flush()
        soft = self._soft_state()
        hard = self._hard_state()
        conf = self.log.confs.current()
        entries = list(self.log.unstable)
        ready = Ready(
            soft_state=soft if soft != self._prev_soft else None,
            hard_state=hard if hard != self._prev_hard else None,
            entries=entries,
            committed_entries=self.log.next_committed_entries(
                self._config.max_committed_size_per_ready
            ),
            messages=self._messages,
            persisted_messages=self._persisted_messages,
            read_states=self._read_states,
            must_sync=bool(entries)
            or self.log.pending_snapshot is not None
            or hard.term != self._prev_hard.term
            or hard.vote != self._prev_hard.vote,
            snapshot=self.log.pending_snapshot,
            conf_state=conf if conf != self._prev_conf else None,
        )
        self._prev_conf = conf
        self._messages = []
        self._persisted_messages = []
        self._read_states = []
        self._prev_soft = soft
        self._prev_hard = hard
        self._ready_outstanding = True
        return ready

    def advance(self, ready: Ready) -> None:
        """The driver has persisted, sent and applied ``ready``."""
        self._ready_outstanding = False
        if ready.hard_state is not None:
            self._durable_term = ready.hard_state.term
            if (
                self._won_when_durable
                and self._role is Role.CANDIDATE
                and self._durable_term == self._term
            ):
                self._won_when_durable = False
                self._become_leader()
        if ready.snapshot is not None:
            self.log.stable_snapshot_to(ready.snapshot.meta.index)
        if ready.entries:
            last = ready.entries[-1]
            self.log.stable_to(last.index, last.term)
            if self._role is Role.LEADER:
                own = self._progress[self._id]
                if own.maybe_update(self.log.stable_last_index()) and self._maybe_commit():
                    self._commit_advanced()
        if ready.committed_entries:
            self.log.applied_to(ready.committed_entries[-1].index)
        self._prune_removed_progress()
        self._maybe_step_down_removed()

    # -- Membership -----------------------------------------------------------------

    def _sync_conf(self) -> None:
        """Adopt the latest configuration in the log after it was appended to,
        truncated or replaced by a snapshot."""
        confs = self.log.confs
        if confs.version == self._conf_version:
            return
        self._conf_version = confs.version
        conf = confs.current()
        voters, learners = frozenset(conf.voters), frozenset(conf.learners)
        if voters == self._voters and learners == self._learners:
            return
        log.info(
            "node %d: configuration is now voters %s learners %s",
            self._id,
            sorted(voters),
            sorted(learners),
        )
        self._voters, self._learners = voters, learners
        if self._role is not Role.LEADER:
            return
        # A removed peer keeps its progress (it counts for nothing) until its
        # removal commits, so it receives the entry that removes it and can
        # shut itself down; see _prune_removed_progress.
        members = voters | learners
        for peer in sorted(members):
            progress = self._progress.get(peer)
            if progress is None:
                progress = Progress(
                    self.log.last_index() + 1, self._config.max_inflight_msgs, peer in learners
                )
                self._progress[peer] = progress
            progress.is_learner = peer in learners
        if self._lead_transferee != NONE and self._lead_transferee not in voters:
            self._lead_transferee = NONE
        if self._maybe_commit():
            self._broadcast_pending = True

    def _prune_removed_progress(self, give_up: bool = False) -> None:
        """Once the latest change is committed, stop replicating to each
        removed peer that holds its removal, telling it the commit index one
        last time (it then knows it was removed); with ``give_up``, also to
        those that never acknowledged it (down, or cut off)."""
        if self._role is not Role.LEADER or len(self._progress) == self._members_with_self():
            return
        last_change = self.log.confs.last_change_index()
        if last_change > self.log.committed:
            return
        members = self._voters | self._learners | {self._id}
        for peer in sorted(set(self._progress) - members):
            if self._progress[peer].match < last_change and not give_up:
                continue
            progress = self._progress.pop(peer)
            self._send(
                Heartbeat(
                    frm=self._id,
                    to=peer,
                    term=self._term,
                    commit=min(progress.match, self.log.committed),
                )
            )

    def _members_with_self(self) -> int:
        """How many peers the leader tracks when no removed peer is left."""
        return len(self._voters) + len(self._learners) + (self._id not in self._voters)

    def _maybe_step_down_removed(self) -> None:
        """A leader no longer among the voters manages the cluster until its
        removal is committed (Raft dissertation §4.2.2), then tells everyone
        the commit, hands over to an up-to-date voter and steps down."""
        if (
            self._role is not Role.LEADER
            or self._id in self._voters
            or self.log.confs.last_change_index() > self.log.committed
        ):
            return
        log.info("node %d: removal committed, stepping down", self._id)
        self._broadcast_heartbeat(0)
        last = self.log.last_index()
        for peer in sorted(self._voters):
            if self._progress[peer].match == last:
                self._send(TimeoutNow(frm=self._id, to=peer, term=self._term))
                break
        self._become_follower(self._term, NONE)

    # -- Role transitions -----------------------------------------------------------

    def _reset(self, term: int) -> None:
        if term != self._term:
            self._term = term
            self._vote = NONE
        self._leader = NONE
        self._election_elapsed = 0
        self._heartbeat_elapsed = 0
        self._randomized_election_timeout = self._config.election_tick + self._rng.randrange(
            self._config.election_tick
        )
        self._lead_transferee = NONE
        self._votes = {}
        self._won_when_durable = False
        self._read_only.reset()
        self._reads_awaiting_commit = []
        self._broadcast_pending = False
        next_index = self.log.last_index() + 1
        self._progress = {
            peer: Progress(next_index, self._config.max_inflight_msgs, peer in self._learners)
            for peer in self._voters | self._learners | {self._id}
        }
        self._progress[self._id].match = self.log.stable_last_index()

    def _become_follower(self, term: int, leader: int) -> None:
        self._reset(term)
        self._leader = leader
        self._role = Role.FOLLOWER

    def _become_pre_candidate(self) -> None:
        # Neither term nor vote change: a pre-vote is a question, not a campaign.
        self._votes = {}
        self._leader = NONE
        self._election_elapsed = 0
        self._role = Role.PRE_CANDIDATE

    def _become_candidate(self) -> None:
        self._reset(self._term + 1)
        self._vote = self._id
        self._role = Role.CANDIDATE

    def _become_leader(self) -> None:
        self._reset(self._term)
        self._leader = self._id
        self._role = Role.LEADER
        own = self._progress[self._id]
        own.become_replicate()
        # The no-op entry: committing it commits everything before it (§5.4.2)
        # and lets ReadIndex start serving.
        self.log.append([Entry(term=self._term, index=self.log.last_index() + 1)])
        self._broadcast_pending = True

    def _can_campaign(self) -> bool:
        """A voter may campaign; so may a node whose own removal is the latest,
        still uncommitted, change in its log.  Without that exception a
        removed leader that lost its quorum could leave the cluster stuck: the
        remaining voters lack the removal entry, so their logs are behind its
        log and it refuses them its vote, while it may not campaign itself.
        Votes are counted in the latest configuration (which excludes it), so
        election safety is that of any candidate; once elected it commits its
        removal and steps down."""
        if self._id in self._voters:
            return True
        confs = self.log.confs
        last = confs.last_change_index()
        return last > self.log.committed and self._id in confs.at(last - 1).voters

    def _hup(self, transfer: bool) -> None:
        if self._role is Role.LEADER or not self._can_campaign():
            return
        self._campaign(pre_vote=self._config.pre_vote and not transfer, transfer=transfer)

    def _campaign(self, pre_vote: bool, transfer: bool) -> None:
        if pre_vote:
            self._become_pre_candidate()
            vote_term = self._term + 1
        else:
            self._become_candidate()
            vote_term = self._term
        self._votes[self._id] = True
        if self._tally() is quorum.VoteResult.WON:
            if not pre_vote and self._durable_term != self._term:
                # A lone voter won on its own vote: it leads only once that
                # vote (and its term) is durable (see advance), or a crash
                # could let it lead the same term twice with different logs.
                self._won_when_durable = True
                return
            self._on_election_won(pre_vote, transfer)
            return
        last_index = self.log.last_index()
        last_term = self.log.last_term()
        for voter in sorted(self._voters - {self._id}):
            self._send(
                RequestVote(
                    frm=self._id,
                    to=voter,
                    term=vote_term,
                    last_index=last_index,
                    last_term=last_term,
                    pre_vote=pre_vote,
                    transfer=transfer,
                )
            )

    def _on_election_won(self, pre_vote: bool, transfer: bool) -> None:
        if pre_vote:
            self._campaign(pre_vote=False, transfer=transfer)
        else:
            self._become_leader()

    def _tally(self) -> quorum.VoteResult:
        return quorum.vote_result(self._voters, self._votes)

    # -- Ticks ----------------------------------------------------------------------

    def _tick_election(self) -> None:
        self._election_elapsed += 1
        # A non-voter never campaigns; its clock keeps running, so that once
        # its leader is silent for an election timeout it no longer ignores
        # vote requests as "in the leader's lease" (etcd does the same).
        if self._can_campaign() and self._election_elapsed >= self._randomized_election_timeout:
            self._election_elapsed = 0
            self._hup(transfer=False)

    def _tick_heartbeat(self) -> None:
        self._heartbeat_elapsed += 1
        self._election_elapsed += 1
        if self._election_elapsed >= self._config.election_tick:
            self._election_elapsed = 0
            if self._config.check_quorum and not self._quorum_recently_active():
                log.info("node %d: no quorum heard within an election timeout", self._id)
                self._become_follower(self._term, NONE)
                return
        if len(self._progress) > self._members_with_self():
            self._removed_elapsed += 1
            if self._removed_elapsed >= 2 * self._config.election_tick:
                self._removed_elapsed = 0
                self._prune_removed_progress(give_up=True)
        if self._lead_transferee != NONE:
            self._transfer_elapsed += 1
            if self._transfer_elapsed >= self._config.election_tick:
                log.info(
                    "node %d: leadership transfer to %d timed out", self._id, self._lead_transferee
                )
                self._lead_transferee = NONE
        if self._heartbeat_elapsed >= self._config.heartbeat_tick:
            self._heartbeat_elapsed = 0
            self._broadcast_heartbeat(self._read_only.latest_round())

    def _quorum_recently_active(self) -> bool:
        active = {self._id}
        for peer, progress in self._progress.items():
            if progress.recent_active:
                active.add(peer)
            if peer != self._id:
                progress.recent_active = False
        return quorum.has_quorum(self._voters, active)

    # -- Term logic -------------------------------------------------------------------

    def _in_leader_lease(self) -> bool:
        """Heard from a live leader within the election timeout (CheckQuorum)."""
        return (
            self._config.check_quorum
            and self._leader != NONE
            and self._election_elapsed < self._config.election_tick
        )

    def _accept_higher_term(self, message: Message) -> bool:
        """Handle a message from a later term; False if it must be ignored."""
        if isinstance(message, RequestVote):
            if not message.transfer and self._in_leader_lease():
                log.debug(
                    "node %d ignoring vote request from %d: leader %d is live",
                    self._id,
                    message.frm,
                    self._leader,
                )
                return False
            if message.pre_vote:
                return True  # answering a pre-vote never changes our term
        if isinstance(message, VoteResponse) and message.pre_vote and not message.reject:
            return True  # our term moves when the real campaign starts
        if isinstance(message, (AppendEntries, Heartbeat, InstallSnapshot)):
            self._become_follower(message.term, message.frm)
        else:
            self._become_follower(message.term, NONE)
        return True

    def _answer_stale(self, message: Message) -> None:
        """A message from an earlier term: tell the sender our term where that helps."""
        if isinstance(message, (AppendEntries, Heartbeat, InstallSnapshot)):
            # A stale leader cut off by PreVote/CheckQuorum would otherwise never
            # learn the new term and could disrupt the cluster when it returns.
            self._send(
                AppendResponse(frm=self._id, to=message.frm, term=self._term, index=0, reject=True)
            )
        elif isinstance(message, RequestVote) and message.pre_vote:
            self._send(
                VoteResponse(
                    frm=self._id, to=message.frm, term=self._term, reject=True, pre_vote=True
                )
            )

    def _handle_vote_request(self, message: RequestVote) -> None:
        can_vote = (
            self._vote == message.frm
            or (self._vote == NONE and self._leader == NONE)
            or (message.pre_vote and message.term > self._term)
        )
        if can_vote and self.log.is_up_to_date(message.last_index, message.last_term):
            self._send(
                VoteResponse(
                    frm=self._id,
                    to=message.frm,
                    term=message.term,
                    reject=False,
                    pre_vote=message.pre_vote,
                )
            )
            if not message.pre_vote:
                self._election_elapsed = 0
                self._vote = message.frm
        else:
            self._send(
                VoteResponse(
                    frm=self._id,
                    to=message.frm,
                    term=self._term,
                    reject=True,
                    pre_vote=message.pre_vote,
                )
            )

    # -- Leader -----------------------------------------------------------------------

    def _step_leader(self, message: Message) -> None:
        if isinstance(message, AppendResponse):
            self._handle_append_response(message)
        elif isinstance(message, HeartbeatResponse):
            self._handle_heartbeat_response(message)
        elif isinstance(message, SnapshotResponse):
            self._handle_snapshot_response(message)
        elif isinstance(message, Propose):
            if self._lead_transferee != NONE:
                log.debug("node %d dropping forwarded proposals: transfer in progress", self._id)
                return
            # Membership changes are never forwarded: they are validated on the leader.
            forwarded = [e for e in message.entries if e.type is EntryType.NORMAL]
            if not forwarded:
                return
            index = self.log.last_index()
            self.log.append(
                [
                    Entry(term=self._term, index=index + offset, data=entry.data)
                    for offset, entry in enumerate(forwarded, start=1)
                ]
            )
            self._broadcast_pending = True
        elif isinstance(message, ReadIndexRequest):
            self._leader_read(message.frm, message.context)
        elif isinstance(message, TransferLeader):
            self._handle_transfer(message.target)
        # Vote responses after winning, stray TimeoutNow etc. are ignored.

    def _handle_append_response(self, message: AppendResponse) -> None:
        progress = self._progress.get(message.frm)
        if progress is None:
            return
        progress.recent_active = True
        if message.reject:
            # What it was told of the commit index came with entries it refused.
            progress.commit_sent = min(progress.commit_sent, progress.match)
            hint = message.hint_index
            if message.hint_term > 0:
                hint, _ = self.log.find_conflict_by_term(message.hint_index, message.hint_term)
            if progress.maybe_decrease_to(message.index, hint):
                if progress.state is ProgressState.REPLICATE:
                    progress.become_probe()
                self._send_append(message.frm)
            return
        was_paused = progress.is_paused()
        if progress.maybe_update(message.index) or (
            progress.match == message.index and progress.state is ProgressState.PROBE
        ):
            if progress.state is ProgressState.REPLICATE:
                progress.inflights.free_through(message.index)
            elif progress.state is ProgressState.PROBE or (
                progress.match >= progress.pending_snapshot
                or progress.match + 1 >= self.log.first_index()
            ):
                # Probing found the match, or the snapshot (or the entries
                # after it) arrived: stream from here.
                progress.become_replicate()
            if self._maybe_commit():
                self._commit_advanced()
            elif was_paused and progress.match == self.log.last_index():
                # Nothing new to send, but while it was paused the follower may
                # have missed the commit index moving on: tell it now.
                self._send_append(message.frm)
            if message.frm == self._lead_transferee and progress.match == self.log.last_index():
                self._send(TimeoutNow(frm=self._id, to=message.frm, term=self._term))
            while self._send_append(message.frm, send_if_empty=False):
                pass

    def _handle_heartbeat_response(self, message: HeartbeatResponse) -> None:
        progress = self._progress.get(message.frm)
        if progress is None:
            return
        progress.recent_active = True
        progress.probe_sent = False
        if progress.snapshot_sender is not None:
            progress.snapshot_sender.on_heartbeat_response()
            self._send_snapshot_chunks(message.frm)
        elif progress.state is ProgressState.REPLICATE and progress.inflights.full():
            # Acks may have been lost: make room so replication cannot stall for good.
            progress.inflights.free_first()
        if progress.match < self.log.last_index():
            self._send_append(message.frm)
        if message.read_round:
            for request in self._read_only.ack(message.read_round, message.frm, self._voters):
                self._deliver_read(request)

    def _handle_snapshot_response(self, message: SnapshotResponse) -> None:
        progress = self._progress.get(message.frm)
        if progress is None:
            return
        progress.recent_active = True
        sender = progress.snapshot_sender
        if sender is None or sender.index != message.index:
            return  # a transfer that has since ended
        sender.on_response(message.offset, message.reject)
        self._send_snapshot_chunks(message.frm)

    def _start_snapshot(self, to: int) -> None:
        snapshot = self.log.storage.snapshot()
        if snapshot.meta.index == 0:
            log.warning(
                "node %d: peer %d needs compacted entries but no snapshot exists", self._id, to
            )
            return
        log.info("node %d: sending snapshot at %d to %d", self._id, snapshot.meta.index, to)
        sender = SnapshotSender(
            snapshot, self._config.max_snapshot_chunk, self._config.snapshot_window
        )
        self._progress[to].become_snapshot(sender)
        self._send_snapshot_chunks(to)

    def _send_snapshot_chunks(self, to: int) -> None:
        sender = self._progress[to].snapshot_sender
        if sender is not None:
            for chunk in sender.next_chunks(self._id, to, self._term):
                self._send(chunk)

    def _can_commit_at(self, index: int) -> bool:
        """May a quorum match at ``index`` commit it?  Only entries of the
        leader's current term are committed by counting replicas (§5.4.2);
        earlier ones are committed indirectly, by the Log Matching property."""
        return self.log.term_or_zero(index) == self._term

    def _commit_advanced(self) -> None:
        # A committed membership change is always told at once: members
        # learn promptly that they were added, promoted or removed.
        if self._config.eager_commit_broadcast or self._committed_conf_change:
            self._broadcast_pending = True

    def _maybe_commit(self) -> bool:
        match = {peer: progress.match for peer, progress in self._progress.items()}
        index = quorum.committed_index(self._voters, match)
        previous = self.log.committed
        if index <= previous or not self._can_commit_at(index):
            return False
        self.log.commit_to(index)
        self._committed_conf_change = previous < self.log.confs.last_change_index() <= index
        if self._reads_awaiting_commit and self._committed_in_current_term():
            waiting, self._reads_awaiting_commit = self._reads_awaiting_commit, []
            for requester, context in waiting:
                self._leader_read(requester, context)
        return True

    def _committed_in_current_term(self) -> bool:
        return self.log.term_or_zero(self.log.committed) == self._term

    def _leader_read(self, requester: int, context: bytes) -> None:
        if not self._committed_in_current_term():
            self._reads_awaiting_commit.append((requester, context))
            return
        request = ReadRequest(self.log.committed, requester, context)
        if self._voters == {self._id}:
            self._deliver_read(request)
        else:
            self._read_only.add(request, self._id)

    def _deliver_read(self, request: ReadRequest) -> None:
        if request.requester == self._id:
            self._read_states.append(ReadState(request.index, request.context))
        else:
            self._send(
                ReadIndexResponse(
                    frm=self._id,
                    to=request.requester,
                    term=self._term,
                    context=request.context,
                    index=request.index,
                )
            )

    def _handle_transfer(self, target: int) -> None:
        if target not in self._voters:
            log.info("node %d: refusing to transfer leadership to non-voter %d", self._id, target)
            return
        if self._lead_transferee == target or target == self._id:
            return
        # Counted apart from the CheckQuorum timer, so that transfer requests
        # cannot postpone the step-down of a leader cut off from its quorum.
        self._transfer_elapsed = 0
        self._lead_transferee = target
        if self._progress[target].match == self.log.last_index():
            self._send(TimeoutNow(frm=self._id, to=target, term=self._term))
        else:
            self._send_append(target)

    def _send_append(self, to: int, send_if_empty: bool = True) -> bool:
        """Send ``to`` the entries it needs next, if flow control allows.

        Returns whether a message was sent.
        """
        progress = self._progress[to]
        if progress.is_paused():
            return False
        prev_index = progress.next - 1
        try:
            prev_term = self.log.term(prev_index)
            entries = self.log.entries_from(progress.next, self._config.max_size_per_msg)
        except CompactedError:
            self._start_snapshot(to)
            return False
        if not entries and not send_if_empty:
            return False
        last_sent = entries[-1].index if entries else prev_index
        progress.commit_sent = max(progress.commit_sent, min(self.log.committed, last_sent))
        self._send(
            AppendEntries(
                frm=self._id,
                to=to,
                term=self._term,
                prev_index=prev_index,
                prev_term=prev_term,
                entries=entries,
                commit=self.log.committed,
            )
        )
        progress.sent_entries(entries[-1].index if entries else None)
        return True

    def _broadcast_heartbeat(self, read_round: int) -> None:
        for peer, progress in sorted(self._progress.items()):
            if peer == self._id:
                continue
            commit = min(progress.match, self.log.committed)
            progress.commit_sent = max(progress.commit_sent, commit)
            self._send(
                Heartbeat(
                    frm=self._id,
                    to=peer,
                    term=self._term,
                    commit=commit,
                    read_round=read_round,
                )
            )

    def _flush(self) -> None:
        """Send what was batched since the last Ready: appends for new
        proposals or a new commit index, heartbeats for a read round, and
        proposals forwarded by a follower."""
        if self._role is Role.LEADER:
            round_id = self._read_only.take_open_round()
            if round_id:
                self._broadcast_heartbeat(round_id)
            if self._broadcast_pending:
                for peer in sorted(self._progress):
                    if peer != self._id and self._send_append(peer):
                        while self._send_append(peer, send_if_empty=False):
                            pass
        elif self._forward_buffer:
            if self._leader != NONE:
                self._send(
                    Propose(
                        frm=self._id,
                        to=self._leader,
                        term=self._term,
                        entries=self._forward_buffer,
                    )
                )
            else:
                log.debug(
                    "node %d dropping %d forwarded proposals: leader lost",
                    self._id,
                    len(self._forward_buffer),
                )
        self._forward_buffer = []
        self._broadcast_pending = False

    # -- Followers and candidates -------------------------------------------------------

    def _step_follower(self, message: Message) -> None:
        if isinstance(message, AppendEntries):
            self._election_elapsed = 0
            self._leader = message.frm
            self._handle_append_entries(message)
        elif isinstance(message, Heartbeat):
            self._election_elapsed = 0
            self._leader = message.frm
            self._handle_heartbeat(message)
        elif isinstance(message, InstallSnapshot):
            self._election_elapsed = 0
            self._leader = message.frm
            self._handle_install_snapshot(message)
        elif isinstance(message, Propose):
            if self._leader != NONE and not self._config.disable_proposal_forwarding:
                self._forward_buffer.extend(message.entries)
        elif isinstance(message, ReadIndexResponse):
            self._read_states.append(ReadState(message.index, message.context))
        elif isinstance(message, TimeoutNow):
            log.info("node %d: TimeoutNow from %d, campaigning", self._id, message.frm)
            self._hup(transfer=True)
        elif isinstance(message, TransferLeader) and self._leader != NONE:
            self._send(
                TransferLeader(
                    frm=self._id, to=self._leader, term=self._term, target=message.target
                )
            )

    def _step_candidate(self, message: Message) -> None:
        if isinstance(message, (AppendEntries, Heartbeat, InstallSnapshot)):
            # A leader exists in our term (or the one we asked to campaign for).
            self._become_follower(message.term, message.frm)
            self._step_follower(message)
        elif isinstance(message, VoteResponse):
            if message.pre_vote != (self._role is Role.PRE_CANDIDATE):
                return
            self._votes[message.frm] = not message.reject
            result = self._tally()
            if result is quorum.VoteResult.WON:
                self._on_election_won(message.pre_vote, transfer=False)
            elif result is quorum.VoteResult.LOST:
                self._become_follower(self._term, NONE)

    def _handle_append_entries(self, message: AppendEntries) -> None:
        if message.prev_index < self.log.committed:
            # Everything up to our commit index already matches the leader's log.
            self._send(
                AppendResponse(
                    frm=self._id, to=message.frm, term=self._term, index=self.log.committed
                )
            )
            return
        last_new = self.log.maybe_append(
            message.prev_index, message.prev_term, message.commit, message.entries
        )
        self._sync_conf()
        if last_new is not None:
            self._send(
                AppendResponse(frm=self._id, to=message.frm, term=self._term, index=last_new)
            )
            return
        hint_index, hint_term = self.log.find_conflict_by_term(
            min(message.prev_index, self.log.last_index()), message.prev_term
        )
        self._send(
            AppendResponse(
                frm=self._id,
                to=message.frm,
                term=self._term,
                index=message.prev_index,
                reject=True,
                hint_index=hint_index,
                hint_term=hint_term,
            )
        )

    def _handle_install_snapshot(self, chunk: InstallSnapshot) -> None:
        meta = chunk.meta
        if meta.index <= self.log.committed or self.log.match_term(meta.index, meta.term):
            # Nothing to install: we already hold everything the snapshot covers.
            self._snapshot_receiver = None
            self.log.commit_to(max(self.log.committed, min(meta.index, self.log.last_index())))
            self._send(
                AppendResponse(
                    frm=self._id, to=chunk.frm, term=self._term, index=self.log.committed
                )
            )
            return
        receiver = self._snapshot_receiver
        if receiver is None or not receiver.matches(chunk):
            if chunk.offset != 0:
                self._send(
                    SnapshotResponse(
                        frm=self._id,
                        to=chunk.frm,
                        term=self._term,
                        index=meta.index,
                        offset=0,
                        reject=True,
                    )
                )
                return
            receiver = self._snapshot_receiver = SnapshotReceiver(chunk)
        result = receiver.accept(chunk)
        if result.snapshot is None:
            self._send(
                SnapshotResponse(
                    frm=self._id,
                    to=chunk.frm,
                    term=self._term,
                    index=meta.index,
                    offset=result.offset,
                    reject=result.reject,
                )
            )
            return
        self._snapshot_receiver = None
        self._restore(result.snapshot)
        # Sent only after the snapshot is durable (persisted_messages).
        self._send(AppendResponse(frm=self._id, to=chunk.frm, term=self._term, index=meta.index))

    def _restore(self, snapshot: Snapshot) -> None:
        log.info(
            "node %d: restoring snapshot at index %d term %d",
            self._id,
            snapshot.meta.index,
            snapshot.meta.term,
        )
        self.log.restore(snapshot)
        self._sync_conf()

    def _handle_heartbeat(self, message: Heartbeat) -> None:
        self.log.commit_to(message.commit)
        self._send(
            HeartbeatResponse(
                frm=self._id, to=message.frm, term=self._term, read_round=message.read_round
            )
        )

    # -- Plumbing ---------------------------------------------------------------------

    def _send(self, message: Message) -> None:
        # A leader's own traffic may leave before its disk write only once its
        # term is durable.  Elected by others, it is (its vote requests waited
        # for it); a lone voter elects itself at once, and its first appends
        # (to learners, say) must not carry a term a crash could forget, or a
        # second leadership of that term could reuse (index, term) pairs.
        if (
            self._role is Role.LEADER
            and isinstance(message, _LEADER_TRAFFIC)
            and self._durable_term == self._term
        ):
            self._messages.append(message)
        else:
            self._persisted_messages.append(message)

    def _soft_state(self) -> SoftState:
        return SoftState(self._leader, self._role)

    def _hard_state(self) -> HardState:
        return HardState(term=self._term, vote=self._vote, commit=self.log.committed)

    def _check_no_ready_outstanding(self) -> None:
        if self._ready_outstanding:
            raise RuntimeError("advance() must be called for the previous ready() first")
