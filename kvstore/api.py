"""The client protocol: request, response and error types, and their framing.

Shapes follow etcd's v3 API (``api/etcdserverpb/rpc.proto``) so etcd users feel
at home: one cluster-wide ``revision``; every key carries ``create_revision``,
``mod_revision``, ``version`` and ``lease``; ranges are ``[key, range_end)``.

Every type is a ``msgspec.Struct``; requests and responses are tagged unions
encoded as msgpack.  A client sends :class:`ClientFrame`; the member answers with
one :class:`ServerFrame` carrying the same ``request_id``, so many requests can be
in flight on one connection.

Errors are :class:`Error` values, never exceptions on the wire.  Each states
whether the operation **definitely did not happen** (``definite=True``: safe to
retry anywhere) or **may have happened** (``definite=False``: the outcome is
unknown, as after a timeout while a proposal was in flight).  A checker needs
this distinction; so does a careful client.

This module depends on nothing of the server, so a client install stays small.
"""

from __future__ import annotations

import enum

import msgspec

# -- Limits (etcd's defaults) -------------------------------------------------------

MAX_REQUEST_BYTES = 1_572_864
"""Largest encoded request accepted (etcd ``--max-request-bytes``)."""
MAX_TXN_OPS = 128
"""Most operations in one side of a txn (etcd ``--max-txn-ops``)."""
MAX_FRAME_BYTES = 4 * 1024 * 1024
"""Hard cap on any frame on a client connection, checked before the body is read."""
SNAPSHOT_CHUNK_BYTES = 1024 * 1024
"""Payload bytes per message of a snapshot stream, unless the request asks for fewer."""
MAX_SNAPSHOT_CHUNK_BYTES = 2 * 1024 * 1024
"""Most payload bytes one snapshot message may carry (well under ``MAX_FRAME_BYTES``)."""


# -- Data model -----------------------------------------------------------------------


class KeyValue(msgspec.Struct, array_like=True, frozen=True, gc=False):
    key: bytes
    create_revision: int
    mod_revision: int
    version: int
    value: bytes = b""
    lease: int = 0


class ResponseHeader(msgspec.Struct, array_like=True, frozen=True):
    cluster_id: int = 0
    member_id: int = 0
    revision: int = 0
    raft_term: int = 0


class SortOrder(enum.IntEnum):
    NONE = 0
    ASCEND = 1
    DESCEND = 2


class SortTarget(enum.IntEnum):
    KEY = 0
    VERSION = 1
    CREATE = 2
    MOD = 3
    VALUE = 4


class CompareResult(enum.IntEnum):
    EQUAL = 0
    GREATER = 1
    LESS = 2
    NOT_EQUAL = 3


class CompareTarget(enum.IntEnum):
    VERSION = 0
    CREATE = 1
    MOD = 2
    VALUE = 3
    LEASE = 4


class _Message(msgspec.Struct, kw_only=True, omit_defaults=True):
    """Base of requests and responses: keyword construction, defaults left off the wire."""


# -- Requests -------------------------------------------------------------------------


class RangeRequest(_Message, tag="range"):
    """Read ``key``, or ``[key, range_end)`` when ``range_end`` is set.

    ``range_end == b"\\0"`` means every key ``>= key``.  ``revision <= 0`` reads
    the latest revision.  ``serializable`` reads the member's local state
    (possibly stale) instead of a linearizable read.
    """

    key: bytes
    range_end: bytes = b""
    limit: int = 0
    revision: int = 0
    sort_order: SortOrder = SortOrder.NONE
    sort_target: SortTarget = SortTarget.KEY
    serializable: bool = False
    keys_only: bool = False
    count_only: bool = False
    min_mod_revision: int = 0
    max_mod_revision: int = 0
    min_create_revision: int = 0
    max_create_revision: int = 0


class PutRequest(_Message, tag="put"):
    key: bytes
    value: bytes = b""
    lease: int = 0
    prev_kv: bool = False
    ignore_value: bool = False
    """Keep the current value (the key must exist)."""
    ignore_lease: bool = False
    """Keep the current lease (the key must exist)."""


class DeleteRangeRequest(_Message, tag="delete_range"):
    key: bytes
    range_end: bytes = b""
    prev_kv: bool = False


class Compare(_Message):
    """``target`` of ``key`` (every key in ``[key, range_end)`` if set) compared
    with ``value`` by ``result``.  ``value`` is ``bytes`` for VALUE, ``int`` otherwise."""

    key: bytes
    target: CompareTarget
    result: CompareResult = CompareResult.EQUAL
    value: int | bytes = 0
    range_end: bytes = b""


