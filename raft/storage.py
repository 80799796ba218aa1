"""The storage contract the Raft core reads its durable state from.

The core never writes storage itself.  It hands the caller a :class:`~raft.ready.Ready`
with a hard state and entries to persist; the caller writes them (to a
:class:`MemoryStorage` in tests, to disk in a member) and only then calls
``RaftCore.advance``.  The core reads back through the :class:`Storage` protocol
whatever it no longer keeps in memory.

Index space: entries ``first_index() .. last_index()`` are available.  The entry
just before ``first_index()`` is covered by the latest snapshot; its term stays
known through :meth:`Storage.term` so the log consistency check still works at
the boundary.  An empty, never-compacted log has ``first_index() == 1`` and
``last_index() == 0``.
"""

from __future__ import annotations

from typing import Protocol

from raft.messages import ConfState, Entry, HardState, Snapshot, SnapshotMeta
from raft.ready import Ready


class CompactedError(LookupError):
    """The requested index is below the first available one (it is in a snapshot)."""


class UnavailableError(LookupError):
    """The requested index is past the last entry in storage."""


class Storage(Protocol):
    """Read access to a node's durable Raft state."""

    def initial_state(self) -> tuple[HardState, ConfState]:
        """The persisted hard state and the membership of the latest snapshot
        (or the bootstrap one); see :meth:`snapshot_meta` for the membership
        in effect."""
        ...

    def entries(self, lo: int, hi: int, max_bytes: int | None = None) -> list[Entry]:
        """Entries with ``lo <= index < hi``.

        With ``max_bytes``, returns a prefix whose total :meth:`Entry.size` stays
        under the cap, but always at least one entry.  Raises
        :class:`CompactedError` if ``lo < first_index()`` and
        :class:`UnavailableError` if ``hi > last_index() + 1``.
        """
        ...

    def term(self, index: int) -> int:
        """Term of the entry at ``index``; valid for ``first_index() - 1 .. last_index()``."""
        ...

    def first_index(self) -> int: ...

    def last_index(self) -> int: ...

    def snapshot_meta(self) -> SnapshotMeta:
        """Metadata of the most recent snapshot (index 0 when there is none).

        Its ``conf`` is the membership as of its index (the bootstrap
        membership at index 0): the core derives the membership in effect
        from it and the conf-change entries in the log after it.
        """
        ...

    def snapshot(self) -> Snapshot:
        """The most recent snapshot with its data, for sending to a follower
        that needs compacted entries."""
        ...


def limit_size(entries: list[Entry], max_bytes: int | None) -> list[Entry]:
    """The longest prefix of ``entries`` under ``max_bytes``, but at least one entry."""
    if max_bytes is None or not entries:
        return entries
    total = 0
    for count, entry in enumerate(entries):
        total += entry.size()
        if total > max_bytes and count > 0:
            return entries[:count]
    return entries


class SentinelLog:
    """Index arithmetic over an in-memory log whose first element is a
    sentinel standing for the last compacted entry (index 0 if none), so that
    entry's term stays known.  Shared by :class:`MemoryStorage` and the WAL's
    in-memory view of its log."""

    _entries: list[Entry]

    def first_index(self) -> int:
        return self._entries[0].index + 1

    def last_index(self) -> int:
        return self._entries[-1].index

    def term(self, index: int) -> int:
        offset = self._entries[0].index
        if index < offset:
            raise CompactedError(index)
        if index > self.last_index():
            raise UnavailableError(index)
        return self._entries[index - offset].term

    def entries(self, lo: int, hi: int, max_bytes: int | None = None) -> list[Entry]:
        offset = self._entries[0].index
        if lo <= offset:
            raise CompactedError(lo)
        if hi > self.last_index() + 1:
            raise UnavailableError(hi)
        return limit_size(self._entries[lo - offset : hi - offset], max_bytes)


class MemoryStorage(SentinelLog):
    """A :class:`Storage` kept in memory: for tests and the simulator.

    What the caller has written here is, by definition, "durable": a simulated
    crash keeps a node's ``MemoryStorage`` and throws everything else away.
    """

    def __init__(self, conf: ConfState | None = None) -> None:
        self.hard_state = HardState()
        self.conf = conf or ConfState()
        self._snapshot = SnapshotMeta(conf=self.conf)
        self._snapshot_data = b""
        # _entries[0] is a sentinel standing for the snapshot's last entry.
        self._entries: list[Entry] = [Entry(term=0, index=0)]

    # -- Storage protocol --------------------------------------------------------

    def initial_state(self) -> tuple[HardState, ConfState]:
        return self.hard_state, self.conf

    def snapshot_meta(self) -> SnapshotMeta:
        return self._snapshot

    def snapshot(self) -> Snapshot:
        return Snapshot(self._snapshot, self._snapshot_data)

    # -- Writers (the caller's side of the Ready contract) --------------------------

    def set_hard_state(self, hard_state: HardState) -> None:
        self.hard_state = hard_state

    def persist(self, ready: Ready) -> None:
        """Step 2 of the Ready contract: a received snapshot, then entries, then
        the hard state."""
        if ready.snapshot is not None:
            self.save_snapshot(ready.snapshot.meta, ready.snapshot.data)
            self.apply_snapshot(ready.snapshot.meta)
        self.append(ready.entries)
        if ready.hard_state is not None:
            self.set_hard_state(ready.hard_state)

    def append(self, entries: list[Entry]) -> None:
        """Append ``entries``, first truncating any stored suffix they overwrite.

        ``entries`` must be contiguous and start no later than ``last_index() + 1``.
        Entries already covered by the snapshot are ignored.
        """
        if not entries:
            return
        first = self.first_index()
        if entries[-1].index < first:
            return
        if entries[0].index < first:
            entries = entries[first - entries[0].index :]
        offset = self._entries[0].index
        start = entries[0].index - offset
        if start > len(self._entries):
            raise ValueError(
                f"gap in log: appending index {entries[0].index} after {self.last_index()}"
            )
        del self._entries[start:]
        self._entries.extend(entries)

    def stage_snapshot(self, meta: SnapshotMeta, data: bytes) -> None:
        """Nothing to prepare in memory (see :meth:`DiskStorage.stage_snapshot`)."""

    def save_snapshot(self, meta: SnapshotMeta, data: bytes) -> None:
        """Record a snapshot of the state machine at ``meta.index`` (the log is
        left alone: :meth:`compact` trims it separately)."""
        if meta.index < self._snapshot.index:
            return
        self._snapshot = meta
        self._snapshot_data = data

    def compact(self, index: int) -> None:
        """Discard entries up to and including ``index`` (a snapshot now covers them)."""
        offset = self._entries[0].index
        if index <= offset:
            return
        if index > self.last_index():
            raise UnavailableError(index)
        sentinel = self._entries[index - offset]
        kept = self._entries[index - offset + 1 :]
        self._entries = [Entry(term=sentinel.term, index=sentinel.index), *kept]

    def apply_snapshot(self, meta: SnapshotMeta) -> None:
        """Replace the log with a snapshot ending at ``meta.index``.

        Entries after the snapshot are kept if the log agrees with it at its last
        index; otherwise the whole log is discarded.
        """
        if meta.index <= self._entries[0].index:
            return
        keep: list[Entry] = []
        if meta.index <= self.last_index() and self.term(meta.index) == meta.term:
            keep = self._entries[meta.index - self._entries[0].index + 1 :]
        self._entries = [Entry(term=meta.term, index=meta.index), *keep]
        self._snapshot = meta
        self.conf = meta.conf
