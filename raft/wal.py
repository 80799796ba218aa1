"""A segmented write-ahead log for the Raft log, the hard state and snapshot markers.

Durability contract
-------------------
* :meth:`WAL.save` appends everything one :class:`~raft.ready.Ready` asks to
  persist (entries first, then the hard state) in **one** ``write`` and, when
  ``sync`` is true, **one** ``fdatasync``: never one per entry.  When it returns
  with ``sync=True``, all of it is durable.
* Replay stops at the first bad record, so a crash in the middle of a write
  loses a *suffix* of what was being written, never a record in the middle:
  a hard state is never recovered without the entries written before it.
* :meth:`WAL.mark_snapshot`, :meth:`WAL.compact` and (unless called with
  ``sync=False``, when the next synced save covers it) :meth:`WAL.install_snapshot`
  are durable (fsynced) when they return.  Segments made redundant by
  compaction are deleted only after the record that makes them redundant is
  durable.
* A hard state that only advances the commit index, saved with ``sync=False``
  and no entries (a leader learning of a commit, a follower told of one
  alone), is not written on its own: it goes out with the next write, or
  with :meth:`WAL.sync` or :meth:`WAL.close`; :attr:`WAL.hard_state` has it
  meanwhile.  The commit index is a hint that Raft learns again from the
  leader; a crash may lose it, as it may lose any unsynced write.  That saves
  a ``write`` on every write request's path through the leader.
* Creating, renaming or removing a file is followed by an fsync of the directory.
* Any ``OSError`` while writing leaves the file in an unknown state, so the WAL
  refuses every later call with :class:`WALFailedError`; reopening it (which
  runs recovery) is the way forward.

On-disk format
--------------
One directory holds ``LOCK`` (an ``flock`` held while open, so two processes
never write the same WAL) and segment files named
``<seq>-<first index>.wal``, both as 16 hex digits: the segment's sequence
number (consecutive from 1) and the index of the first entry it may hold.

A segment is a sequence of records.  A record is a 16-byte header followed by
the payload.  The header is ``magic b"kvW\x01"``, ``u32 payload length``,
``u32 zlib.crc32(payload)`` and ``u32 crc32`` of the preceding 12 header bytes
(little endian); the payload is one of the msgspec Structs below encoded as a
msgpack array whose first element is an integer tag.  One save writes an
entries record (several for a large batch) and then a hard state record.  The
first record of every segment is a :class:`SegmentStart` holding everything
needed to replay from that segment alone (hard state, latest snapshot, index
and term of the entry just before the segment), so older segments can be
deleted once compaction made them redundant.  A conflicting suffix is
truncated by writing entries again from the first conflicting index; replay
truncates the same way the live log did.

Segment ``k`` becomes the oldest one kept once every entry before its first
index is compacted.  Replay then starts from its start record's base entry,
which stands in for entries no longer on disk, so records store what happened
rather than what was asked for: a compaction carries the term of its last
entry, an installed snapshot whether the log was kept or discarded, and an
entries record reaching back to or behind the base still truncates everything
after it.  Everything after the base therefore replays exactly as it was live.

A new segment is written to ``<name>.tmp`` (start record, fsync), renamed into
place and the directory fsynced, so every segment on disk begins with a
complete start record.  The WAL rolls to a new segment before a write that
would take the current one past ``segment_bytes`` (a single larger batch still
goes into one segment: a save never spans two files).

Recovery rules
--------------
Segments are replayed in sequence order; a gap in the sequence, or a start
record that does not match its file name or does not continue the previous
segment, is corruption.  Inside a segment a record is *bad* if its header is
incomplete, has the wrong magic or fails its header checksum, its length is 0
or over ``max_record_bytes`` (checked before anything is sliced), it runs past
the end of the file, or its payload fails its CRC.

A bad record is a **torn tail** -- truncated away, with a warning naming the
file and offset -- only if it is in the *last* segment, is not that segment's
start record, and **no intact record follows it** (the rest of the file is a
partial record, zeros or garbage).  Anything else raises
:class:`CorruptWALError` naming the file and byte offset, and the WAL refuses to
open: a bad record in an earlier segment, a bad record followed by an intact
one (a bit flip, even one in a length field, is never mistaken for a torn
write that would drop the records after it), and a record with valid checksums
that does not decode or does not apply.  Data is never dropped silently.  (A
power loss that persisted a later page of the final write but not an earlier
one also refuses to start: it cannot be told from bit rot followed by
acknowledged records; an operator can truncate at the reported offset.)
"""

