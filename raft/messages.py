"""Log entries, persistent state and the messages Raft peers exchange.

Every type here is a ``msgspec.Struct`` with ``array_like=True``: encoded as a
msgpack array (positional, compact), which suits hot peer traffic and the WAL.
Messages form one tagged union, :data:`Message`, so a single reusable decoder
turns any peer frame into the right type or raises ``msgspec.ValidationError``.

Node ids are positive integers; ``0`` (:data:`NONE`) means "nobody" (no vote,
no known leader).  Terms and indexes start at 0 for "nothing yet"; the first
real log entry has index 1.
"""

from __future__ import annotations

import enum

import msgspec

NONE = 0
"""The node id that stands for "no node" (no vote cast, no leader known)."""


class EntryType(enum.IntEnum):
    NORMAL = 0
    """Application data (``data`` may be empty: the leader's no-op at term start)."""
    CONF_CHANGE = 1
    """A membership change (used once membership changes exist)."""


class Entry(msgspec.Struct, array_like=True, frozen=True, gc=False):
    """One log entry. ``(index, term)`` identifies it across the cluster."""

    term: int
    index: int
    data: bytes = b""
    type: EntryType = EntryType.NORMAL

    def size(self) -> int:
        """Approximate encoded size in bytes, used for batching caps."""
        return len(self.data) + 16


class HardState(msgspec.Struct, array_like=True, frozen=True):
    """The state that must be durable before any message that depends on it
    leaves the node: the current term, the vote cast in it, and the commit index.
    """

    term: int = 0
    vote: int = NONE
    commit: int = 0


class ConfState(msgspec.Struct, array_like=True, frozen=True):
    """Cluster membership: voters decide elections and commits, learners only replicate."""

    voters: tuple[int, ...] = ()
    learners: tuple[int, ...] = ()


class SnapshotMeta(msgspec.Struct, array_like=True, frozen=True):
    """Where a snapshot ends: the last entry it covers and the membership at that point."""

    index: int = 0
    term: int = 0
    conf: ConfState = ConfState()


class Snapshot(msgspec.Struct, array_like=True, frozen=True):
    """A state machine image covering every entry up to ``meta.index``."""

    meta: SnapshotMeta
    data: bytes


# --- Peer messages -----------------------------------------------------------------
#
# Every message carries ``frm`` (sender), ``to`` (recipient) and ``term`` (the
# sender's term, or the proposed term for a pre-vote).  A message with term 0 is
# "local" to the term logic (proposal forwarding carries the sender's term anyway).


class AppendEntries(msgspec.Struct, array_like=True, tag=True, gc=False):
    """Leader -> follower: append ``entries`` after ``(prev_index, prev_term)``."""

    frm: int
    to: int
    term: int
    prev_index: int
    prev_term: int
    entries: list[Entry]
    commit: int


class AppendResponse(msgspec.Struct, array_like=True, tag=True, gc=False):
    """Follower -> leader.

    On success ``index`` is the last index now known to match the leader.  On
    rejection ``index`` echoes the rejected ``prev_index`` and ``(hint_index,
    hint_term)`` names the follower's best guess of where the logs may match:
    the last index at or below ``prev_index`` whose term is ``<=`` the leader's
    ``prev_term``, which lets the leader skip a whole term per round trip.
    """

    frm: int
    to: int
    term: int
    index: int
    reject: bool = False
    hint_index: int = 0
    hint_term: int = 0


class Heartbeat(msgspec.Struct, array_like=True, tag=True, gc=False):
    """Leader -> follower: "I am still leader".

    ``commit`` is capped at what the follower is known to have.  ``read_round`` is
    non-zero when the heartbeat also confirms leadership for pending ReadIndex
    requests; the follower echoes it.
    """

    frm: int
    to: int
    term: int
    commit: int
    read_round: int = 0


class HeartbeatResponse(msgspec.Struct, array_like=True, tag=True, gc=False):
    frm: int
    to: int
    term: int
    read_round: int = 0


class RequestVote(msgspec.Struct, array_like=True, tag=True, gc=False):
    """Candidate -> voter.

    ``pre_vote``: a PreVote probe; ``term`` is the term the candidate *would*
    campaign in, and nobody changes its own term because of it.
    ``transfer``: the campaign follows a leadership transfer (TimeoutNow), so
    voters must not ignore it because they heard from a leader recently.
    """

    frm: int
    to: int
    term: int
    last_index: int
    last_term: int
    pre_vote: bool = False
    transfer: bool = False


class VoteResponse(msgspec.Struct, array_like=True, tag=True, gc=False):
    frm: int
    to: int
    term: int
    reject: bool
    pre_vote: bool = False


class Propose(msgspec.Struct, array_like=True, tag=True, gc=False):
    """Follower -> leader: proposals forwarded for the leader to append."""

    frm: int
    to: int
    term: int
    entries: list[Entry]


class ReadIndexRequest(msgspec.Struct, array_like=True, tag=True, gc=False):
    """Follower -> leader: a forwarded ReadIndex request, identified by ``context``."""

    frm: int
    to: int
    term: int
    context: bytes


class ReadIndexResponse(msgspec.Struct, array_like=True, tag=True, gc=False):
    """Leader -> follower: the read identified by ``context`` may be served once
    the follower has applied ``index``."""

    frm: int
    to: int
    term: int
    context: bytes
    index: int


class TransferLeader(msgspec.Struct, array_like=True, tag=True, gc=False):
    """Follower -> leader: please hand leadership to ``target``."""

    frm: int
    to: int
    term: int
    target: int


class TimeoutNow(msgspec.Struct, array_like=True, tag=True, gc=False):
    """Leader -> transfer target: campaign now, skipping PreVote."""

    frm: int
    to: int
    term: int


class InstallSnapshot(msgspec.Struct, array_like=True, tag=True, gc=False):
    """Leader -> follower: one chunk of a snapshot, bytes ``[offset, offset + len(data))``.

    ``total_size`` and ``checksum`` (CRC32 of the whole snapshot data) identify
    the transfer together with ``meta``; ``chunk_checksum`` guards this chunk.
    ``done`` marks the last chunk.
    """

    frm: int
    to: int
    term: int
    meta: SnapshotMeta
    offset: int
    data: bytes
    total_size: int
    checksum: int
    chunk_checksum: int
    done: bool


class SnapshotResponse(msgspec.Struct, array_like=True, tag=True, gc=False):
    """Follower -> leader: for the snapshot ending at ``index``, every byte
    before ``offset`` has arrived intact; ``reject`` asks to resume from there
    (a gap, a bad chunk, or a transfer the follower does not know)."""

    frm: int
    to: int
    term: int
    index: int
    offset: int
    reject: bool = False


Message = (
    AppendEntries
    | AppendResponse
    | Heartbeat
    | HeartbeatResponse
    | RequestVote
    | VoteResponse
    | Propose
    | ReadIndexRequest
    | ReadIndexResponse
    | TransferLeader
    | TimeoutNow
    | InstallSnapshot
    | SnapshotResponse
)
"""Every message one Raft peer may send another."""

_encoder = msgspec.msgpack.Encoder()
_message_decoder = msgspec.msgpack.Decoder(Message)


def encode_message(message: Message) -> bytes:
    """Encode ``message`` as msgpack."""
    return _encoder.encode(message)


def decode_message(payload: bytes) -> Message:
    """Decode a peer frame; raises ``msgspec.DecodeError`` (or its subclass
    ``ValidationError``) on malformed or unknown input, never anything else."""
    result: Message = _message_decoder.decode(payload)
    return result
