"""Damage a stopped member's WAL or snapshot files, and undo it (pure file work).

The file layouts are those of :mod:`raft.wal` (segments ``<seq>-<index>.wal``
of records: a 16-byte header ``magic b"kvW\\x01", u32 length, u32 crc, u32
header crc`` and the payload) and :mod:`raft.snapshot_file`
(``<index>-<term>.snap``).  Three kinds of damage:

* :func:`flip_wal_bit` flips one bit of a WAL record that is followed by an
  intact record, so it can never pass for a torn write: the member must
  refuse to start, naming the file;
* :func:`flip_snapshot_bit` flips one bit of the snapshot file the WAL refers
  to (:func:`referenced_snapshot`; a newer file may exist unreferenced when the
  member was killed between writing it and recording it, and is never read):
  the member must refuse to start, naming the file;
* :func:`tear_wal_tail` cuts a few bytes off the last record of the last
  segment: the member must drop the partial record and start (the record may
  have been acknowledged already, see :mod:`jepsen_like.nemesis.corrupt`);
* :func:`append_partial_record` appends the first bytes of a further record,
  as a crash in the middle of a write would leave them: the member must drop
  them and start.

Each returns a :class:`Corruption` that remembers the original bytes, so
:meth:`Corruption.restore` puts the file back exactly; or ``None`` when there
is nothing to damage (no snapshot yet, no record to tear).
"""

from __future__ import annotations

import os
import random
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import msgspec

from raft.snapshot_file import snapshot_name
from raft.wal import InstallSnapshotRecord, Record, SegmentStart, SnapshotRecord

__all__ = [
    "Corruption",
    "append_partial_record",
    "flip_snapshot_bit",
    "flip_wal_bit",
    "referenced_snapshot",
    "tear_wal_tail",
    "wal_records",
]

_WAL_MAGIC = b"kvW\x01"
_WAL_HEADER = struct.Struct("<4sIII")


@dataclass(frozen=True)
class Corruption:
    """What was done to which file, and the original content to restore."""

    mode: str
    path: Path
    offset: int
    description: str
    original: bytes
    """The file's original bytes at ``offset`` (to its end, for a cut file)."""
    size: int
    """The file's original size."""

    def restore(self) -> None:
        """Put the file back as it was (rewrite the bytes at ``offset``, restore
        the size, fsync)."""
        with self.path.open("r+b") as f:
            f.seek(self.offset)
            f.write(self.original)
            f.truncate(self.size)
            f.flush()
            os.fsync(f.fileno())


def wal_records(data: bytes) -> list[tuple[int, int]]:
    """(offset, size) of each intact record from the start of a segment's bytes,
    up to the first record that is not intact."""
    records = []
    offset = 0
    while len(data) - offset >= _WAL_HEADER.size:
        magic, length, crc, header_crc = _WAL_HEADER.unpack_from(data, offset)
        if magic != _WAL_MAGIC or zlib.crc32(data[offset : offset + 12]) != header_crc:
            break
        end = offset + _WAL_HEADER.size + length
        if length == 0 or end > len(data) or zlib.crc32(data[offset + 16 : end]) != crc:
            break
        records.append((offset, end - offset))
        offset = end
    return records


def _segments(raft_dir: Path) -> list[Path]:
    return sorted((raft_dir / "wal").glob("*.wal"))


def _flip(path: Path, offset: int, bit: int, mode: str, what: str) -> Corruption:
    size = path.stat().st_size
    with path.open("r+b") as f:
        f.seek(offset)
        original = f.read(1)
        f.seek(offset)
        f.write(bytes([original[0] ^ (1 << bit)]))
        f.flush()
        os.fsync(f.fileno())
    description = f"flipped bit {bit} at byte {offset} ({what})"
    return Corruption(mode, path, offset, description, original, size)


def flip_wal_bit(raft_dir: Path, rng: random.Random) -> Corruption | None:
    """Flip one bit of a WAL record that has an intact record after it."""
    candidates: list[tuple[Path, int, int, int]] = []  # path, offset, size, record number
    segments = _segments(raft_dir)
    for i, path in enumerate(segments):
        records = wal_records(path.read_bytes())
        if i == len(segments) - 1:
            records = records[:-1]  # the last record of the last segment could be torn
        candidates += [(path, off, size, n) for n, (off, size) in enumerate(records)]
    if not candidates:
        return None
    path, record_offset, size, number = rng.choice(candidates)
    offset = record_offset + rng.randrange(size)
    what = f"record {number} of {path.name}, record at byte {record_offset}"
    return _flip(path, offset, rng.randrange(8), "flip-wal", what)


def referenced_snapshot(raft_dir: Path) -> Path | None:
    """The snapshot file the WAL refers to (read-only replay of the intact
    records: the snapshot with the highest index any record names), or ``None``."""
    decoder = msgspec.msgpack.Decoder(Record)
    best = None
    for path in _segments(raft_dir):
        data = path.read_bytes()
        for offset, size in wal_records(data):
            try:
                record = decoder.decode(data[offset + _WAL_HEADER.size : offset + size])
            except msgspec.DecodeError:
                break
            if isinstance(record, SegmentStart):
                meta = record.snapshot
            elif isinstance(record, SnapshotRecord | InstallSnapshotRecord):
                meta = record.meta
            else:
                continue
            if meta.index > 0 and (best is None or meta.index >= best.index):
                best = meta
    return None if best is None else raft_dir / "snap" / snapshot_name(best)


def flip_snapshot_bit(raft_dir: Path, rng: random.Random) -> Corruption | None:
    """Flip one bit of the snapshot file the WAL refers to."""
    path = referenced_snapshot(raft_dir)
    if path is None or not path.exists():
        return None
    size = path.stat().st_size
    if size == 0:
        return None
    return _flip(path, rng.randrange(size), rng.randrange(8), "flip-snap", path.name)


def tear_wal_tail(raft_dir: Path, rng: random.Random) -> Corruption | None:
    """Cut 1..size-1 bytes off the last record of the last segment (never its start record)."""
    segments = _segments(raft_dir)
    if not segments:
        return None
    path = segments[-1]
    data = path.read_bytes()
    records = wal_records(data)
    if len(records) < 2:
        return None
    offset, size = records[-1]
    cut = rng.randrange(1, size)
    keep = offset + size - cut
    with path.open("r+b") as f:
        f.truncate(keep)
        f.flush()
        os.fsync(f.fileno())
    description = f"cut {cut} of the {size} bytes of the last record (at byte {offset})"
    return Corruption("torn-tail", path, keep, description, data[keep:], len(data))


def append_partial_record(raft_dir: Path, rng: random.Random) -> Corruption | None:
    """Append 1..size-1 bytes of a copy of the last record to the last segment:
    a write cut short by a crash, never complete, so never acknowledged."""
    segments = _segments(raft_dir)
    if not segments:
        return None
    path = segments[-1]
    data = path.read_bytes()
    records = wal_records(data)
    if not records:
        return None
    offset, size = records[-1]
    keep = rng.randrange(1, size)
    end = offset + size
    with path.open("r+b") as f:
        f.seek(end)
        f.write(data[offset : offset + keep])
        f.truncate(end + keep)
        f.flush()
        os.fsync(f.fileno())
    description = f"appended {keep} of {size} bytes of a record at byte {end} (a torn write)"
    return Corruption("torn-write", path, end, description, data[end:], len(data))