class TxnRequest(_Message, tag="txn"):
    """If every compare holds, run ``success`` else ``failure``, atomically, as
    one revision.  Operations run in list order; a key may be written once."""

    compare: list[Compare] = msgspec.field(default_factory=list)
    success: list[RequestOp] = msgspec.field(default_factory=list)
    failure: list[RequestOp] = msgspec.field(default_factory=list)


class CompactionRequest(_Message, tag="compaction"):
    """Discard history before ``revision``; reads below it answer ``compacted``."""

    revision: int
    physical: bool = False


class StatusRequest(_Message, tag="status"):
    """The answering member's view of itself and the cluster (never forwarded)."""


class LeaseGrantRequest(_Message, tag="lease_grant"):
    """Grant a lease of ``ttl`` seconds (raised to the minimum TTL, 1.5 election
    timeouts, if lower).  ``id == 0`` lets the server choose the id."""

    ttl: int
    id: int = 0


class LeaseRevokeRequest(_Message, tag="lease_revoke"):
    """Revoke lease ``id``: every key attached to it is deleted, in one revision."""

    id: int


class LeaseKeepAliveRequest(_Message, tag="lease_keepalive"):
    """Renew lease ``id`` for its whole TTL.  Served by the leader only (others
    answer ``not_leader`` naming it)."""

    id: int


class LeaseTimeToLiveRequest(_Message, tag="lease_timetolive"):
    """How long lease ``id`` has left; with ``keys``, the keys attached to it."""

    id: int
    keys: bool = False


class LeaseLeasesRequest(_Message, tag="lease_leases"):
    """Every live lease id."""


class WatchCreateRequest(_Message, tag="watch_create"):
    """Watch ``key``, or ``[key, range_end)``, from ``start_revision``
    (inclusive; 0 = the next revision).

    The answer is a *stream*: the member sends many :class:`WatchResponse`
    frames carrying the create request's ``request_id`` (which is also the
    ``watch_id``): first one with ``created``, then events, all events of a
    revision in one response, in revision order, none skipped or repeated;
    and last one with ``canceled`` (after a cancel request, or when the watch
    cannot go on: ``compact_revision`` is then set if history it needed was
    compacted, so the client re-lists from there).
    """

    key: bytes
    range_end: bytes = b""
    start_revision: int = 0
    prev_kv: bool = False
    no_put: bool = False
    no_delete: bool = False
    progress_notify: bool = False
    """Send an empty response (a progress notification) now and then while idle."""


class WatchCancelRequest(_Message, tag="watch_cancel"):
    watch_id: int


class WatchProgressRequest(_Message, tag="watch_progress"):
    """Ask every watch on this connection for a progress notification now."""


class SnapshotRequest(_Message, tag="snapshot"):
    """A consistent copy of the member's whole KV state, for a backup.

    The answer is a *stream* of :class:`SnapshotResponse` frames carrying the
    request's ``request_id``: the first has ``info``, then come the payload's
    bytes in ``blob`` chunks of at most ``chunk_bytes`` (0: the member's
    default, :data:`SNAPSHOT_CHUNK_BYTES`; never above
    :data:`MAX_SNAPSHOT_CHUNK_BYTES`), and the last has ``sha256``, the
    SHA-256 of the whole payload.  An :class:`Error` frame instead ends the
    stream early.  The copy reflects every write acknowledged before the
    request (a ReadIndex round first) unless ``serializable``.
    """

    chunk_bytes: int = 0
    serializable: bool = False


class MemberAddRequest(_Message, tag="member_add"):
    """Add a member that will listen for peers on ``peer_url`` (``host:port``).
    Served by the leader; the answer names the new member's id."""

    name: str
    peer_url: str
    is_learner: bool = False


class MemberRemoveRequest(_Message, tag="member_remove"):
    """Remove member ``id`` (the leader first hands leadership over if it is
    the one removed).  Its id is never used again."""

    id: int


class MemberPromoteRequest(_Message, tag="member_promote"):
    """Make learner ``id`` a voter; refused until it has caught up with the leader."""

    id: int


class MemberListRequest(_Message, tag="member_list"):
    """Every member; ``linearizable`` confirms the table with the leader first."""

    linearizable: bool = True


class MoveLeaderRequest(_Message, tag="move_leader"):
    """Hand leadership to voter ``target_id``; answered once it leads."""

    target_id: int


RequestOp = RangeRequest | PutRequest | DeleteRangeRequest | TxnRequest
"""What a txn may contain."""