from __future__ import annotations

import contextlib
import enum
import fcntl
import itertools
import logging
import math
import os
import re
import struct
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import msgspec

from raft import preallocate
from raft.messages import ConfState, Entry, HardState, SnapshotMeta
from raft.storage import SentinelLog, UnavailableError

__all__ = [
    "DEFAULT_MAX_RECORD_BYTES",
    "DEFAULT_SEGMENT_BYTES",
    "FORMAT_VERSION",
    "WAL",
    "CompactRecord",
    "CorruptWALError",
    "EntriesRecord",
    "HardStateRecord",
    "InstallOutcome",
    "InstallSnapshotRecord",
    "LogState",
    "Record",
    "SegmentStart",
    "SnapshotRecord",
    "WALError",
    "WALFailedError",
    "WALLockedError",
    "fsync_directory",
    "segment_name",
]

logger = logging.getLogger(__name__)

FORMAT_VERSION: Final = 1
DEFAULT_SEGMENT_BYTES: Final = 64 * 1024 * 1024
DEFAULT_MAX_RECORD_BYTES: Final = 64 * 1024 * 1024
_CHUNK_BYTES: Final = 1024 * 1024
"""Target payload size of one entries record; a batch larger than this is split."""
_ENTRY_OVERHEAD: Final = 32
"""Upper bound of msgpack bytes per entry besides its data (array, ints, bin header)."""

_MAGIC: Final = b"kvW\x01"
_HEADER: Final = struct.Struct("<4sIII")
"""magic, payload length, crc32(payload), crc32 of the 12 header bytes before it."""
_SEGMENT_RE: Final = re.compile(r"^([0-9a-f]{16})-([0-9a-f]{16})\.wal$")


# --- Errors ---------------------------------------------------------------------------


class WALError(Exception):
    """Base class of the errors this module raises."""


class CorruptWALError(WALError):
    """The WAL holds a record that is bad and is not a torn tail; it will not open."""

    def __init__(self, path: Path, offset: int, reason: str) -> None:
        super().__init__(f"corrupt WAL segment {path} at byte offset {offset}: {reason}")
        self.path = path
        self.offset = offset
        self.reason = reason


class WALLockedError(WALError):
    """Another open WAL (in this or another process) holds the directory's lock."""


class WALFailedError(WALError):
    """An earlier write or fsync failed; the WAL must be reopened (recovery) to go on."""


# --- Records --------------------------------------------------------------------------


class SegmentStart(msgspec.Struct, array_like=True, frozen=True, tag=1):
    """First record of every segment: the state just before its first record."""

    version: int
    seq: int
    prev_index: int
    """Index of the last entry when the segment was created (its first is this + 1)."""
    prev_term: int
    hard_state: HardState
    snapshot: SnapshotMeta


class EntriesRecord(msgspec.Struct, array_like=True, frozen=True, tag=2):
    """Contiguous entries; any stored entries at or after the first one are replaced."""

    entries: list[Entry]


class HardStateRecord(msgspec.Struct, array_like=True, frozen=True, tag=3):
    hard_state: HardState


class SnapshotRecord(msgspec.Struct, array_like=True, frozen=True, tag=4):
    """A snapshot up to ``meta.index`` is saved; the log itself is unchanged."""

    meta: SnapshotMeta


class InstallOutcome(enum.IntEnum):
    """What installing a snapshot did to the log, decided when it was written."""

    UNTOUCHED = 0
    """The snapshot ends at or below the compacted index."""
    SUFFIX_KEPT = 1
    """The log had ``meta.index`` with ``meta.term``: entries after it stay."""
    DISCARDED = 2
    """The log disagreed with the snapshot and was dropped."""


