"""The Raft log as the core sees it: durable entries in :class:`Storage` followed
by an in-memory *unstable* suffix the driver has not yet reported persisted.

``committed`` is the highest index known to be committed; ``applied`` the highest
index handed to the driver for applying.  Invariants:

    applied <= committed <= last_index()
    unstable_offset == (index of the first unstable entry) <= last_index() + 1
"""

from __future__ import annotations

from raft.errors import SafetyViolation
from raft.membership import ConfLog
from raft.messages import Entry, Snapshot
from raft.storage import CompactedError, Storage, UnavailableError, limit_size


class RaftLog:
    def __init__(self, storage: Storage, applied: int = 0) -> None:
        self.storage = storage
        self.pending_snapshot: Snapshot | None = None
        """A snapshot received from the leader, not yet reported persisted; it
        replaces everything the log held up to its index."""
        self.unstable: list[Entry] = []
        self.unstable_offset = storage.last_index() + 1
        first = storage.first_index()
        hard_state, _ = storage.initial_state()
        self.committed = max(hard_state.commit, first - 1)
        self.applied = max(min(applied, self.committed), first - 1)
        snapshot = storage.snapshot_meta()
        self.confs = ConfLog(snapshot.conf, snapshot.index)
        """The membership in effect: the snapshot's, then every conf change in the log."""
        self._scan_confs(max(snapshot.index + 1, first), storage.last_index())

    def _scan_confs(self, lo: int, hi: int) -> None:
        step = 4096
        for start in range(lo, hi + 1, step):
            self.confs.append(self.storage.entries(start, min(start + step, hi + 1)))

    # -- Index arithmetic ---------------------------------------------------------

    def first_index(self) -> int:
        if self.pending_snapshot is not None:
            return self.pending_snapshot.meta.index + 1
        return self.storage.first_index()

    def last_index(self) -> int:
        if self.unstable:
            return self.unstable[-1].index
        if self.pending_snapshot is not None:
            return self.pending_snapshot.meta.index
        return self.storage.last_index()

    def last_term(self) -> int:
        return self.term(self.last_index())

    def stable_last_index(self) -> int:
        """The last index the driver has reported durable."""
        return self.unstable_offset - 1

    def term(self, index: int) -> int:
        """Term of the entry at ``index``.

        Raises :class:`CompactedError` below the snapshot boundary and
        :class:`UnavailableError` past the last entry.
        """
        if self.unstable and index >= self.unstable_offset:
            if index > self.unstable[-1].index:
                raise UnavailableError(index)
            return self.unstable[index - self.unstable_offset].term
        if self.pending_snapshot is not None:
            meta = self.pending_snapshot.meta
            if index == meta.index:
                return meta.term
            raise CompactedError(index) if index < meta.index else UnavailableError(index)
        if index < self.first_index() - 1:
            raise CompactedError(index)
        if index > self.storage.last_index():
            raise UnavailableError(index)
        return self.storage.term(index)

    def term_or_zero(self, index: int) -> int:
        """Term at ``index``, or 0 when the index is outside the log."""
        try:
            return self.term(index)
        except (CompactedError, UnavailableError):
            return 0

    def match_term(self, index: int, term: int) -> bool:
        try:
            return self.term(index) == term
        except (CompactedError, UnavailableError):
            return False

    def is_up_to_date(self, last_index: int, last_term: int) -> bool:
        """Election restriction (§5.4.1): is a log ending at ``(last_index,
        last_term)`` at least as up to date as ours?"""
        our_term = self.last_term()
        return last_term > our_term or (last_term == our_term and last_index >= self.last_index())

    # -- Reading entries ----------------------------------------------------------

    def entries(self, lo: int, hi: int, max_bytes: int | None = None) -> list[Entry]:
        """Entries ``lo <= index < hi``, at least one if the range is not empty."""
        if lo >= hi:
            return []
        if lo < self.first_index():
            raise CompactedError(lo)
        if hi > self.last_index() + 1:
            raise UnavailableError(hi)
        result: list[Entry] = []
        if lo < self.unstable_offset:
            result = self.storage.entries(lo, min(hi, self.unstable_offset), max_bytes)
            if len(result) < min(hi, self.unstable_offset) - lo:
                return result  # the size cap cut the stable part short
        if hi > self.unstable_offset:
            start = max(lo, self.unstable_offset) - self.unstable_offset
            result = result + self.unstable[start : hi - self.unstable_offset]
        return limit_size(result, max_bytes)

    def entries_from(self, lo: int, max_bytes: int | None = None) -> list[Entry]:
        return self.entries(lo, self.last_index() + 1, max_bytes)

    def find_conflict_by_term(self, index: int, term: int) -> tuple[int, int]:
        """The last ``(i, term(i))`` with ``i <= index`` and ``term(i) <= term``.

        Used on both sides of a rejected append: everything after the returned
        index either does not exist or belongs to a term the other side's log
        cannot match there, so a whole term is skipped per round trip.
        """
        index = min(index, self.last_index())
        while index > 0:
            try:
                our_term = self.term(index)
            except CompactedError:
                break
            if our_term <= term:
                return index, our_term
            index -= 1
        return index, self.term_or_zero(index)

    # -- Writing ------------------------------------------------------------------

    def append(self, entries: list[Entry]) -> int:
        """Append ``entries`` to the unstable suffix, truncating whatever they overwrite.

        The caller guarantees ``entries`` start at most at ``last_index() + 1``
        and never overwrite a committed entry.
        """
        if not entries:
            return self.last_index()
        first = entries[0].index
        if first <= self.committed:
            raise SafetyViolation(f"overwriting committed index {first} (commit {self.committed})")
        if first > self.last_index() + 1:
            raise SafetyViolation(f"gap: appending {first} after {self.last_index()}")
        if first <= self.last_index():
            self.confs.truncate_from(first)
        self.confs.append(entries)
        if first >= self.unstable_offset:
            del self.unstable[first - self.unstable_offset :]
        else:
            # Overwriting part of the stable log: the new suffix replaces it once persisted.
            self.unstable = []
            self.unstable_offset = first
        self.unstable.extend(entries)
        return self.last_index()

    def maybe_append(
        self, prev_index: int, prev_term: int, commit: int, entries: list[Entry]
    ) -> int | None:
        """The follower side of AppendEntries (§5.3).

        Returns the index of the last entry now known to match the leader, or
        ``None`` when the consistency check at ``prev_index`` fails.
        """
        if not self.match_term(prev_index, prev_term):
            return None
        last_new = prev_index + len(entries)
        conflict = self._find_conflict(entries)
        if conflict:
            self.append(entries[conflict - entries[0].index :])
        self.commit_to(min(commit, last_new))
        return last_new

    def _find_conflict(self, entries: list[Entry]) -> int:
        """Index of the first entry that is new or disagrees with our log, or 0."""
        for entry in entries:
            if not self.match_term(entry.index, entry.term):
                return entry.index
        return 0

    def commit_to(self, index: int) -> None:
        """Raise the commit index (never lowers it)."""
        if index > self.committed:
            if index > self.last_index():
                raise SafetyViolation(f"commit {index} beyond last index {self.last_index()}")
            self.committed = index

    # -- Driver bookkeeping ---------------------------------------------------------

    def next_committed_entries(self, max_bytes: int | None) -> list[Entry]:
        """Committed entries not yet handed out for applying."""
        if self.committed <= self.applied:
            return []
        return self.entries(self.applied + 1, self.committed + 1, max_bytes)

    def applied_to(self, index: int) -> None:
        if index > self.committed or index < self.applied:
            raise SafetyViolation(f"applied {index} outside [{self.applied}, {self.committed}]")
        self.applied = index

    def restore(self, snapshot: Snapshot) -> None:
        """Replace the whole log with ``snapshot`` (a follower far behind the leader).

        The snapshot is committed by definition, and handing it out in a Ready
        counts as handing out every entry it covers for applying.
        """
        if snapshot.meta.index <= self.committed:
            raise SafetyViolation(
                f"restoring snapshot {snapshot.meta.index} at or below commit {self.committed}"
            )
        self.pending_snapshot = snapshot
        self.confs.reset(snapshot.meta.conf, snapshot.meta.index)
        self.unstable = []
        self.unstable_offset = snapshot.meta.index + 1
        self.committed = snapshot.meta.index
        self.applied = snapshot.meta.index

    def stable_snapshot_to(self, index: int) -> None:
        """The driver persisted the pending snapshot ending at ``index``."""
        if self.pending_snapshot is not None and self.pending_snapshot.meta.index == index:
            self.pending_snapshot = None

    def stable_to(self, index: int, term: int) -> None:
        """The driver persisted the unstable entries up to ``(index, term)``."""
        if not self.unstable or index < self.unstable_offset:
            return
        position = index - self.unstable_offset
        if position >= len(self.unstable) or self.unstable[position].term != term:
            return  # overwritten since it was handed out: not the entry that was persisted
        del self.unstable[: position + 1]
        self.unstable_offset = index + 1