Request = (
    RangeRequest
    | PutRequest
    | DeleteRangeRequest
    | TxnRequest
    | CompactionRequest
    | StatusRequest
    | LeaseGrantRequest
    | LeaseRevokeRequest
    | LeaseKeepAliveRequest
    | LeaseTimeToLiveRequest
    | LeaseLeasesRequest
    | WatchCreateRequest
    | WatchCancelRequest
    | WatchProgressRequest
    | SnapshotRequest
    | MemberAddRequest
    | MemberRemoveRequest
    | MemberPromoteRequest
    | MemberListRequest
    | MoveLeaderRequest
)
"""Every request a client may send."""


# -- Responses ------------------------------------------------------------------------


class RangeResponse(_Message, tag="range"):
    header: ResponseHeader
    kvs: list[KeyValue] = msgspec.field(default_factory=list)
    more: bool = False
    """More keys matched than ``limit`` allowed."""
    count: int = 0
    """How many keys matched in all."""


class PutResponse(_Message, tag="put"):
    header: ResponseHeader
    prev_kv: KeyValue | None = None


class DeleteRangeResponse(_Message, tag="delete_range"):
    header: ResponseHeader
    deleted: int = 0
    prev_kvs: list[KeyValue] = msgspec.field(default_factory=list)


class TxnResponse(_Message, tag="txn"):
    header: ResponseHeader
    succeeded: bool
    responses: list[ResponseOp] = msgspec.field(default_factory=list)


class CompactionResponse(_Message, tag="compaction"):
    header: ResponseHeader


class StatusResponse(_Message, tag="status"):
    header: ResponseHeader
    name: str
    leader: int
    raft_term: int
    raft_index: int
    raft_applied_index: int
    revision: int
    compact_revision: int
    keys: int
    is_learner: bool = False
    version: str = ""
    client_url: str = ""
    members: dict[int, str] = msgspec.field(default_factory=dict)
    """Member id -> client address, as this member knows them."""


class EventType(enum.IntEnum):
    PUT = 0
    DELETE = 1


class Event(msgspec.Struct, array_like=True, frozen=True, gc=False):
    """One change to one key.  For DELETE, ``kv`` carries the key and the
    deleting revision as ``mod_revision`` (everything else zero)."""

    type: EventType
    kv: KeyValue
    prev_kv: KeyValue | None = None


class LeaseGrantResponse(_Message, tag="lease_grant"):
    header: ResponseHeader
    id: int
    ttl: int


class LeaseRevokeResponse(_Message, tag="lease_revoke"):
    header: ResponseHeader


class LeaseKeepAliveResponse(_Message, tag="lease_keepalive"):
    header: ResponseHeader
    id: int
    ttl: int
    """Seconds the lease now has; 0 if it has expired or does not exist."""


class LeaseTimeToLiveResponse(_Message, tag="lease_timetolive"):
    header: ResponseHeader
    id: int
    ttl: int
    """Seconds left; -1 if the lease has expired or does not exist."""
    granted_ttl: int = 0
    keys: list[bytes] = msgspec.field(default_factory=list)


class LeaseLeasesResponse(_Message, tag="lease_leases"):
    header: ResponseHeader
    leases: list[int] = msgspec.field(default_factory=list)


class WatchResponse(_Message, tag="watch"):
    """One message of a watch stream (see :class:`WatchCreateRequest`).

    A response with no events and neither ``created`` nor ``canceled`` is a
    progress notification: every event up to ``header.revision`` has been sent.
    """

    header: ResponseHeader
    watch_id: int
    created: bool = False
    canceled: bool = False
    compact_revision: int = 0
    cancel_reason: str = ""
    events: list[Event] = msgspec.field(default_factory=list)


class SnapshotInfo(msgspec.Struct, array_like=True, frozen=True):
    """What a snapshot stream carries: the state it copies and the payload's size.

    ``raft_index`` is the last log entry applied to the copied state (and
    ``raft_term`` its term); ``format`` the version of the payload's encoding
    (the state machine's snapshot format).
    """

    raft_index: int
    raft_term: int
    revision: int
    compact_revision: int
    keys: int
    size: int
    format: int


class SnapshotResponse(_Message, tag="snapshot"):
    """One message of a snapshot stream (see :class:`SnapshotRequest`).

    ``remaining_bytes`` is how much of the payload is still to come after
    this message's ``blob``; the last message has none left and ``sha256``.
    """

    header: ResponseHeader
    info: SnapshotInfo | None = None
    blob: bytes = b""
    remaining_bytes: int = 0
    sha256: bytes = b""