class InstallSnapshotRecord(msgspec.Struct, array_like=True, frozen=True, tag=5):
    """The snapshot ending at ``meta.index`` became the base of the log.

    The record carries the ``outcome`` decided live rather than letting replay
    decide again: replay may start from a later segment whose base entry stands
    in for entries no longer on disk, and must reach exactly the live state.
    """

    meta: SnapshotMeta
    outcome: InstallOutcome


class CompactRecord(msgspec.Struct, array_like=True, frozen=True, tag=6):
    """Entries up to and including ``index`` (whose term is ``term``) are discarded."""

    index: int
    term: int


Record = (
    SegmentStart
    | EntriesRecord
    | HardStateRecord
    | SnapshotRecord
    | InstallSnapshotRecord
    | CompactRecord
)
"""Every kind of record a segment holds."""

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Record)


# --- The replayed state ---------------------------------------------------------------


class LogState(SentinelLog):
    """What the WAL holds, in memory: the Raft log, the hard state, the latest snapshot.

    The log follows :class:`~raft.storage.MemoryStorage`'s model: a sentinel entry
    stands for the last compacted entry, whose term stays known.  Both the live WAL
    and recovery change it only through :meth:`apply`, so replay rebuilds exactly
    what was written.
    """

    def __init__(
        self, hard_state: HardState, snapshot: SnapshotMeta, prev_index: int, prev_term: int
    ) -> None:
        self.hard_state = hard_state
        self.snapshot = snapshot
        # _entries[0] is the sentinel: the last compacted entry (index 0 if none).
        self._entries: list[Entry] = [Entry(term=prev_term, index=prev_index)]

    # -- Reads -----------------------------------------------------------------------

    @property
    def conf(self) -> ConfState:
        """Membership as of the latest snapshot (or as bootstrapped)."""
        return self.snapshot.conf

    def last_term(self) -> int:
        return self._entries[-1].term

    # -- Changes ---------------------------------------------------------------------

    def prepare_append(self, entries: Sequence[Entry]) -> list[Entry]:
        """Validate ``entries`` for appending and drop the part already compacted.

        Raises ``ValueError`` unless the entries are contiguous and start no later
        than ``last_index() + 1``.
        """
        if not entries:
            return []
        for prev, cur in itertools.pairwise(entries):
            if cur.index != prev.index + 1:
                raise ValueError(f"entries not contiguous: index {cur.index} after {prev.index}")
        first = self.first_index()
        if entries[-1].index < first:
            return []
        if entries[0].index < first:
            entries = entries[first - entries[0].index :]
        if entries[0].index > self.last_index() + 1:
            raise ValueError(
                f"gap in log: appending index {entries[0].index} after {self.last_index()}"
            )
        return list(entries)

    def apply(self, record: Record) -> None:
        """Apply one record; raises ``ValueError``/``LookupError`` if it does not fit."""
        if isinstance(record, EntriesRecord):
            self._place(record.entries)
        elif isinstance(record, HardStateRecord):
            self.hard_state = record.hard_state
        elif isinstance(record, SnapshotRecord):
            self.mark_snapshot(record.meta)
        elif isinstance(record, InstallSnapshotRecord):
            self._install(record.meta, record.outcome)
        elif isinstance(record, CompactRecord):
            self._compact(record.index, record.term)
        else:
            raise ValueError(f"unexpected {type(record).__name__} record")

    def mark_snapshot(self, meta: SnapshotMeta) -> None:
        """A snapshot up to ``meta.index`` is saved; the log is left alone
        (``MemoryStorage.save_snapshot``: an older snapshot is ignored)."""
        if meta.index >= self.snapshot.index:
            self.snapshot = meta

    def install_outcome(self, meta: SnapshotMeta) -> InstallOutcome:
        """What installing ``meta`` does to the log, as ``MemoryStorage.apply_snapshot``
        decides it: nothing at or below the compacted index; otherwise the suffix
        after ``meta.index`` is kept if the log has it with ``meta.term``, and the
        whole log is discarded if not."""
        if meta.index <= self._entries[0].index:
            return InstallOutcome.UNTOUCHED
        if meta.index <= self.last_index() and self.term(meta.index) == meta.term:
            return InstallOutcome.SUFFIX_KEPT
        return InstallOutcome.DISCARDED

    def _install(self, meta: SnapshotMeta, outcome: InstallOutcome) -> None:
        # MemoryStorage.save_snapshot followed by apply_snapshot.
        self.mark_snapshot(meta)
        if outcome is InstallOutcome.UNTOUCHED:
            return
        if outcome is InstallOutcome.SUFFIX_KEPT:
            self._compact(meta.index, meta.term)
        else:
            self._entries = [Entry(term=meta.term, index=meta.index)]
        self.snapshot = meta

    def _place(self, entries: list[Entry]) -> None:
        """Truncate the log after ``entries[0].index - 1`` and append ``entries``.

        Live, :meth:`prepare_append` has already dropped entries at or below the
        compacted index, so this is a plain append.  Replay may start from a
        later segment whose base entry (the sentinel) stands in for entries no
        longer on disk; a record reaching back to or below it then still
        truncates everything after it, and updates its term if it covers it.
        Everything after the base thus comes out as it was live.
        """
        if not entries:
            return
        first, last = entries[0].index, entries[-1].index
        if last - first != len(entries) - 1:
            raise ValueError(f"entries record not contiguous ({first}..{last})")
        base = self._entries[0]
        if first <= base.index:
            if last >= base.index:
                self._entries[0] = Entry(term=entries[base.index - first].term, index=base.index)
            del self._entries[1:]
            entries = entries[base.index - first + 1 :]
            if not entries:
                return
            first = entries[0].index
        if first > self.last_index() + 1:
            raise ValueError(f"gap in log: index {first} after {self.last_index()}")
        del self._entries[first - base.index :]
        self._entries.extend(entries)

    def _compact(self, index: int, term: int) -> None:
        # The recorded term wins: when replay starts at a later segment, the
        # sentinel it starts from may name an entry that was rewritten since.
        offset = self._entries[0].index
        if index < offset or (index == offset and term == self._entries[0].term):
            return
        if index > self.last_index():
            raise UnavailableError(index)
        del self._entries[: index - offset]
        self._entries[0] = Entry(term=term, index=index)


