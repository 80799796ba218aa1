"""A simulated node's durable storage, and the single place crash semantics live.

The simulator never touches a node's storage except through :class:`Disk`:
:meth:`Disk.persist` is step 2 of the Ready contract, :meth:`Disk.crash`
discards whatever a power loss would, and ``durable_*`` report exactly what
would survive a crash right now (for the checkers).  :class:`MemoryDisk`
makes every write durable as soon as it returns; a disk model with fsync
semantics (unsynced writes lost, torn tails) is another implementation of the
same protocol.
"""

from __future__ import annotations

from typing import Protocol

from raft.messages import ConfState, HardState, Snapshot
from raft.ready import Ready
from raft.sim.checkers import LogView
from raft.storage import MemoryStorage, Storage


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

    def crash(self) -> None: ...

    def durable_hard_state(self) -> HardState: ...

    def durable_log(self) -> LogView: ...


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

    def crash(self) -> None:
        """Nothing written is lost: MemoryStorage writes are durable."""

    def durable_hard_state(self) -> HardState:
        return self.memory.hard_state

    def durable_log(self) -> LogView:
        return storage_log_view(self.memory)


def storage_log_view(storage: Storage) -> LogView:
    first, last = storage.first_index(), storage.last_index()
    entries = storage.entries(first, last + 1) if last >= first else []
    return LogView(first, storage.term(first - 1), tuple(entries))
