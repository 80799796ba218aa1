"""The replicated state machine: applies committed Raft entries to the store.

:class:`KVStateMachine` is deterministic and sans-I/O: no clock, no network, no
disk, no randomness.  Every member applies the same entries in the same order
and computes the same results, events and snapshots.

* :meth:`KVStateMachine.apply` takes a Raft index and the entry's data (an
  encoded :class:`~kvstore.commands.Command`) and answers an
  :class:`ApplyResult`: the command (so its origin can answer the waiting
  client), the response or :class:`~kvstore.api.Error`, and the change events.
  It never raises.
* :meth:`KVStateMachine.read` serves a range read outside the log (after a
  ReadIndex round, or a serializable read).
* :meth:`KVStateMachine.snapshot` / :meth:`KVStateMachine.restore` carry the
  whole state (applied index, revision, compacted revision, full history).
  :meth:`KVStateMachine.capture` takes the state cheaply (a few milliseconds
  for 100,000 keys) as a :class:`StateCopy` whose :meth:`~StateCopy.encode`
  gives the same bytes and may run in a worker thread while applying goes on.

Responses carry ``header.revision`` (the store's revision after the request);
``cluster_id``, ``member_id`` and ``raft_term`` are the server's to fill.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Generator

import msgspec

from kvstore.api import (
    CompactionRequest,
    DeleteRangeRequest,
    Error,
    ErrorCode,
    Event,
    LeaseGrantRequest,
    LeaseGrantResponse,
    LeaseRevokeRequest,
    LeaseRevokeResponse,
    PutRequest,
    RangeRequest,
    RangeResponse,
    Response,
    ResponseHeader,
    TxnRequest,
)
from kvstore.commands import Command, decode_command
from kvstore.lease import LeaseRecord, LeaseTable
from kvstore.membership import MemberTable
from kvstore.mvcc import MVCCStore, StoreDump, WriteResult
from kvstore.validation import validate_request

__all__ = ["SNAPSHOT_FORMAT", "ApplyResult", "KVStateMachine", "KVStatus", "StateCopy"]

SNAPSHOT_FORMAT = 1
"""Version of the snapshot encoding written by :meth:`KVStateMachine.snapshot`."""
_MAGIC = b"KVSM"
_PREAMBLE = struct.Struct(">4sHI")
"""Magic, format version, CRC-32 of the body."""


class ApplyResult(msgspec.Struct, frozen=True):
    """What applying one command produced.

    ``command`` is None only when the entry could not be decoded (then
    ``response`` is a ``MALFORMED`` error).  ``events`` are the changes, in
    the order applied (empty for errors, reads and compactions).
    """

    command: Command | None
    response: Response | Error
    events: list[Event]


class KVStatus(msgspec.Struct, frozen=True):
    """The state machine's numbers, for status responses and metrics."""

    applied_index: int
    revision: int
    compact_revision: int
    keys: int


class _Snapshot(msgspec.Struct, array_like=True):
    """The snapshot body.  New fields (leases, ...) go at the end with defaults,
    so a newer reader still decodes an older body."""

    applied_index: int
    store: StoreDump
    leases: list[LeaseRecord] = []
    members: MemberTable = MemberTable()


_snapshot_encoder = msgspec.msgpack.Encoder()
_snapshot_decoder = msgspec.msgpack.Decoder(_Snapshot)

_SNAPSHOT_ENCODE_CHUNK = 2048
"""Versions :meth:`StateCopy.encode` encodes per msgspec call: each call holds
the GIL (a few milliseconds at most), so a worker thread encoding a large state
lets the event loop run in between."""


class StateCopy:
    """A point-in-time copy of the whole state (:meth:`KVStateMachine.capture`),
    not yet encoded.  Its parts are immutable, so encoding it later gives the
    state of the moment of the copy, whatever the state machine applied since."""

    __slots__ = ("_body", "status")

    def __init__(self, status: KVStatus, body: _Snapshot) -> None:
        self.status = status
        """The state machine's numbers at the moment of the copy."""
        self._body = body

    @property
    def versions(self) -> int:
        """How many key versions the copy holds (what encoding it costs)."""
        return len(self._body.store.entries)

    @property
    def index(self) -> int:
        """The last log index applied to the copied state."""
        return self.status.applied_index

    def encode(self) -> bytes:
        """The copy as :meth:`KVStateMachine.snapshot` bytes, encoded
        :data:`_SNAPSHOT_ENCODE_CHUNK` versions per call, so that in a worker
        thread it lets the event loop have the GIL between calls."""
        steps = self.encode_in_steps(_SNAPSHOT_ENCODE_CHUNK)
        while True:
            try:
                next(steps)
            except StopIteration as done:
                data: bytes = done.value
                return data

    def encode_in_steps(self, versions_per_step: int) -> Generator[None, None, bytes]:
        """:meth:`encode` a step at a time: a generator that does the work of at
        most ``versions_per_step`` key versions per step and *returns* the same
        bytes as :meth:`encode`.  msgspec holds the GIL while it encodes, so a
        worker thread would stall an event loop just the same; an event loop
        instead runs one step, lets its other tasks run, and so on."""
        entries = self._body.store.entries
        pieces = [_array_header(len(entries))]
        for start in range(0, len(entries), versions_per_step):
            part = entries[start : start + versions_per_step]
            encoded = _snapshot_encoder.encode(part)
            pieces.append(encoded[len(_array_header(len(part))) :])
            yield
        # The entries go in pre-encoded: msgspec writes a Raw value as it is.
        store = msgspec.structs.replace(self._body.store, entries=msgspec.Raw(b"".join(pieces)))
        return _with_preamble(
            _snapshot_encoder.encode(msgspec.structs.replace(self._body, store=store))
        )