class Member(_Message):
    """One member as ``member list`` shows it.  ``client_url`` is empty while
    the answering member has not heard from it; ``status`` is ``started`` once
    it has, ``unstarted`` before (a member added but not yet running)."""

    id: int
    name: str
    peer_url: str
    client_url: str = ""
    is_learner: bool = False
    status: str = ""


class MemberAddResponse(_Message, tag="member_add"):
    header: ResponseHeader
    member: Member
    members: list[Member]
    cluster_id: int = 0


class MemberRemoveResponse(_Message, tag="member_remove"):
    header: ResponseHeader
    members: list[Member]


class MemberPromoteResponse(_Message, tag="member_promote"):
    header: ResponseHeader
    members: list[Member]


class MemberListResponse(_Message, tag="member_list"):
    header: ResponseHeader
    members: list[Member]
    leader: int = 0


class MoveLeaderResponse(_Message, tag="move_leader"):
    header: ResponseHeader
    leader: int = 0


ResponseOp = RangeResponse | PutResponse | DeleteRangeResponse | TxnResponse

Response = (
    RangeResponse
    | PutResponse
    | DeleteRangeResponse
    | TxnResponse
    | CompactionResponse
    | StatusResponse
    | LeaseGrantResponse
    | LeaseRevokeResponse
    | LeaseKeepAliveResponse
    | LeaseTimeToLiveResponse
    | LeaseLeasesResponse
    | WatchResponse
    | SnapshotResponse
    | MemberAddResponse
    | MemberRemoveResponse
    | MemberPromoteResponse
    | MemberListResponse
    | MoveLeaderResponse
)


# -- Errors ---------------------------------------------------------------------------


class ErrorCode(enum.StrEnum):
    # Definite: the request was rejected before anything happened.
    INVALID_ARGUMENT = "invalid_argument"
    EMPTY_KEY = "empty_key"
    REQUEST_TOO_LARGE = "request_too_large"
    TOO_MANY_OPS = "too_many_ops"
    DUPLICATE_KEY = "duplicate_key"
    KEY_NOT_FOUND = "key_not_found"
    COMPACTED = "compacted"
    FUTURE_REVISION = "future_revision"
    LEASE_NOT_FOUND = "lease_not_found"
    NO_LEADER = "no_leader"
    NOT_LEADER = "not_leader"
    MALFORMED = "malformed"
    UNKNOWN_REQUEST = "unknown_request"
    MEMBER_NOT_FOUND = "member_not_found"
    MEMBER_EXISTS = "member_exists"
    FAILED_PRECONDITION = "failed_precondition"
    """The cluster is not in a state to do it now (a learner not caught up, a
    membership change already in progress...); the message says which."""
    # Indefinite unless stated otherwise: the outcome is unknown.
    TIMEOUT = "timeout"
    LEADER_CHANGED = "leader_changed"
    STOPPED = "stopped"
    UNAVAILABLE = "unavailable"
    INTERNAL = "internal"


class Error(_Message, tag="error"):
    """A failed request.

    ``definite``: True if the operation definitely did not happen, False if it
    may have.  ``leader`` is the client address of the leader when known (for
    ``not_leader``), so a client can go there directly.  ``compact_revision``
    is set with ``compacted``.
    """

    code: ErrorCode
    message: str
    definite: bool
    leader: str = ""
    compact_revision: int = 0


# -- Framing --------------------------------------------------------------------------


class ClientFrame(msgspec.Struct, array_like=True):
    request_id: int
    request: Request


class ServerFrame(msgspec.Struct, array_like=True):
    request_id: int
    response: Response | Error


_encoder = msgspec.msgpack.Encoder()
_client_frame_decoder = msgspec.msgpack.Decoder(ClientFrame)
_server_frame_decoder = msgspec.msgpack.Decoder(ServerFrame)


def encode(value: msgspec.Struct) -> bytes:
    return _encoder.encode(value)


def decode_client_frame(payload: bytes) -> ClientFrame:
    """Raises ``msgspec.DecodeError`` on malformed input or an unknown request type."""
    return _client_frame_decoder.decode(payload)


def decode_server_frame(payload: bytes) -> ServerFrame:
    return _server_frame_decoder.decode(payload)


# -- Key-range helpers ------------------------------------------------------------------


def prefix_range_end(prefix: bytes) -> bytes:
    """The ``range_end`` that selects every key starting with ``prefix``.

    The prefix with its last byte below 0xff incremented (and the rest
    dropped); ``b"\\0"`` (every key) for an empty or all-0xff prefix.
    """
    end = bytearray(prefix)
    while end:
        if end[-1] < 0xFF:
            end[-1] += 1
            return bytes(end)
        end.pop()
    return b"\0"