# --- Files ----------------------------------------------------------------------------


def segment_name(seq: int, first_index: int) -> str:
    """File name of segment ``seq`` whose first entry would be ``first_index``."""
    return f"{seq:016x}-{first_index:016x}.wal"


def fsync_directory(path: Path) -> None:
    """Make the creation, renaming or removal of files in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes | bytearray | memoryview) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


@dataclass(frozen=True)
class _Segment:
    seq: int
    first_index: int
    path: Path


class _BadFrame(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# --- The log --------------------------------------------------------------------------


class _MutationGuard:
    """``with wal._mutating():`` refuses a closed or failed WAL, and marks the
    WAL failed if the body raises ``OSError`` (a plain class: this is on the
    path of every write, and a generator-based context manager costs more)."""

    __slots__ = ("_wal",)

    def __init__(self, wal: WAL) -> None:
        self._wal = wal

    def __enter__(self) -> None:
        wal = self._wal
        if wal._closed:
            raise WALError(f"WAL {wal.directory} is closed")
        if wal._failed is not None:
            raise WALFailedError(
                f"WAL {wal.directory} failed earlier ({wal._failed}); reopen it"
            ) from wal._failed

    def __exit__(self, exc_type: object, exc: BaseException | None, traceback: object) -> None:
        if isinstance(exc, OSError):
            self._wal._failed = exc


class WAL:
    """A segmented write-ahead log in ``directory``, recovered on construction.

    ``conf`` is the membership to bootstrap with when the directory holds no
    segment yet; once written, the stored one wins.  :attr:`state` is the
    recovered (and then live) content as written; treat it as read-only.  Not
    thread-safe: the caller serializes all calls.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        conf: ConfState | None = None,
        segment_bytes: int = DEFAULT_SEGMENT_BYTES,
        max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
    ) -> None:
        if segment_bytes <= 0:
            raise ValueError("segment_bytes must be positive")
        if max_record_bytes < 1024:
            raise ValueError("max_record_bytes must be at least 1024")
        self.directory = Path(directory)
        self.segment_bytes = segment_bytes
        self.max_record_bytes = max_record_bytes
        self.fsync_count = 0
        """Number of file fsyncs (``fdatasync``) issued, for tests and benchmarks."""
        self.dir_fsync_count = 0
        """Number of directory fsyncs issued."""
        self._fd = -1
        self._lock_fd = -1
        self._size = 0
        self._start_size = 0
        self._unsynced = False
        self._unwritten_hard_state: HardState | None = None
        """A hard state saved but not yet written (see the durability contract)."""
        self._compacted_unsynced = False
        """The log was compacted by a record not yet durable: segments await removal."""
        self._failed: OSError | None = None
        self._closed = False
        self._guard = _MutationGuard(self)
        self._reserved_to: float = 0
        """Blocks are reserved up to this offset of the current segment."""
        self._chunk_bytes = min(_CHUNK_BYTES, max_record_bytes // 2)

        _make_directory(self.directory)
        self._lock_fd = _lock(self.directory / "LOCK")
        try:
            self._remove_temporaries()
            self._segments = self._list_segments()
            if self._segments:
                self.state = self._replay()
                last = self._segments[-1].path
                self._fd = os.open(last, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
                self._remove_redundant_segments()  # finishes a removal a crash cut short
            else:
                self.state = LogState(HardState(), SnapshotMeta(conf=conf or ConfState()), 0, 0)
                self._create_segment(1)
        except BaseException:
            self._release_fds()
            raise

    @property
    def hard_state(self) -> HardState:
        """The hard state last saved (``state.hard_state`` is the one last written)."""
        unwritten = self._unwritten_hard_state
        return self.state.hard_state if unwritten is None else unwritten

    # -- Writers ---------------------------------------------------------------------

    def save(
        self, entries: Sequence[Entry], hard_state: HardState | None, *, sync: bool = True
    ) -> None:
        """Append ``entries`` (replacing any stored suffix from their first index),
        then ``hard_state`` if given, in one write; fsync once if ``sync``.

        Raises ``ValueError`` (and writes nothing) if the entries are not
        contiguous, leave a gap after the last stored entry, or one entry is over
        ``max_record_bytes``.  Nothing to write is a no-op (with ``sync``, earlier
        unsynced writes are still synced).
        """
        with self._mutating():
            records: list[Record] = [
                EntriesRecord(chunk) for chunk in self._chunks(self.state.prepare_append(entries))
            ]
            if hard_state is not None and hard_state != (latest := self.hard_state):
                if not (records or sync) and _only_commit_advances(latest, hard_state):
                    self._unwritten_hard_state = hard_state  # goes with the next write
                    return
                records.append(HardStateRecord(hard_state))
            if records or (sync and self._unwritten_hard_state is not None):
                self._write(records, sync=sync)
            elif sync and self._unsynced:  # nothing new, but earlier writes must be durable
                self._fdatasync(self._fd)
                if self._compacted_unsynced:
                    self._remove_redundant_segments()

    def mark_snapshot(self, meta: SnapshotMeta) -> None:
        """Record that a snapshot up to ``meta.index`` is saved (durable on return)."""
        with self._mutating():
            self._write([SnapshotRecord(meta)], sync=True)

    def install_snapshot(self, meta: SnapshotMeta, *, sync: bool = True) -> None:
        """Record the snapshot ``meta`` and make it the base of the log (see
        :meth:`LogState.install_outcome`); durable on return if ``sync``.

        With ``sync=False`` the record is written but not fsynced: a following
        ``save(..., sync=True)`` makes both durable with one fsync.  Segments
        the snapshot made redundant are deleted only once it is durable.
        """
        with self._mutating():
            outcome = self.state.install_outcome(meta)
            self._write([InstallSnapshotRecord(meta, outcome)], sync=sync)

    def compact(self, index: int) -> None:
        """Durably discard entries up to and including ``index``, then delete segments
        holding only discarded entries.  No-op at or below the compacted index;
        raises :class:`~raft.storage.UnavailableError` past the last entry."""
        with self._mutating():
            if index < self.state.first_index():
                return
            if index > self.state.last_index():
                raise UnavailableError(index)
            self._write([CompactRecord(index, self.state.term(index))], sync=True)

    def sync(self) -> None:
        """Make every write so far durable (a no-op if nothing is unsynced)."""
        with self._mutating():
            if self._unwritten_hard_state is not None:
                self._write([], sync=True)
            elif self._unsynced:
                self._fdatasync(self._fd)
            if self._compacted_unsynced:
                self._remove_redundant_segments()

    def close(self) -> None:
        """Sync what is unsynced and release the files and the lock; idempotent."""
        if self._closed:
            return
        try:
            if self._failed is None and self._fd >= 0:
                if self._unwritten_hard_state is not None:
                    self._write([], sync=True)
                elif self._unsynced:
                    self._fdatasync(self._fd)
        finally:
            self._closed = True
            self._release_fds()

    def __enter__(self) -> WAL:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def segment_paths(self) -> list[Path]:
        """The segment files, oldest first."""
        return [segment.path for segment in self._segments]

    # -- Writing internals -----------------------------------------------------------

    def _mutating(self) -> _MutationGuard:
        return self._guard

    def _chunks(self, entries: list[Entry]) -> Iterator[list[Entry]]:
        start, size = 0, 0
        for position, entry in enumerate(entries):
            entry_size = len(entry.data) + _ENTRY_OVERHEAD
            if size + entry_size > self._chunk_bytes and position > start:
                yield entries[start:position]
                start, size = position, 0
            size += entry_size
        if start < len(entries):
            yield entries[start:]

    def _frame(self, buffer: bytearray, record: Record) -> None:
        start = len(buffer)
        buffer.extend(bytes(_HEADER.size))
        _encoder.encode_into(record, buffer, start + _HEADER.size)
        length = len(buffer) - start - _HEADER.size
        if length > self.max_record_bytes:
            raise ValueError(
                f"{type(record).__name__} of {length} bytes exceeds max_record_bytes "
                f"({self.max_record_bytes})"
            )
        with memoryview(buffer) as view:
            crc = zlib.crc32(view[start + _HEADER.size :])
        header = struct.pack("<4sII", _MAGIC, length, crc)
        _HEADER.pack_into(buffer, start, _MAGIC, length, crc, zlib.crc32(header))

    def _write(self, records: list[Record], *, sync: bool) -> None:
        """Write any unwritten hard state and ``records`` in one ``write``
        (rolling first if the segment is full), fsync if ``sync``, and only
        then apply them to :attr:`state`.

        The unwritten hard state goes first: its commit index covers only
        entries already written, and a snapshot or compaction record after it
        may rely on it (recovery keeps a prefix of a torn write, so it never
        finds a snapshot past the commit index it recovers)."""
        unwritten, self._unwritten_hard_state = self._unwritten_hard_state, None
        if unwritten is not None and not any(type(r) is HardStateRecord for r in records):
            records = [HardStateRecord(unwritten), *records]
        if not records:
            return
        buffer = bytearray()
        for record in records:
            self._frame(buffer, record)
        if self._size + len(buffer) > self.segment_bytes and self._size > self._start_size:
            self._roll()
        if self._size + len(buffer) > self._reserved_to:
            self._reserve_ahead(self._size + len(buffer))
        _write_all(self._fd, buffer)
        self._size += len(buffer)
        self._unsynced = True
        if sync:
            self._fdatasync(self._fd)
        compacted = self.state.first_index()
        for record in records:
            self.state.apply(record)
        self._compacted_unsynced |= self.state.first_index() != compacted
        if not self._unsynced and self._compacted_unsynced:
            self._remove_redundant_segments()

    def _fdatasync(self, fd: int) -> None:
        os.fdatasync(fd)
        self.fsync_count += 1
        if fd == self._fd:
            self._unsynced = False

    def _fsync_directory(self) -> None:
        fsync_directory(self.directory)
        self.dir_fsync_count += 1

    def _reserve_ahead(self, end: int) -> None:
        """Reserve disk blocks past ``end`` (see :mod:`raft.preallocate`);
        after a failure, stop trying for this WAL."""
        target = end + preallocate.RESERVE_BYTES
        if preallocate.reserve(self._fd, self._size, target - self._size):
            self._reserved_to = target
        else:
            self._reserved_to = math.inf

    def _roll(self) -> None:
        if self._unsynced:
            self._fdatasync(self._fd)
        os.close(self._fd)
        self._fd = -1
        self._create_segment(self._segments[-1].seq + 1)

    def _create_segment(self, seq: int) -> None:
        """Create segment ``seq`` durably (temp file, fsync, rename, fsync dir) and
        make it the one appended to."""
        state = self.state
        first_index = state.last_index() + 1
        segment = _Segment(seq, first_index, self.directory / segment_name(seq, first_index))
        buffer = bytearray()
        self._frame(
            buffer,
            SegmentStart(
                FORMAT_VERSION,
                seq,
                state.last_index(),
                state.last_term(),
                state.hard_state,
                state.snapshot,
            ),
        )
        temporary = segment.path.with_name(segment.path.name + ".tmp")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            _write_all(fd, buffer)
            self._fdatasync(fd)
            os.rename(temporary, segment.path)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise
        self._fd = fd
        self._size = self._start_size = len(buffer)
        if self._reserved_to != math.inf:
            self._reserved_to = 0
        self._unsynced = False
        self._segments.append(segment)
        self._fsync_directory()

    def _remove_redundant_segments(self) -> None:
        """Delete the oldest segments whose entries are all compacted.

        Segment ``k`` can be the first one replayed once every entry before its
        first index is compacted: every later entry was (re)written after it was
        created, and its start record carries the hard state and snapshot.  The
        deleted prefix stops before the first segment for which that does not
        hold (first indexes are not monotonic after a truncation), so a crash
        halfway through the deletions, which are done oldest first, still
        leaves a directory that replays exactly.
        """
        self._compacted_unsynced = False
        compacted = self.state.first_index() - 1
        keep_from = 0
        for position in range(1, len(self._segments)):
            if self._segments[position].first_index - 1 > compacted:
                break
            keep_from = position
        if keep_from == 0:
            return
        for segment in self._segments[:keep_from]:
            segment.path.unlink()
        del self._segments[:keep_from]
        self._fsync_directory()

    def _release_fds(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if self._lock_fd >= 0:
            os.close(self._lock_fd)  # closing the descriptor drops the flock
            self._lock_fd = -1

    # -- Recovery --------------------------------------------------------------------

    def _remove_temporaries(self) -> None:
        leftovers = sorted(self.directory.glob("*.wal.tmp"))
        for path in leftovers:
            logger.warning("WAL %s: removing unfinished segment file %s", self.directory, path)
            path.unlink()
        if leftovers:
            self._fsync_directory()

    def _list_segments(self) -> list[_Segment]:
        segments = []
        for path in self.directory.iterdir():
            match = _SEGMENT_RE.match(path.name)
            if match:
                segments.append(_Segment(int(match[1], 16), int(match[2], 16), path))
        return sorted(segments, key=lambda segment: segment.seq)

    def _replay(self) -> LogState:
        state: LogState | None = None
        for position, segment in enumerate(self._segments):
            if position > 0 and segment.seq != self._segments[position - 1].seq + 1:
                expected = self._segments[position - 1].seq + 1
                raise CorruptWALError(
                    segment.path, 0, f"segment sequence gap: expected seq {expected}"
                )
            is_last = position == len(self._segments) - 1
            state, self._start_size, self._size = self._replay_segment(segment, state, is_last)
        assert state is not None
        return state

    def _replay_segment(
        self, segment: _Segment, state: LogState | None, is_last: bool
    ) -> tuple[LogState, int, int]:
        """Apply one segment's records; returns the state, the size of its start
        record and its (possibly truncated) size."""
        data = segment.path.read_bytes()
        view = memoryview(data)
        offset = start_size = 0
        while offset < len(data):
            try:
                start, end = self._frame_at(data, offset)
            except _BadFrame as bad:
                intact = self._next_intact_record(data, offset + 1)
                if is_last and intact is None and offset > 0:
                    logger.warning(
                        "WAL %s: torn record at byte offset %d (%s); truncating %d trailing bytes",
                        segment.path,
                        offset,
                        bad.reason,
                        len(data) - offset,
                    )
                    self._truncate(segment.path, offset)
                    break
                reason = bad.reason
                if intact is not None:
                    reason += f" (an intact record follows at offset {intact})"
                raise CorruptWALError(segment.path, offset, reason) from None
            try:
                record = _decoder.decode(view[start:end])
            except msgspec.DecodeError as exc:
                raise CorruptWALError(segment.path, offset, f"undecodable record: {exc}") from None
            try:
                if offset == 0:
                    state = self._begin_segment(segment, record, state)
                    start_size = end
                elif isinstance(record, SegmentStart) or state is None:
                    raise ValueError("segment start record in the middle of a segment")
                else:
                    state.apply(record)
            except (ValueError, LookupError) as exc:
                raise CorruptWALError(
                    segment.path, offset, f"record does not apply: {exc!r}"
                ) from None
            offset = end
        if state is None or offset == 0:
            raise CorruptWALError(segment.path, 0, "empty segment (no start record)")
        return state, start_size, offset

    def _frame_at(self, data: bytes, offset: int) -> tuple[int, int]:
        """Bounds of the payload of the record at ``offset``; raises :class:`_BadFrame`.

        The header is verified (magic, header checksum) before its length is
        trusted, and the length is bounds-checked before anything is sliced.
        """
        if len(data) - offset < _HEADER.size:
            raise _BadFrame("incomplete record header")
        magic, length, crc, header_crc = _HEADER.unpack_from(data, offset)
        header = memoryview(data)[offset : offset + _HEADER.size - 4]
        if magic != _MAGIC or zlib.crc32(header) != header_crc:
            raise _BadFrame("bad record header")
        if length == 0 or length > self.max_record_bytes:
            raise _BadFrame(f"record length {length} outside 1..{self.max_record_bytes}")
        start = offset + _HEADER.size
        end = start + length
        if end > len(data):
            raise _BadFrame(f"record of {length} bytes runs past the end of the file")
        if zlib.crc32(memoryview(data)[start:end]) != crc:
            raise _BadFrame("checksum mismatch")
        return start, end

    def _next_intact_record(self, data: bytes, offset: int) -> int | None:
        """Offset of the first record at or after ``offset`` that passes every check."""
        while (offset := data.find(_MAGIC, offset)) >= 0:
            try:
                self._frame_at(data, offset)
            except _BadFrame:
                offset += 1
            else:
                return offset
        return None

    @staticmethod
    def _begin_segment(segment: _Segment, record: Record, state: LogState | None) -> LogState:
        if not isinstance(record, SegmentStart):
            raise ValueError(f"segment begins with {type(record).__name__}, not SegmentStart")
        if record.version != FORMAT_VERSION:
            raise ValueError(f"unsupported WAL format version {record.version}")
        if record.seq != segment.seq or record.prev_index + 1 != segment.first_index:
            raise ValueError(
                f"start record (seq {record.seq}, first index {record.prev_index + 1}) "
                "does not match the file name"
            )
        if state is None:
            return LogState(record.hard_state, record.snapshot, record.prev_index, record.prev_term)
        if record.prev_index > state.first_index() - 1:
            continues = (record.prev_index, record.prev_term) == (
                state.last_index(),
                state.last_term(),
            )
        else:
            # The log had been cut back to or behind the replay's base entry,
            # which stands in for entries no longer on disk: all that can be
            # checked is that nothing follows it.
            continues = state.last_index() == state.first_index() - 1
        if not continues or (record.hard_state, record.snapshot) != (
            state.hard_state,
            state.snapshot,
        ):
            raise ValueError("segment does not continue the state replayed from the previous one")
        return state

    def _truncate(self, path: Path, size: int) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.ftruncate(fd, size)
            self._fdatasync(fd)
        finally:
            os.close(fd)


def _only_commit_advances(old: HardState, new: HardState) -> bool:
    return new.term == old.term and new.vote == old.vote and new.commit > old.commit


def _make_directory(path: Path) -> None:
    """Create ``path`` (and parents) if missing, fsyncing each parent that gained an entry."""
    if path.is_dir():
        return
    _make_directory(path.parent)
    with contextlib.suppress(FileExistsError):
        path.mkdir()
    fsync_directory(path.parent)


def _lock(path: Path) -> int:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise WALLockedError(f"WAL {path.parent} is already open (lock {path} is held)") from None
    return fd
