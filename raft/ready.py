"""What the core hands its driver: a :class:`Ready` batch of work.

The contract, in order (the driver must not feed the core any other input
between :meth:`RaftCore.ready` and :meth:`RaftCore.advance`):

0. If :attr:`Ready.conf_state` is set the membership changed: be ready to
   reach new members (and stop reaching removed ones once they are told)
   before sending anything.
1. Send :attr:`Ready.messages` at any time, even before persisting: they are
   the leader's replication traffic, which depends on nothing it has not
   already made durable (Raft thesis §10.2.1: a leader may write its own log in
   parallel with sending it).
2. Persist :attr:`Ready.snapshot` if set, then :attr:`Ready.entries` (first
   truncating any stored entries at or after the first index written) and then
   :attr:`Ready.hard_state` if not ``None``.  When :attr:`Ready.must_sync` is
   true this write must be durable (fsynced) before step 3.
3. Send :attr:`Ready.persisted_messages`: votes, vote requests and append
   acknowledgements, which promise that the state in step 2 is durable.
4. Restore the state machine from :attr:`Ready.snapshot` if set, then apply
   :attr:`Ready.committed_entries` to the state machine, in order, and
   serve the reads in :attr:`Ready.read_states` once the state machine has
   applied up to their index.
5. Call :meth:`RaftCore.advance` with this same Ready.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from raft.messages import ConfState, Entry, HardState, Message, Snapshot


class Role(enum.Enum):
    FOLLOWER = "follower"
    PRE_CANDIDATE = "pre-candidate"
    CANDIDATE = "candidate"
    LEADER = "leader"


@dataclass(frozen=True)
class SoftState:
    """Volatile state worth reporting (never persisted)."""

    leader: int
    role: Role


@dataclass(frozen=True)
class ReadState:
    """A linearizable read may be served once the state machine has applied ``index``.

    ``context`` is the opaque value the caller passed to ``read_index``.
    """

    index: int
    context: bytes


@dataclass(frozen=True)
class Ready:
    """One batch of work for the driver; see the module docstring for the order."""

    soft_state: SoftState | None
    """Set when the leader or role changed since the previous Ready."""
    hard_state: HardState | None
    """Set when term, vote or commit changed and must be persisted."""
    entries: list[Entry] = field(default_factory=list)
    """Entries to append to stable storage (may overwrite a conflicting suffix)."""
    committed_entries: list[Entry] = field(default_factory=list)
    """Committed entries to apply, in index order, after persisting."""
    messages: list[Message] = field(default_factory=list)
    """Messages that may be sent before the persist step."""
    persisted_messages: list[Message] = field(default_factory=list)
    """Messages that may be sent only after the persist step is durable."""
    read_states: list[ReadState] = field(default_factory=list)
    """Linearizable reads confirmed since the previous Ready."""
    must_sync: bool = False
    """True if the persist step must be fsynced (new entries, or term/vote changed)."""
    snapshot: Snapshot | None = None
    """A snapshot received from the leader: persist it before the entries (it
    replaces the log up to its index) and restore the state machine from it
    before applying the committed entries."""
    conf_state: ConfState | None = None
    """Set when the membership in effect changed since the previous Ready (a
    conf change was appended, truncated, or came with a snapshot): the driver
    connects to new members and drops removed ones."""
