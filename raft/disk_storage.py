"""Durable Raft storage: a write-ahead log plus snapshot files, with the log cached in memory.

``DiskStorage(directory)`` implements the :class:`~raft.storage.Storage` protocol
the core reads from and the writer methods :class:`~raft.storage.MemoryStorage`
has, so a driver uses either the same way.  Layout::

    directory/wal/    segments of the write-ahead log (:mod:`raft.wal`)
    directory/snap/   snapshot files (:mod:`raft.snapshot_file`)

Log reads never touch the disk: the WAL keeps the whole (uncompacted) log in
memory, as etcd keeps its raft log in a MemoryStorage in front of its WAL.  Only
:meth:`DiskStorage.snapshot` reads (and verifies) the snapshot file.

Durability contract
-------------------
* :meth:`DiskStorage.persist` is step 2 of the Ready contract: a received
  snapshot, then the entries, then the hard state.  The WAL part is one write
  (two when there is a snapshot) and, when ``ready.must_sync``, exactly one
  fsync (more only when the write rolls over to a new segment); it returns only
  once everything is durable.  Without ``must_sync`` (and without a snapshot)
  nothing is fsynced.  A received snapshot's file is written and fsynced
  before the WAL records it.
* :meth:`append`, :meth:`set_hard_state`, :meth:`compact`,
  :meth:`apply_snapshot` and :meth:`save_snapshot` are durable on return.
* :meth:`save_snapshot` makes the snapshot file durable *before* the WAL records
  it (or finds it made durable by :meth:`stage_snapshot`), and compacts the log
  only after that; :meth:`apply_snapshot` (which may
  discard the log) refuses a snapshot whose data was not saved first.  So after
  any crash the WAL never refers to a snapshot whose file is missing.

Not thread-safe: the driver serializes calls (reads included) with writes.  The
one exception is :meth:`stage_snapshot`, which touches only a new snapshot file
and may run in another thread alongside them.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from raft.messages import ConfState, Entry, HardState, Snapshot, SnapshotMeta
from raft.ready import Ready
from raft.snapshot_file import SnapshotNotFoundError, SnapshotStore
from raft.wal import DEFAULT_MAX_RECORD_BYTES, DEFAULT_SEGMENT_BYTES, WAL

__all__ = ["DEFAULT_KEEP_ENTRIES", "DEFAULT_KEEP_SNAPSHOTS", "DiskStorage"]

DEFAULT_KEEP_ENTRIES = 5000
"""Entries kept behind a snapshot so slow followers catch up from the log
(etcd's ``DefaultSnapshotCatchUpEntries``)."""
DEFAULT_KEEP_SNAPSHOTS = 2


class DiskStorage:
    """Raft storage in ``directory``, recovered on construction.

    ``conf`` is the membership to bootstrap with if the directory is new; once
    stored, the stored one wins.  Afterwards :meth:`initial_state` reports the
    membership of the latest snapshot (saved or received), as etcd restores it.
    ``keep_entries`` is how many entries before a saved snapshot's index stay in
    the log (``None``: :meth:`save_snapshot` does not compact, as
    ``MemoryStorage``; the caller calls :meth:`compact`); ``keep_snapshots`` is
    how many snapshot files are kept.  Raises :class:`~raft.wal.CorruptWALError` or
    :class:`~raft.snapshot_file.SnapshotNotFoundError` if the stored state is
    damaged, and :class:`~raft.wal.WALLockedError` if it is already open.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        conf: ConfState | None = None,
        *,
        segment_bytes: int = DEFAULT_SEGMENT_BYTES,
        max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
        keep_entries: int | None = DEFAULT_KEEP_ENTRIES,
        keep_snapshots: int = DEFAULT_KEEP_SNAPSHOTS,
    ) -> None:
        if keep_entries is not None and keep_entries < 0:
            raise ValueError("keep_entries must not be negative")
        self.directory = Path(directory)
        self.keep_entries = keep_entries
        self._wal = WAL(
            self.directory / "wal",
            conf=conf,
            segment_bytes=segment_bytes,
            max_record_bytes=max_record_bytes,
        )
        try:
            self._snapshots = SnapshotStore(self.directory / "snap", retain=keep_snapshots)
            meta = self._wal.state.snapshot
            if meta.index > 0 and not self._snapshots.exists(meta):
                raise SnapshotNotFoundError(
                    f"the WAL in {self.directory} refers to snapshot {meta}, "
                    f"but {self._snapshots.path(meta)} does not exist"
                )
        except BaseException:
            self._wal.close()
            raise

    # -- Storage protocol ------------------------------------------------------------

    def initial_state(self) -> tuple[HardState, ConfState]:
        return self._wal.hard_state, self._wal.state.conf

    def entries(self, lo: int, hi: int, max_bytes: int | None = None) -> list[Entry]:
        return self._wal.state.entries(lo, hi, max_bytes)

    def term(self, index: int) -> int:
        return self._wal.state.term(index)

    def first_index(self) -> int:
        return self._wal.state.first_index()

    def last_index(self) -> int:
        return self._wal.state.last_index()

    def snapshot_meta(self) -> SnapshotMeta:
        return self._wal.state.snapshot

    def snapshot(self) -> Snapshot:
        """The latest snapshot with its data, read from its file and verified
        (empty data when there is none).  Raises
        :class:`~raft.snapshot_file.CorruptSnapshotError` naming the file if it
        fails its checksum."""
        meta = self._wal.state.snapshot
        if meta.index == 0:
            return Snapshot(meta, b"")
        return Snapshot(meta, self._snapshots.load(meta))

    # -- Conveniences MemoryStorage also has ----------------------------------------

    @property
    def hard_state(self) -> HardState:
        """The hard state last persisted (see :class:`~raft.wal.WAL` for the
        commit index that goes out with the next write)."""
        return self._wal.hard_state

    @property
    def conf(self) -> ConfState:
        return self._wal.state.conf

    @property
    def wal(self) -> WAL:
        """The underlying log (for fsync counters and tests)."""
        return self._wal

    # -- Writers ---------------------------------------------------------------------

    def persist(self, ready: Ready) -> None:
        """Persist ``ready.snapshot`` (if any), then ``ready.entries``, then
        ``ready.hard_state``; durable on return if ``ready.must_sync`` or there is
        a snapshot.  Same effect as :meth:`MemoryStorage.persist`.

        A received snapshot is written to its file (fsynced, renamed, directory
        fsynced) first; the WAL then gets the snapshot record unsynced and the
        entries and hard state after it, and one fsync makes them all durable.
        """
        snapshot = ready.snapshot
        if snapshot is None or snapshot.meta.index < self._wal.state.snapshot.index:
            self._wal.save(ready.entries, ready.hard_state, sync=ready.must_sync)
            return
        self._snapshots.save(snapshot.meta, snapshot.data)
        self._wal.install_snapshot(snapshot.meta, sync=False)
        self._wal.save(ready.entries, ready.hard_state, sync=True)
        self._snapshots.prune(self._wal.state.snapshot)

    def append(self, entries: Sequence[Entry]) -> None:
        """Durably append ``entries``, first truncating any stored suffix they overwrite.

        Same rules as :meth:`MemoryStorage.append`: entries already compacted are
        ignored; ``ValueError`` on a gap or non-contiguous entries.
        """
        self._wal.save(entries, None, sync=True)

    def set_hard_state(self, hard_state: HardState) -> None:
        self._wal.save([], hard_state, sync=True)

    def compact(self, index: int) -> None:
        """Durably discard entries up to and including ``index``; WAL segments that
        then hold only discarded entries are deleted."""
        self._wal.compact(index)

    def stage_snapshot(self, meta: SnapshotMeta, data: bytes) -> None:
        """Write the file of snapshot ``meta`` (atomically, durably) without
        recording it, so that :meth:`save_snapshot` need not.  Safe alongside
        any other call: it touches only that file.  Until it is recorded, the
        file may be pruned again (then :meth:`save_snapshot` writes it anew)."""
        self._snapshots.save(meta, data)

    def save_snapshot(self, meta: SnapshotMeta, data: bytes) -> None:
        """Durably save a snapshot of the state machine up to ``meta.index``.

        In order: the file is written atomically; the WAL records the snapshot
        (``snapshot_meta()`` now returns ``meta``); unless ``keep_entries`` is
        ``None``, the log is compacted up to ``meta.index - keep_entries`` (never
        past the commit index or the last entry), which deletes redundant WAL
        segments; old snapshot files are pruned.  The log after ``meta.index`` is
        untouched (a snapshot received from a leader goes through :meth:`persist`,
        or :meth:`apply_snapshot` after this).

        As ``MemoryStorage.save_snapshot``, a snapshot older than the current one
        is ignored; saving the current one again is a no-op.
        """
        current = self._wal.state.snapshot
        if meta == current or meta.index < current.index:
            return
        if not self._snapshots.exists(meta):  # files appear whole (renamed) or not at all
            self._snapshots.save(meta, data)
        self._wal.mark_snapshot(meta)
        if self.keep_entries is not None:
            state = self._wal.state
            commit = self._wal.hard_state.commit
            cut = min(meta.index - self.keep_entries, commit, state.last_index())
            if cut >= state.first_index():
                self._wal.compact(cut)
        self._snapshots.prune(meta)

    def apply_snapshot(self, meta: SnapshotMeta) -> None:
        """Durably make the snapshot ``meta`` the base of the log.

        As :meth:`MemoryStorage.apply_snapshot`: nothing changes at or below the
        compacted index; otherwise entries after ``meta.index`` are kept if the log
        has ``meta.index`` with ``meta.term``, and the whole log is discarded if
        not.  The data must have been saved with :meth:`save_snapshot` first
        (:class:`SnapshotNotFoundError` otherwise).  A snapshot older than the
        current one is ignored.
        """
        if meta.index < self._wal.state.snapshot.index:
            return
        if not self._snapshots.exists(meta):
            raise SnapshotNotFoundError(
                f"apply_snapshot({meta}) before save_snapshot: {self._snapshots.path(meta)} "
                "does not exist"
            )
        self._wal.install_snapshot(meta)
        self._snapshots.prune(self._wal.state.snapshot)

    def load_snapshot(self) -> tuple[SnapshotMeta, bytes] | None:
        """The latest snapshot and its verified data, or ``None`` if there is none.

        Raises :class:`~raft.snapshot_file.CorruptSnapshotError` (naming the file)
        if the file fails its checksum.
        """
        snapshot = self.snapshot()
        return None if snapshot.meta.index == 0 else (snapshot.meta, snapshot.data)

    def close(self) -> None:
        """Sync anything unsynced and release the directory; idempotent."""
        self._wal.close()

    def __enter__(self) -> DiskStorage:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
