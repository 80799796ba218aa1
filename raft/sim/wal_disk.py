"""The real durable storage on a simulated disk with fsync semantics.

:class:`WALDisk` is a :class:`~raft.sim.disk.Disk` that runs the real
:class:`~raft.disk_storage.DiskStorage` in a directory of its own, so the real
write-ahead log, snapshot files and crash recovery are what the simulator
tests.  While a storage call runs, :class:`SimFS` intercepts the file-system
calls it makes on paths under that directory (``os.open`` creating a file,
``os.write``, ``os.ftruncate``, ``os.fsync``/``os.fdatasync``,
``os.rename``, ``os.unlink``, ``os.mkdir``, ``os.close``), performs them for
real but never issues a real fsync (the simulator stays fast), and keeps a
model of what a power loss would keep.

What is modelled
----------------
* A file's **content** is durable as of its last ``fsync``/``fdatasync``.
* A directory's **entries** (a file or directory created, renamed or removed)
  are durable as of the last fsync of that directory.
* A **crash** (:meth:`WALDisk.crash`) rebuilds the directory the way a disk
  comes back after a power loss: of the directory operations not yet made
  durable, a random *prefix* survives (in the order they were issued, as a
  journaling file system commits metadata); a file written since its last
  fsync comes back with its synced content plus a random prefix of what was
  appended since -- a torn write, often cut inside a record -- sometimes
  followed by zeros up to the written length (the size reached the disk, the
  data did not).  A file changed other than by appending comes back either as
  synced or as written.  A crash thus loses what was not fsynced and may tear
  the last record.
* **Power cuts at any point** of a write (:meth:`WALDisk.persist_interrupted`,
  :meth:`WALDisk.save_snapshot_interrupted`, :meth:`WALDisk.recover_interrupted`):
  after ``ops`` intercepted operations the next one fails with
  :class:`PowerCut` -- a write that is cut first writes a random prefix of its
  data -- and so does every later one, so nothing after the cut reaches the
  disk; the storage object is abandoned without a sync.  This covers crashes
  in the middle of a persist (before it was durable, so before any
  ``persisted_messages`` left), of a snapshot save and compaction, of a
  received snapshot's install, and of recovery itself.
* **Bit rot** (:meth:`WALDisk.flip_bit`, on a node that is down): one bit of a
  durable file the node reads when it starts is flipped -- in a WAL record
  that is followed by an intact record (any record of an earlier segment, the
  start record of a segment, any but the last intact record of the last
  segment), or in the current snapshot file.  The next start must refuse
  (:class:`~raft.wal.CorruptWALError`,
  :class:`~raft.snapshot_file.CorruptSnapshotError` or
  :class:`~raft.snapshot_file.SnapshotNotFoundError`): :attr:`WALDisk.storage`
  raises :class:`~raft.sim.disk.DiskRefused` and the node stays down, having
  applied nothing from the damaged files.

Checks of its own, on every start after a crash: recovery must not refuse
unless a bit was flipped (:class:`StorageViolation`), must detect every flipped
bit (:class:`UndetectedCorruption`), and must bring back everything that was
durable: the hard state and the snapshot do not go back, and every entry of
the last durable log comes back, except entries at or after the first index
that a write since then (itself not yet durable) was replacing.

:meth:`WALDisk.durable_log` and :meth:`WALDisk.durable_hard_state` (what the
checkers see) are the storage's state at the last moment nothing written was
unsynced: a lower bound of what a crash keeps.  After a flip they stay what
the disk held before it (the commit reached those disks; the flip is a fault
outside Raft's model of stable storage, survived as long as only a minority of
disks rot).

Not modelled
------------
* Reordering within unsynced data: a crash loses a *suffix* of the unsynced
  appends to a file, never a hole in the middle (pages of one write persisted
  out of order; the WAL documents that it refuses to start then), and stale
  data from deleted files never shows up in a torn tail (only zeros do).
* Write or fsync errors (EIO, ENOSPC), and a file system that loses data it
  had acknowledged as synced.
* Rot on a running node: it is found at the next start; a leader reading a
  rotten snapshot file in order to send it is not modelled.
* The ``LOCK`` file carries no data: creating an empty file is not counted as
  unsynced state.

Linux only (the simulator's directories live on ``/dev/shm`` when it exists;
``KVSTORE_SIM_DISK_DIR`` chooses another place).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import random
import shutil
import stat
import struct
import tempfile
import weakref
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any, Final, NoReturn

import msgspec

from raft.disk_storage import DiskStorage
from raft.messages import ConfState, HardState, Snapshot, SnapshotMeta
from raft.ready import Ready
from raft.sim.checkers import DurabilityViolation, LogView, Violation
from raft.sim.disk import DiskRefused, storage_log_view
from raft.snapshot_file import SnapshotError, snapshot_name
from raft.wal import (
    CorruptWALError,
    InstallSnapshotRecord,
    Record,
    SegmentStart,
    SnapshotRecord,
)

__all__ = [
    "PowerCut",
    "SimFS",
    "StorageViolation",
    "UndetectedCorruption",
    "WALDisk",
    "WALDiskFactory",
    "default_directory",
]


class PowerCut(BaseException):
    """Raised inside the storage code when the simulated power fails.

    A ``BaseException``, so the code under test cannot swallow it with an
    ``except Exception``; its ``except BaseException: cleanup; raise`` blocks
    run, but every disk operation they try fails too.
    """


class StorageViolation(DurabilityViolation):
    """Recovery after a crash refused to start, or lost something that was durable."""


class UndetectedCorruption(Violation):
    """A node started from files in which a bit had been flipped."""

    prop = "corruption"


# -- the file-system model --------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Link:
    """A file (``gen``) or a directory (``gen is None``) was created as ``dir/name``."""

    dir: str
    name: str
    gen: int | None


@dataclasses.dataclass(frozen=True)
class _Rename:
    dir: str
    src: str
    dst: str


@dataclasses.dataclass(frozen=True)
class _Unlink:
    dir: str
    name: str


_DirOp = _Link | _Rename | _Unlink
_Listings = dict[str, dict[str, int | None]]
"""Directory (relative path, ``""`` for the root) -> name -> file generation,
or ``None`` for a subdirectory."""

_PATCHED: Final = (
    "open",
    "write",
    "ftruncate",
    "fsync",
    "fdatasync",
    "rename",
    "unlink",
    "mkdir",
    "close",
    "replace",
    "remove",
    "rmdir",
    "truncate",
    "pwrite",
)


def _join(directory: str, name: str) -> str:
    return f"{directory}/{name}" if directory else name


def _split(rel: str) -> tuple[str, str]:
    directory, _, name = rel.rpartition("/")
    return directory, name


def _apply(listings: _Listings, op: _DirOp) -> None:
    listing = listings.setdefault(op.dir, {})
    if isinstance(op, _Link):
        listing[op.name] = op.gen
    elif isinstance(op, _Rename):
        if op.src in listing:
            listing[op.dst] = listing.pop(op.src)
    else:
        listing.pop(op.name, None)


class SimFS:
    """The durability model of one directory tree (see the module docstring).

    Files are tracked by *generation*: a number given to each file when it is
    created, which renames keep.  ``_synced`` holds each generation's content
    as of its last fsync, ``_durable`` the directory listings as of each
    directory's last fsync, ``_pending`` the directory operations since, in
    order.  Only calls made inside :meth:`active` on paths under ``root`` (or
    descriptors opened there) are modelled; everything else passes through.
    """

    def __init__(self, root: Path, rng: random.Random) -> None:
        self.root = Path(os.path.abspath(root))
        self._prefix = str(self.root) + os.sep
        self.rng = rng
        self._next_gen = 0
        self._budget: int | None = None
        self._powered = True
        self.cut_at: str | None = None
        """The operation the last power cut hit (for the trace)."""
        self.truncations = 0
        """``ftruncate`` calls seen (recovery truncating a torn tail)."""
        self._real: dict[str, Any] = {}
        self._fds: dict[int, tuple[str, int | None]] = {}
        self._reset()

    # -- state -------------------------------------------------------------------------

    def rescan(self) -> None:
        """Take everything now on disk as durable (after changing files by hand
        while nothing was unsynced, e.g. flipping a bit of a down node's file)."""
        self._reset()

    def _reset(self) -> None:
        """Everything now on disk is durable (a fresh or rebuilt directory)."""
        self._gen_at: dict[str, int] = {}
        self._path_of: dict[int, str] = {}
        self._durable: _Listings = {}
        self._synced: dict[int, bytes] = {}
        self._dirty: set[int] = set()
        self._pending: list[_DirOp] = []
        for dirpath, dirnames, filenames in os.walk(self.root):
            rel = os.path.relpath(dirpath, self.root)
            rel = "" if rel == "." else rel.replace(os.sep, "/")
            listing: dict[str, int | None] = dict.fromkeys(dirnames)
            for name in filenames:
                gen = self._new_gen(_join(rel, name))
                listing[name] = gen
                self._synced[gen] = Path(dirpath, name).read_bytes()
            self._durable[rel] = listing

    def _new_gen(self, rel: str) -> int:
        self._next_gen += 1
        gen = self._next_gen
        self._gen_at[rel] = gen
        self._path_of[gen] = rel
        return gen

    def clean(self) -> bool:
        """Would a crash right now keep everything written?"""
        if self._dirty:
            return False
        return all(
            isinstance(op, _Link) and op.gen is not None and not self._synced.get(op.gen)
            for op in self._pending
        )

    # -- power --------------------------------------------------------------------------

    def arm(self, ops: int) -> None:
        """Cut the power when ``ops`` more disk operations have been done."""
        self._budget = ops
        self.cut_at = None

    def disarm(self) -> None:
        self._budget = None

    def power_off(self) -> None:
        self._powered = False

    @property
    def powered(self) -> bool:
        return self._powered

    def _tick(self, what: str) -> None:
        if not self._powered:
            raise PowerCut(f"the power is off ({what})")
        if self._budget is not None:
            if self._budget <= 0:
                self._powered = False
                self.cut_at = what
                raise PowerCut(f"power cut at {what}")
            self._budget -= 1

    def _cut_next(self) -> bool:
        return self._powered and self._budget is not None and self._budget <= 0

    # -- interception -------------------------------------------------------------------

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        """Model the calls made inside this block (process-wide: single-threaded use only)."""
        self._real = {name: getattr(os, name) for name in _PATCHED}
        for name in _PATCHED:
            setattr(os, name, getattr(self, f"_os_{name}"))
        try:
            yield
        finally:
            for name, function in self._real.items():
                setattr(os, name, function)

    def _rel(self, path: Any) -> str | None:
        if isinstance(path, int):
            return None
        full = os.path.abspath(os.fsdecode(os.fspath(path)))
        if full == str(self.root):
            return ""
        if full.startswith(self._prefix):
            return full[len(self._prefix) :].replace(os.sep, "/")
        return None

    def _os_open(self, path: Any, flags: int, mode: int = 0o777, **kwargs: Any) -> int:
        real = self._real["open"]
        rel = None if kwargs.get("dir_fd") is not None else self._rel(path)
        if rel is None:
            return int(real(path, flags, mode, **kwargs))
        creating = bool(flags & os.O_CREAT) and not os.path.lexists(path)
        if creating:
            self._tick(f"create {rel}")
        fd = int(real(path, flags, mode))
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            self._fds[fd] = (rel, None)
            return fd
        if creating:
            gen = self._new_gen(rel)
            self._pending.append(_Link(*_split(rel), gen))
        else:
            known = self._gen_at.get(rel)
            if known is None:  # not created through the model: take it as durable
                known = self._new_gen(rel)
                self._synced[known] = Path(path).read_bytes()
            gen = known
            if flags & os.O_TRUNC:
                self._dirty.add(gen)
        self._fds[fd] = (rel, gen)
        return fd

    def _file(self, fd: int) -> int | None:
        entry = self._fds.get(fd)
        return None if entry is None else entry[1]

    def _os_write(self, fd: int, data: Any) -> int:
        real = self._real["write"]
        gen = self._file(fd)
        if gen is None:
            return int(real(fd, data))
        if self._cut_next():
            view = memoryview(data)
            keep = self.rng.randrange(len(view)) if len(view) else 0
            if keep:
                real(fd, view[:keep])
                self._dirty.add(gen)
        self._tick(f"write {len(data)} bytes to {self._path_of.get(gen, '?')}")
        self._dirty.add(gen)
        return int(real(fd, data))

    def _os_pwrite(self, fd: int, *args: Any) -> int:
        if fd in self._fds:
            raise NotImplementedError("the disk model does not support pwrite")
        return int(self._real["pwrite"](fd, *args))

    def _os_ftruncate(self, fd: int, length: int) -> None:
        gen = self._file(fd)
        if gen is not None:
            self._tick(f"ftruncate {self._path_of.get(gen, '?')} to {length}")
            self._dirty.add(gen)
            self.truncations += 1
        self._real["ftruncate"](fd, length)

    def _os_fsync(self, fd: int) -> None:
        self._sync(fd, "fsync")

    def _os_fdatasync(self, fd: int) -> None:
        self._sync(fd, "fdatasync")

    def _sync(self, fd: int, name: str) -> None:
        entry = self._fds.get(fd)
        if entry is None:
            self._real[name](fd)
            return
        rel, gen = entry
        if gen is None:
            self._tick(f"{name} directory {rel or '.'}")
            pending = []
            for op in self._pending:
                if op.dir == rel:
                    _apply(self._durable, op)
                else:
                    pending.append(op)
            self._pending = pending
            return
        path = self._path_of.get(gen)
        self._tick(f"{name} {path}")
        if path is not None:
            self._synced[gen] = (self.root / path).read_bytes()
        else:  # unlinked while open: read it through the descriptor
            with open(f"/proc/self/fd/{fd}", "rb") as file:
                self._synced[gen] = file.read()
        self._dirty.discard(gen)

    def _os_rename(self, src: Any, dst: Any, **kwargs: Any) -> None:
        real = self._real["rename"]
        rel_src, rel_dst = self._rel(src), self._rel(dst)
        if kwargs or (rel_src is None and rel_dst is None):
            real(src, dst, **kwargs)
            return
        if rel_src is None or rel_dst is None or _split(rel_src)[0] != _split(rel_dst)[0]:
            raise NotImplementedError(f"the disk model renames within a directory only: {src}")
        self._tick(f"rename {rel_src} to {_split(rel_dst)[1]}")
        real(src, dst)
        gen = self._gen_at.pop(rel_src, None)
        replaced = self._gen_at.pop(rel_dst, None)
        if replaced is not None:
            self._path_of.pop(replaced, None)
        if gen is not None:
            self._gen_at[rel_dst] = gen
            self._path_of[gen] = rel_dst
        directory, name = _split(rel_src)
        self._pending.append(_Rename(directory, name, _split(rel_dst)[1]))

    def _os_unlink(self, path: Any, **kwargs: Any) -> None:
        real = self._real["unlink"]
        rel = None if kwargs else self._rel(path)
        if rel is None:
            real(path, **kwargs)
            return
        self._tick(f"unlink {rel}")
        real(path)
        gen = self._gen_at.pop(rel, None)
        if gen is not None:
            self._path_of.pop(gen, None)
        self._pending.append(_Unlink(*_split(rel)))

    def _os_mkdir(self, path: Any, mode: int = 0o777, **kwargs: Any) -> None:
        real = self._real["mkdir"]
        rel = None if kwargs else self._rel(path)
        if rel is None or os.path.lexists(path):
            real(path, mode, **kwargs)
            return
        self._tick(f"mkdir {rel}")
        real(path, mode)
        self._pending.append(_Link(*_split(rel), None))
        self._durable.setdefault(rel, {})

    def _os_close(self, fd: int) -> None:
        self._fds.pop(fd, None)
        self._real["close"](fd)

    def _unsupported(self, name: str, path: Any, *args: Any, **kwargs: Any) -> Any:
        if self._rel(path) is not None:
            raise NotImplementedError(f"the disk model does not support os.{name}")
        return self._real[name](path, *args, **kwargs)

    def _os_replace(self, src: Any, *args: Any, **kwargs: Any) -> None:
        self._unsupported("replace", src, *args, **kwargs)

    def _os_remove(self, path: Any, *args: Any, **kwargs: Any) -> None:
        self._unsupported("remove", path, *args, **kwargs)

    def _os_rmdir(self, path: Any, *args: Any, **kwargs: Any) -> None:
        self._unsupported("rmdir", path, *args, **kwargs)

    def _os_truncate(self, path: Any, *args: Any, **kwargs: Any) -> None:
        self._unsupported("truncate", path, *args, **kwargs)

    def release_fds(self) -> None:
        """Close every descriptor still open on the tree (abandoned by a cut)."""
        for fd in list(self._fds):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fds.clear()

    # -- crash ---------------------------------------------------------------------------

    def crash(self) -> str:
        """Lose power: rebuild the tree as a disk would come back, power on again.

        Returns what was lost, for the trace.  Descriptors must be closed first.
        """
        rng = self.rng
        notes: list[str] = []
        listings = {directory: dict(listing) for directory, listing in self._durable.items()}
        pending = self._pending
        if pending:
            roll = rng.random()
            kept = 0 if roll < 0.3 else len(pending) if roll < 0.6 else rng.randint(0, len(pending))
            for op in pending[:kept]:
                _apply(listings, op)
            notes.append(f"{kept} of {len(pending)} directory operations kept")
        directories: list[str] = []
        files: dict[str, bytes] = {}

        def walk(directory: str) -> None:
            for name, gen in sorted(listings.get(directory, {}).items()):
                rel = _join(directory, name)
                if gen is None:
                    directories.append(rel)
                    walk(rel)
                else:
                    files[rel] = self._content_after_crash(gen, rel, notes)

        walk("")
        for child in list(self.root.iterdir()):
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()
        for rel in directories:
            (self.root / rel).mkdir()
        for rel, data in files.items():
            (self.root / rel).write_bytes(data)
        self._fds.clear()
        self._budget = None
        self._powered = True
        self._reset()
        return "; ".join(notes) if notes else "nothing unsynced"

    def _content_after_crash(self, gen: int, rel: str, notes: list[str]) -> bytes:
        synced = self._synced.get(gen, b"")
        if gen not in self._dirty:
            return synced
        path = self._path_of.get(gen)
        current = (self.root / path).read_bytes() if path is not None else synced
        rng = self.rng
        if len(current) > len(synced) and current.startswith(synced):
            roll = rng.random()
            if roll < 0.3:
                keep = len(synced)
            elif roll < 0.45:
                keep = len(current)
            else:
                keep = rng.randint(len(synced), len(current))
            data = current[:keep]
            unsynced = len(current) - len(synced)
            note = f"{rel}: {keep - len(synced)} of {unsynced} unsynced bytes kept"
            if keep < len(current) and rng.random() < 0.25:
                zeros = rng.randint(1, len(current) - keep)
                data += bytes(zeros)
                note += f", then {zeros} zero bytes"
            notes.append(note)
            return data
        data = current if rng.random() < 0.5 else synced
        notes.append(f"{rel}: {'unsynced' if data is current else 'synced'} version kept")
        return data


# -- locating records, for bit flips ----------------------------------------------------

_HEADER: Final = struct.Struct("<4sIII")
_MAGIC: Final = b"kvW\x01"
_record_decoder = msgspec.msgpack.Decoder(Record)


def _intact_records(data: bytes) -> list[tuple[int, int]]:
    """``(start, end)`` of each intact record from the start of a WAL segment
    up to the first bad one (the layout of :mod:`raft.wal`: magic, length,
    crc32 of the payload, crc32 of those 12 bytes; then the payload)."""
    records = []
    offset = 0
    while len(data) - offset >= _HEADER.size:
        magic, length, crc, header_crc = _HEADER.unpack_from(data, offset)
        end = offset + _HEADER.size + length
        if (
            magic != _MAGIC
            or zlib.crc32(data[offset : offset + _HEADER.size - 4]) != header_crc
            or length == 0
            or end > len(data)
            or zlib.crc32(data[offset + _HEADER.size : end]) != crc
        ):
            break
        records.append((offset, end))
        offset = end
    return records


# -- the disk ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Claim:
    """What a crash is sure to keep (the state at the last moment it was all synced)."""

    hard_state: HardState
    log: LogView
    snapshot: SnapshotMeta


class WALDisk:
    """A node's disk: the real :class:`DiskStorage` in ``directory`` on a :class:`SimFS`.

    ``segment_bytes`` and ``max_record_bytes`` are small by default so that
    segments roll over and are deleted, and a large batch spans several
    records (a torn write then keeps part of it).  ``save_snapshot`` compacts
    the log up to the snapshot, as :class:`~raft.sim.disk.MemoryDisk` does.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        conf: ConfState,
        rng: random.Random,
        *,
        segment_bytes: int = 4096,
        max_record_bytes: int = 1024,
        keep_snapshots: int = 2,
    ) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.conf = conf
        self.rng = rng
        self.segment_bytes = segment_bytes
        self.max_record_bytes = max_record_bytes
        self.keep_snapshots = keep_snapshots
        self.fs = SimFS(self.directory, rng)
        self._storage: DiskStorage | None = None
        self._claim: _Claim | None = None
        self._touched_from: int | None = None
        self.corruption: str | None = None
        """What :meth:`flip_bit` flipped, if it did."""
        self.corrupt_record: tuple[Path, int] | None = None
        """File and record offset of a flipped WAL bit (for tests)."""
        self.refusal: BaseException | None = None
        """The error recovery refused with."""
        self.crashes = 0
        self.power_cuts = 0
        self.torn_recoveries = 0
        """Starts at which recovery truncated a torn tail."""
        self._open()

    # -- Disk protocol -----------------------------------------------------------------

    @property
    def storage(self) -> DiskStorage:
        """The open storage; reopens it (recovery) if the node crashed.

        Raises :class:`~raft.sim.disk.DiskRefused` if recovery refuses after a
        bit flip, :class:`StorageViolation` if it refuses or loses durable
        state without one, :class:`UndetectedCorruption` if it accepts a flip.
        """
        if self._storage is None:
            self._open()
        assert self._storage is not None
        return self._storage

    def persist(self, ready: Ready) -> None:
        storage = self._before_write(ready)
        with self.fs.active():
            storage.persist(ready)
        self._after_write()

    def save_snapshot(self, snapshot: Snapshot) -> None:
        storage = self._before_write(None)
        with self.fs.active():
            storage.save_snapshot(snapshot.meta, snapshot.data)
        self._after_write()

    def persist_interrupted(self, ready: Ready, ops: int) -> str:
        storage = self._before_write(ready)
        return self._interrupted(ops, lambda: storage.persist(ready))

    def save_snapshot_interrupted(self, snapshot: Snapshot, ops: int) -> str:
        storage = self._before_write(None)
        return self._interrupted(ops, lambda: storage.save_snapshot(snapshot.meta, snapshot.data))

    def recover_interrupted(self, ops: int) -> str:
        if self._storage is not None:
            raise RuntimeError("recover_interrupted on a running node")
        self.fs.arm(ops)
        try:
            self._open()
        except PowerCut:
            how = f"cut at {self.fs.cut_at}"
            self.power_cuts += 1
        else:
            how = "recovery finished first"
        finally:
            self.fs.disarm()
            if self._storage is None:
                self.fs.release_fds()
        return f"{how}; {self.crash()}"

    def crash(self) -> str:
        self.crashes += 1
        storage = self._storage
        if storage is not None:
            if self._claim is None:
                self._claim = self._capture(storage)
            self.fs.power_off()
            with self.fs.active(), contextlib.suppress(PowerCut):
                storage.close()
            self._storage = None
        self.fs.release_fds()
        return self.fs.crash()

    def durable_hard_state(self) -> HardState:
        return self._durable().hard_state

    def durable_log(self) -> LogView:
        return self._durable().log

    def flip_bit(self) -> str:
        """Flip one bit of a file the node reads when it starts (see the module
        docstring); only while the node is down.  Returns what was flipped."""
        if self._storage is not None:
            raise RuntimeError("flip_bit on a running node: crash it first")
        rng = self.rng
        candidates: list[tuple[Path, int, int]] = []
        snapshot = SnapshotMeta()
        segments = sorted((self.directory / "wal").glob("*.wal"))
        for position, segment in enumerate(segments):
            data = segment.read_bytes()
            records = _intact_records(data)
            for number, (start, end) in enumerate(records):
                record = _record_decoder.decode(data[start + _HEADER.size : end])
                if isinstance(record, SegmentStart | SnapshotRecord | InstallSnapshotRecord):
                    meta = record.snapshot if isinstance(record, SegmentStart) else record.meta
                    if meta.index >= snapshot.index:
                        snapshot = meta
                last = position == len(segments) - 1 and number == len(records) - 1
                if not last or number == 0:
                    candidates.append((segment, start, end))
        snapshot_file = self.directory / "snap" / snapshot_name(snapshot)
        if snapshot.index and (not candidates or rng.random() < 0.4):
            path, start, end = snapshot_file, 0, snapshot_file.stat().st_size
            self.corrupt_record = None
        else:
            path, start, end = rng.choice(candidates)
            self.corrupt_record = (path, start)
        content = bytearray(path.read_bytes())
        offset, bit = rng.randrange(start, end), rng.randrange(8)
        content[offset] ^= 1 << bit
        path.write_bytes(bytes(content))
        self.fs.rescan()  # the flip is durable: it is on the medium
        what = f"record at offset {start}, " if self.corrupt_record else ""
        self.corruption = (
            f"bit {bit} of byte {offset} of {path.relative_to(self.directory)} ({what}flipped)"
        )
        return f"flipped {self.corruption}"

    def close(self) -> None:
        """Close the storage (the simulation is over); idempotent."""
        if self._storage is not None:
            with self.fs.active():
                self._storage.close()
            self._storage = None
        self.fs.release_fds()

    # -- internals ---------------------------------------------------------------------

    def _live(self) -> DiskStorage:
        if self._storage is None:
            raise RuntimeError("the node is down: its storage is closed")
        return self._storage

    def _capture(self, storage: DiskStorage) -> _Claim:
        # As written: a commit index not yet written is no claim (see raft.wal).
        hard_state = storage.wal.state.hard_state
        return _Claim(hard_state, storage_log_view(storage), storage.snapshot_meta())

    def _durable(self) -> _Claim:
        if self._claim is None:
            self._claim = self._capture(self._live())
        return self._claim

    def _before_write(self, ready: Ready | None) -> DiskStorage:
        """Pin the durable state before it changes; note what the write may replace."""
        storage = self._live()
        if self._claim is None:
            self._claim = self._capture(storage)
        if ready is not None:
            touched = []
            if ready.entries:
                touched.append(ready.entries[0].index)
            if ready.snapshot is not None:
                touched.append(ready.snapshot.meta.index + 1)
            if touched:
                low = min(touched)
                if self._touched_from is None or low < self._touched_from:
                    self._touched_from = low
        return storage

    def _after_write(self) -> None:
        if self.fs.clean():
            self._claim = None  # the durable state is the storage's state again
            self._touched_from = None

    def _interrupted(self, ops: int, write: Callable[[], None]) -> str:
        self.fs.arm(ops)
        try:
            with self.fs.active():
                write()
        except PowerCut:
            self.power_cuts += 1
            return f"cut at {self.fs.cut_at}"
        finally:
            self.fs.disarm()
        self._after_write()
        return "the write finished first"

    def _open(self) -> None:
        """Recovery: open the storage, verify the snapshot a member restores from,
        and check the result against what was durable."""
        truncations = self.fs.truncations
        try:
            with self.fs.active():
                storage = DiskStorage(
                    self.directory,
                    self.conf,
                    segment_bytes=self.segment_bytes,
                    max_record_bytes=self.max_record_bytes,
                    keep_entries=0,
                    keep_snapshots=self.keep_snapshots,
                )
        except (CorruptWALError, SnapshotError) as exc:
            self._refuse(exc)
        try:
            storage.snapshot()
        except SnapshotError as exc:
            with self.fs.active():
                storage.close()
            self._refuse(exc)
        if self.fs.truncations > truncations:
            self.torn_recoveries += 1
        if self.corruption is not None:
            with self.fs.active():
                storage.close()
            raise UndetectedCorruption(
                f"{self.directory}: recovery accepted a disk on which {self.corruption}"
            )
        if self._claim is not None:
            self._verify(storage, self._claim)
        self._storage = storage
        self._claim = None
        self._touched_from = None

    def _refuse(self, exc: BaseException) -> NoReturn:
        self.fs.release_fds()
        if self.corruption is None:
            raise StorageViolation(
                f"{self.directory}: recovery after a crash refused to start "
                f"(no bit was flipped): {type(exc).__name__}: {exc}"
            ) from exc
        self.refusal = exc
        raise DiskRefused(f"{type(exc).__name__}: {exc}") from exc

    def _verify(self, storage: DiskStorage, claim: _Claim) -> None:
        hs, before = storage.hard_state, claim.hard_state
        problems = []
        if hs.term < before.term or hs.commit < before.commit:
            problems.append(f"hard state went back from {before} to {hs}")
        elif hs.term == before.term and before.vote and hs.vote != before.vote:
            problems.append(f"vote changed from {before} to {hs}")
        if storage.snapshot_meta().index < claim.snapshot.index:
            meta = storage.snapshot_meta()
            problems.append(f"snapshot went back from {claim.snapshot} to {meta}")
        first, last = storage.first_index(), storage.last_index()
        limit = self._touched_from
        for entry in claim.log.entries:
            if entry.index < first or (limit is not None and entry.index >= limit):
                continue
            now = storage.entries(entry.index, entry.index + 1)[0] if entry.index <= last else None
            if now != entry:
                problems.append(f"durable entry {entry.index}@{entry.term} came back as {now}")
                break
        if problems:
            raise StorageViolation(
                f"{self.directory}: recovery lost durable state: {'; '.join(problems)}"
            )


# -- the factory ------------------------------------------------------------------------


def default_directory() -> str | None:
    """Where simulated disks live: ``$KVSTORE_SIM_DISK_DIR``, else ``/dev/shm``
    if it is a writable directory, else the system's temporary directory."""
    configured = os.environ.get("KVSTORE_SIM_DISK_DIR")
    if configured:
        return configured
    shm = "/dev/shm"
    if os.path.isdir(shm) and os.access(shm, os.W_OK):
        return shm
    return None


class WALDiskFactory:
    """A :data:`~raft.sim.cluster.DiskFactory` making one :class:`WALDisk` per node.

    Node ``k`` (the ``k``-th disk made) gets ``<root>/n<k>`` and an rng seeded
    from ``seed`` and ``k``, so a seed replays the same tears and flips.
    ``root`` is a new temporary directory, removed by :meth:`close` (or when
    the factory is garbage collected).
    """

    def __init__(
        self,
        seed: int = 0,
        *,
        directory: str | None = None,
        segment_bytes: int = 4096,
        max_record_bytes: int = 1024,
        keep_snapshots: int = 2,
    ) -> None:
        self.seed = seed
        self.segment_bytes = segment_bytes
        self.max_record_bytes = max_record_bytes
        self.keep_snapshots = keep_snapshots
        base = directory if directory is not None else default_directory()
        self.root = Path(tempfile.mkdtemp(prefix="kvstore-sim-", dir=base))
        self.disks: list[WALDisk] = []
        self._cleanup = weakref.finalize(self, shutil.rmtree, str(self.root), ignore_errors=True)

    def __call__(self, conf: ConfState) -> WALDisk:
        number = len(self.disks) + 1
        disk = WALDisk(
            self.root / f"n{number}",
            conf,
            random.Random(self.seed * 1009 + number),
            segment_bytes=self.segment_bytes,
            max_record_bytes=self.max_record_bytes,
            keep_snapshots=self.keep_snapshots,
        )
        self.disks.append(disk)
        return disk

    def stats(self) -> dict[str, int]:
        """Totals over the disks: crashes, power cuts, torn recoveries, refusals."""
        return {
            "crashes": sum(d.crashes for d in self.disks),
            "power_cuts": sum(d.power_cuts for d in self.disks),
            "torn_recoveries": sum(d.torn_recoveries for d in self.disks),
            "refusals": sum(d.refusal is not None for d in self.disks),
        }

    def close(self) -> None:
        """Close every disk and remove the directory; idempotent."""
        try:
            for disk in self.disks:
                disk.close()
        finally:
            self._cleanup()

    def __enter__(self) -> WALDiskFactory:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
