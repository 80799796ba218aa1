"""Snapshot files: written atomically, verified on load, the newest few kept.

Durability contract
-------------------
:meth:`SnapshotStore.save` writes ``<name>.tmp``, fsyncs it, renames it to
``<name>`` and fsyncs the directory before returning: after a crash a snapshot
file is either complete and durable or absent (a leftover ``.tmp`` is removed
when the store is opened).  The caller records the snapshot elsewhere (the WAL)
only after ``save`` returned, so nothing ever points at a missing snapshot.

File format
-----------
Files are named ``<index>-<term>.snap`` (16 hex digits each), so names sort by
index.  A file is::

    b"KVSNAP\\0\\0"  u16 format version  u32 header length  u32 crc32(header)   (little endian)
    header: msgpack SnapshotHeader(meta, data length, crc32(data))
    data

:func:`read_snapshot_file` checks the magic, version, both checksums and the
length, and raises :class:`CorruptSnapshotError` naming the file otherwise.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import struct
import zlib
from pathlib import Path
from typing import Final

import msgspec

from raft.messages import SnapshotMeta
from raft.wal import fsync_directory

__all__ = [
    "FORMAT_VERSION",
    "CorruptSnapshotError",
    "SnapshotError",
    "SnapshotHeader",
    "SnapshotNotFoundError",
    "SnapshotStore",
    "read_snapshot_file",
    "snapshot_name",
    "write_snapshot_file",
]

logger = logging.getLogger(__name__)

FORMAT_VERSION: Final = 1
_MAGIC: Final = b"KVSNAP\0\0"
_PREFIX: Final = struct.Struct("<8sHII")
_MAX_HEADER_BYTES: Final = 1024 * 1024
_NAME_RE: Final = re.compile(r"^([0-9a-f]{16})-([0-9a-f]{16})\.snap$")


class SnapshotError(Exception):
    """Base class of the snapshot errors."""


class CorruptSnapshotError(SnapshotError):
    """A snapshot file failed verification."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"corrupt snapshot file {path}: {reason}")
        self.path = path
        self.reason = reason


class SnapshotNotFoundError(SnapshotError):
    """No snapshot file exists for the requested snapshot."""


class SnapshotHeader(msgspec.Struct, array_like=True, frozen=True):
    meta: SnapshotMeta
    data_length: int
    data_crc: int


_encoder = msgspec.msgpack.Encoder()
_header_decoder = msgspec.msgpack.Decoder(SnapshotHeader)


def snapshot_name(meta: SnapshotMeta) -> str:
    return f"{meta.index:016x}-{meta.term:016x}.snap"


def write_snapshot_file(directory: Path, meta: SnapshotMeta, data: bytes) -> Path:
    """Write the snapshot atomically into ``directory``; durable when this returns."""
    path = directory / snapshot_name(meta)
    temporary = path.with_name(path.name + ".tmp")
    header = _encoder.encode(SnapshotHeader(meta, len(data), zlib.crc32(data)))
    prefix = _PREFIX.pack(_MAGIC, FORMAT_VERSION, len(header), zlib.crc32(header))
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        for chunk in (prefix + header, data):
            view = memoryview(chunk)
            while view:
                view = view[os.write(fd, view) :]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    os.close(fd)
    os.rename(temporary, path)
    fsync_directory(directory)
    return path


def read_snapshot_file(path: Path) -> tuple[SnapshotMeta, bytes]:
    """Read and verify a snapshot file; raises :class:`CorruptSnapshotError`."""
    with open(path, "rb") as file:
        prefix = file.read(_PREFIX.size)
        if len(prefix) < _PREFIX.size:
            raise CorruptSnapshotError(path, "file shorter than its fixed header")
        magic, version, header_length, header_crc = _PREFIX.unpack(prefix)
        if magic != _MAGIC:
            raise CorruptSnapshotError(path, "not a snapshot file (bad magic)")
        if version != FORMAT_VERSION:
            raise CorruptSnapshotError(path, f"unsupported format version {version}")
        if header_length > _MAX_HEADER_BYTES:
            raise CorruptSnapshotError(path, f"header length {header_length} is implausible")
        header_bytes = file.read(header_length)
        if len(header_bytes) != header_length or zlib.crc32(header_bytes) != header_crc:
            raise CorruptSnapshotError(path, "header checksum mismatch")
        try:
            header = _header_decoder.decode(header_bytes)
        except msgspec.DecodeError as exc:
            raise CorruptSnapshotError(path, f"undecodable header: {exc}") from None
        size = os.fstat(file.fileno()).st_size
        if size != _PREFIX.size + header_length + header.data_length:
            raise CorruptSnapshotError(
                path, f"file is {size} bytes, header promises {header.data_length} of data"
            )
        data = file.read(header.data_length)
    if len(data) != header.data_length or zlib.crc32(data) != header.data_crc:
        raise CorruptSnapshotError(path, "data checksum mismatch")
    return header.meta, data


class SnapshotStore:
    """The snapshot files in one directory.

    Opening removes leftover temporary files.  :meth:`prune` keeps the current
    snapshot plus the ``retain - 1`` newest older ones.
    """

    def __init__(self, directory: str | os.PathLike[str], *, retain: int = 2) -> None:
        if retain < 1:
            raise ValueError("retain must be at least 1")
        self.directory = Path(directory)
        self.retain = retain
        if not self.directory.is_dir():
            self.directory.mkdir(parents=True, exist_ok=True)
            fsync_directory(self.directory.parent)
        leftovers = sorted(self.directory.glob("*.snap.tmp"))
        for path in leftovers:
            logger.warning("snapshots: removing unfinished snapshot file %s", path)
            path.unlink()
        if leftovers:
            fsync_directory(self.directory)

    def save(self, meta: SnapshotMeta, data: bytes) -> Path:
        """Write the snapshot atomically; durable when this returns."""
        return write_snapshot_file(self.directory, meta, data)

    def path(self, meta: SnapshotMeta) -> Path:
        return self.directory / snapshot_name(meta)

    def exists(self, meta: SnapshotMeta) -> bool:
        return self.path(meta).is_file()

    def load(self, meta: SnapshotMeta) -> bytes:
        """The verified data of snapshot ``meta``.

        Raises :class:`SnapshotNotFoundError` if there is no file for it and
        :class:`CorruptSnapshotError` if the file fails verification or holds a
        different snapshot.
        """
        path = self.path(meta)
        try:
            stored, data = read_snapshot_file(path)
        except FileNotFoundError:
            raise SnapshotNotFoundError(f"snapshot file {path} does not exist") from None
        if stored != meta:
            raise CorruptSnapshotError(path, f"holds {stored}, expected {meta}")
        return data

    def metas(self) -> list[tuple[int, int, Path]]:
        """``(index, term, path)`` of every snapshot file, oldest first (by name only)."""
        found = []
        for path in self.directory.iterdir():
            match = _NAME_RE.match(path.name)
            if match:
                found.append((int(match[1], 16), int(match[2], 16), path))
        return sorted(found)

    def prune(self, current: SnapshotMeta) -> list[Path]:
        """Delete all files but ``current``'s and the ``retain - 1`` newest older ones.

        Files newer than ``current`` were never recorded as saved (a crash between
        writing one and recording it) and are deleted too.  Returns what was deleted.
        """
        keep = {self.path(current)}
        older = [path for index, _, path in self.metas() if index < current.index]
        keep.update(older[len(older) - (self.retain - 1) :] if self.retain > 1 else [])
        removed = [path for _, _, path in self.metas() if path not in keep]
        for path in removed:
            path.unlink()
        if removed:
            fsync_directory(self.directory)
        return removed
