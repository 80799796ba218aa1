"""A simulated node's durable storage, and the single place crash semantics live.

The simulator never touches a node's storage except through :class:`Disk`:
:meth:`Disk.persist` is step 2 of the Ready contract, :meth:`Disk.crash`
discards whatever a power loss would, and ``durable_*`` report exactly what
would survive a crash right now (for the checkers).  :class:`MemoryDisk`
makes every write durable as soon as it returns; :mod:`raft.sim.wal_disk`
runs the real :class:`~raft.disk_storage.DiskStorage` on a file-system model
with fsync semantics (unsynced writes lost or torn, bits flipped).

Power cuts *during* a write are part of the protocol:
:meth:`Disk.persist_interrupted`, :meth:`Disk.save_snapshot_interrupted` and
:meth:`Disk.recover_interrupted` start a write and lose power after ``ops`` disk
operations; the caller then crashes the node (:meth:`Disk.crash`).  A disk
whose content fails verification when the node starts raises
:class:`DiskRefused` from :attr:`Disk.storage`: the node cannot start.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable

from raft.messages import ConfState, HardState, Snapshot
from raft.ready import Ready
from raft.sim.checkers import LogView
from raft.storage import MemoryStorage, Storage


class DiskRefused(Exception):
    """The disk's content failed verification when the node tried to start
    (a checksum mismatch, a missing snapshot): the node stays down."""


class Disk(Protocol):
    """A node's durable state as the simulator drives it.

    ``storage`` is what a core reads (at start and whenever it needs entries
    it no longer keeps in memory).  ``persist`` is step 2 of the Ready
    contract.  ``crash`` discards whatever a power loss would.  ``durable_*``
    report exactly what would survive a crash right now (for the checkers).
    """

    @property
    def storage(self) -> Storage: ...

    def persist(self, ready: Ready) -> None: ...

    def save_snapshot(self, snapshot: Snapshot) -> None:
        """Store ``snapshot`` (taken by this node's state machine) and discard
        the log entries it covers."""
        ...

    def persist_interrupted(self, ready: Ready, ops: int) -> str:
        """Start :meth:`persist` and lose power after ``ops`` disk operations
        (or just after the write, if it needs fewer).  The caller crashes the
        node next.  Returns a description of how far the write got."""
        ...

    def save_snapshot_interrupted(self, snapshot: Snapshot, ops: int) -> str:
        """Start :meth:`save_snapshot` and lose power after ``ops`` disk operations."""
        ...

    def recover_interrupted(self, ops: int) -> str:
        """The node restarts and loses power after ``ops`` disk operations of
        recovery; it stays down.  Only valid while the node is down."""
        ...

    def crash(self) -> str | None:
        """Lose power: keep what was durable (the core is gone).  Returns a
        description of what was lost, for the trace, or ``None``."""
        ...

    def durable_hard_state(self) -> HardState: ...

    def durable_log(self) -> LogView: ...


@runtime_checkable
class CorruptibleDisk(Protocol):
    """A disk whose files can rot (:meth:`raft.sim.cluster.Cluster.corrupt`)."""

    def flip_bit(self) -> str:
        """Flip one bit in a durable file the node reads when it starts; only
        valid while the node is down.  Returns what was flipped, for the trace."""
        ...


class MemoryDisk:
    """A disk on which every write is durable as soon as it returns."""

    def __init__(self, conf: ConfState) -> None:
        self.memory = MemoryStorage(conf)

    @property
    def storage(self) -> Storage:
        return self.memory

    def persist(self, ready: Ready) -> None:
        self.memory.persist(ready)

    def save_snapshot(self, snapshot: Snapshot) -> None:
        self.memory.save_snapshot(snapshot.meta, snapshot.data)
        self.memory.compact(snapshot.meta.index)

    def persist_interrupted(self, ready: Ready, ops: int) -> str:
        """A prefix of the write survives: the parts of the Ready (received
        snapshot, entries, hard state) are each one operation, in that order."""
        parts: list[Callable[[], None]] = []
        if ready.snapshot is not None:
            snapshot = ready.snapshot

            def install() -> None:
                self.memory.save_snapshot(snapshot.meta, snapshot.data)
                self.memory.apply_snapshot(snapshot.meta)

            parts.append(install)
        if ready.entries:
            parts.append(lambda: self.memory.append(ready.entries))
        if ready.hard_state is not None:
            hard_state = ready.hard_state
            parts.append(lambda: self.memory.set_hard_state(hard_state))
        for part in parts[:ops]:
            part()
        return f"{min(ops, len(parts))} of {len(parts)} parts written"

    def save_snapshot_interrupted(self, snapshot: Snapshot, ops: int) -> str:
        """Saving the snapshot and compacting the log are one operation each."""
        if ops >= 1:
            self.memory.save_snapshot(snapshot.meta, snapshot.data)
        if ops >= 2:
            self.memory.compact(snapshot.meta.index)
        return f"{min(ops, 2)} of 2 steps done"

    def recover_interrupted(self, ops: int) -> str:
        """Recovery writes nothing to a memory disk."""
        return "nothing to recover"

    def crash(self) -> str | None:
        """Nothing written is lost: MemoryStorage writes are durable."""
        return None

    def durable_hard_state(self) -> HardState:
        return self.memory.hard_state

    def durable_log(self) -> LogView:
        return storage_log_view(self.memory)


def storage_log_view(storage: Storage) -> LogView:
    first, last = storage.first_index(), storage.last_index()
    entries = storage.entries(first, last + 1) if last >= first else []
    return LogView(first, storage.term(first - 1), tuple(entries))