def _with_preamble(body: bytes) -> bytes:
    return _PREAMBLE.pack(_MAGIC, SNAPSHOT_FORMAT, zlib.crc32(body)) + body


def _array_header(length: int) -> bytes:
    """The msgpack header of an array of ``length`` items."""
    if length < 16:
        return bytes([0x90 | length])
    if length < 1 << 16:
        return b"\xdc" + length.to_bytes(2, "big")
    return b"\xdd" + length.to_bytes(4, "big")


def _any_lease(lease: int) -> bool:
    return True


class KVStateMachine:
    """Applies commands to an :class:`~kvstore.mvcc.MVCCStore`."""

    def __init__(self) -> None:
        self._store = MVCCStore()
        self._store.lease_exists = self._lease_exists
        self._applied = 0
        self._leases = LeaseTable()
        self.members = MemberTable()
        """The member table as of the applied index (empty until the first
        membership change, or a snapshot that holds one)."""

    # -- Leases -----------------------------------------------------------------------

    @property
    def leases(self) -> LeaseTable:
        """The lease table, for reads (callers must not change it)."""
        return self._leases

    def _lease_exists(self, lease: int) -> bool:
        """The one place the state machine asks whether a lease exists."""
        return lease in self._leases

    def _grant(self, request: LeaseGrantRequest) -> LeaseGrantResponse | Error:
        if request.id <= 0 or request.ttl <= 0:
            return Error(
                code=ErrorCode.INVALID_ARGUMENT,
                message="a lease needs a positive id and TTL",
                definite=True,
            )
        if request.id in self._leases:
            return Error(
                code=ErrorCode.INVALID_ARGUMENT,
                message=f"lease {request.id:x} already exists",
                definite=True,
            )
        self._leases.grant(request.id, request.ttl)
        header = ResponseHeader(revision=self._store.revision)
        return LeaseGrantResponse(header=header, id=request.id, ttl=request.ttl)

    def _revoke(
        self, request: LeaseRevokeRequest
    ) -> tuple[LeaseRevokeResponse | Error, list[Event]]:
        if request.id not in self._leases:
            error = Error(
                code=ErrorCode.LEASE_NOT_FOUND,
                message=f"lease {request.id:x} not found",
                definite=True,
            )
            return error, []
        keys = self._leases.revoke(request.id)
        events: list[Event] = []
        if keys:
            # Every attached key goes in one revision, so watchers see one change.
            deletes = TxnRequest(success=[DeleteRangeRequest(key=key) for key in keys])
            events = self._store.txn(deletes).events
        header = ResponseHeader(revision=self._store.revision)
        return LeaseRevokeResponse(header=header), events

    # -- Applying ---------------------------------------------------------------------

    @property
    def applied_index(self) -> int:
        """The Raft index of the last entry applied (0 before any)."""
        return self._applied

    @property
    def store(self) -> MVCCStore:
        """The store, for reads that need more than :meth:`read` (watch
        replays).  Callers must not write through it."""
        return self._store

    def apply(self, index: int, data: bytes) -> ApplyResult | None:
        """Apply the committed entry at ``index``.

        An entry at or below the applied index is ignored (replay after a
        restart) and answers None, as does an empty entry (Raft's no-op),
        which only advances the applied index.  Data that is not a command
        answers a ``MALFORMED`` error.  The request is validated again (bar its
        size) and answers its validation error if it is one; otherwise it
        runs.  Never raises: an unexpected failure inside the store is rolled
        back and answered as a definite ``INTERNAL`` error.
        """
        if index <= self._applied:
            return None
        self._applied = index
        if not data:
            return None
        try:
            command = decode_command(data)
        except Exception as exc:  # msgspec.DecodeError, or anything odd in the bytes
            error = Error(
                code=ErrorCode.MALFORMED,
                message=f"undecodable command at index {index}: {exc}",
                definite=True,
            )
            return ApplyResult(None, error, [])
        try:
            return self._apply(command)
        except Exception as exc:
            error = Error(
                code=ErrorCode.INTERNAL,
                message=f"applying the command at index {index} failed: {exc!r}",
                definite=True,
            )
            return ApplyResult(command, error, [])

    def apply_membership(self, index: int, table: MemberTable | None) -> bool:
        """Apply the membership change committed at ``index``: ``table`` is the
        whole member table after it (None leaves the table as it was).
        Returns False for an index already applied."""
        if index <= self._applied:
            return False
        self._applied = index
        if table is not None:
            self.members = table
        return True

    def _apply(self, command: Command) -> ApplyResult:
        request = command.request
        # Leases are checked by the store as each put runs (only the branch a
        # txn takes), so validation here takes every lease for existing.
        error = validate_request(request, lease_exists=_any_lease, max_request_bytes=None)
        if error is not None:
            return ApplyResult(command, error, [])
        store = self._store
        result: WriteResult
        if isinstance(request, PutRequest):
            result = store.put(request)
        elif isinstance(request, DeleteRangeRequest):
            result = store.delete_range(request)
        elif isinstance(request, TxnRequest):
            result = store.txn(request)
        elif isinstance(request, CompactionRequest):
            return ApplyResult(command, store.compact(request.revision), [])
        elif isinstance(request, LeaseGrantRequest):
            return ApplyResult(command, self._grant(request), [])
        elif isinstance(request, LeaseRevokeRequest):
            response, events = self._revoke(request)
            self._leases.track(events)
            return ApplyResult(command, response, events)
        else:  # pragma: no cover - the decoder admits nothing else
            error = Error(
                code=ErrorCode.UNKNOWN_REQUEST,
                message=f"cannot apply {type(request).__name__}",
                definite=True,
            )
            return ApplyResult(command, error, [])
        self._leases.track(result.events)
        return ApplyResult(command, result.response, result.events)

    # -- Reads ------------------------------------------------------------------------

    def read(self, request: RangeRequest) -> RangeResponse | Error:
        """Serve a range read from the current state (the caller decides
        whether that is linearizable).  The caller validates the request first;
        a negative ``limit`` or ``revision`` is treated as 0."""
        return self._store.range(request)

    def status(self) -> KVStatus:
        store = self._store
        return KVStatus(
            applied_index=self._applied,
            revision=store.revision,
            compact_revision=store.compact_revision,
            keys=len(store),
        )

    # -- Snapshots --------------------------------------------------------------------

    def snapshot(self) -> bytes:
        """The whole state as bytes: a preamble (magic ``KVSM``, format
        version, CRC-32 of the body) and a msgpack body."""
        return self.capture().encode()

    def capture(self) -> StateCopy:
        """A consistent copy of the whole state, to encode later (perhaps a
        step at a time, see :meth:`StateCopy.encode_in_steps`)."""
        body = _Snapshot(self._applied, self._store.dump(), self._leases.records(), self.members)
        return StateCopy(self.status(), body)

    def restore(self, data: bytes) -> None:
        """Replace the whole state with a :meth:`snapshot`.

        Raises ``ValueError`` (and changes nothing) if ``data`` is not a
        snapshot, is of an unknown format version, fails its checksum or
        describes an inconsistent store.
        """
        if len(data) < _PREAMBLE.size:
            raise ValueError("corrupt KV snapshot: too short")
        magic, version, checksum = _PREAMBLE.unpack_from(data)
        if magic != _MAGIC:
            raise ValueError("corrupt KV snapshot: bad magic")
        if version != SNAPSHOT_FORMAT:
            raise ValueError(f"KV snapshot format {version} is not supported")
        body = memoryview(data)[_PREAMBLE.size :]
        if zlib.crc32(body) != checksum:
            raise ValueError("corrupt KV snapshot: checksum mismatch")
        try:
            snapshot = _snapshot_decoder.decode(body)
        except msgspec.DecodeError as exc:
            raise ValueError(f"corrupt KV snapshot: {exc}") from exc
        if snapshot.applied_index < 0:
            raise ValueError("corrupt KV snapshot: negative applied index")
        try:
            store = MVCCStore.load(snapshot.store)
        except ValueError as exc:
            raise ValueError(f"corrupt KV snapshot: {exc}") from exc
        leases = LeaseTable()
        attached = {kv.key: kv.lease for kv in store.live() if kv.lease}
        leases.restore(snapshot.leases, attached)
        store.lease_exists = self._lease_exists
        self._store = store
        self._applied = snapshot.applied_index
        self._leases = leases
        self.members = snapshot.members

    @classmethod
    def from_snapshot(cls, data: bytes) -> KVStateMachine:
        """A state machine restored from :meth:`snapshot` bytes (``ValueError``
        if they are corrupt)."""
        machine = cls()
        machine.restore(data)
        return machine
