"""Tests of the segmented write-ahead log (raft/wal.py): format, group commit, recovery."""

from __future__ import annotations

import errno
import logging
import os
import shutil
import struct
import zlib
from pathlib import Path

import pytest

from raft import preallocate
from raft.messages import ConfState, Entry, HardState, SnapshotMeta
from raft.storage import UnavailableError
from raft.wal import (
    WAL,
    CorruptWALError,
    EntriesRecord,
    WALFailedError,
    WALLockedError,
    segment_name,
)

HEADER = struct.Struct("<4sIII")  # magic, payload length, payload crc, header crc
MAGIC = b"kvW\x01"


def frame(payload: bytes, length: int | None = None) -> bytes:
    """A record with valid checksums (and, optionally, a lying length)."""
    head = struct.pack(
        "<4sII", MAGIC, len(payload) if length is None else length, zlib.crc32(payload)
    )
    return head + struct.pack("<I", zlib.crc32(head)) + payload


def ents(lo: int, hi: int, term: int = 1, size: int = 20) -> list[Entry]:
    """Entries ``lo..hi-1`` whose data identifies them."""
    return [
        Entry(term=term, index=i, data=f"{term}/{i}".encode().ljust(size, b"."))
        for i in range(lo, hi)
    ]


def dump(wal: WAL) -> tuple[object, ...]:
    """Everything recovery must bring back exactly."""
    state = wal.state
    first, last = state.first_index(), state.last_index()
    entries = state.entries(first, last + 1) if last >= first else []
    return wal.hard_state, state.snapshot, first, last, state.term(first - 1), entries


def record_offsets(path: Path) -> list[int]:
    """Byte offsets of the records in a (well-formed) segment."""
    data = path.read_bytes()
    offsets, offset = [], 0
    while offset < len(data):
        offsets.append(offset)
        _, length, _, _ = HEADER.unpack_from(data, offset)
        offset += HEADER.size + length
    return offsets


def flip_bit(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x10
    path.write_bytes(bytes(data))


def test_round_trip_reopen_is_identical(tmp_path: Path) -> None:
    conf = ConfState(voters=(1, 2, 3), learners=(4,))
    with WAL(tmp_path, conf=conf) as wal:
        wal.save(ents(1, 6), HardState(term=1, vote=2, commit=0))
        wal.save(ents(6, 9, term=2), HardState(term=2, vote=3, commit=7))
        wal.save([], HardState(term=2, vote=3, commit=8), sync=False)
        before = dump(wal)
    with WAL(tmp_path) as wal:
        assert dump(wal) == before
        assert wal.state.conf == conf
        assert wal.state.hard_state == HardState(term=2, vote=3, commit=8)
        assert [e.term for e in wal.state.entries(1, 9)] == [1] * 5 + [2] * 3


def test_conflicting_suffix_truncation_survives_reopen(tmp_path: Path) -> None:
    with WAL(tmp_path) as wal:
        wal.save(ents(1, 11, term=1), HardState(1, 1, 4))
        wal.save(ents(6, 8, term=2), HardState(2, 2, 4))  # replaces 6..10 with 6..7
        assert wal.state.last_index() == 7
        before = dump(wal)
    with WAL(tmp_path) as wal:
        assert dump(wal) == before
        assert wal.state.last_index() == 7
        assert [e.term for e in wal.state.entries(1, 8)] == [1] * 5 + [2] * 2
        wal.save(ents(8, 10, term=2), None)
    with WAL(tmp_path) as wal:
        assert wal.state.last_index() == 9


def test_segment_rollover_names_and_reopen(tmp_path: Path) -> None:
    with WAL(tmp_path, segment_bytes=2048) as wal:
        for lo in range(1, 301, 10):
            wal.save(ents(lo, lo + 10), HardState(1, 1, lo))
        before = dump(wal)
        paths = wal.segment_paths()
    assert len(paths) > 3
    for seq, path in enumerate(paths, start=1):
        assert path.stat().st_size <= 2048
        first_index = int(path.name.split("-")[1].removesuffix(".wal"), 16)
        assert path.name == segment_name(seq, first_index)
        assert (first_index - 1) % 10 == 0  # a save never spans two segments
    with WAL(tmp_path, segment_bytes=2048) as wal:
        assert dump(wal) == before
        assert wal.segment_paths() == paths


def test_torn_tail_garbage_is_truncated_with_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with WAL(tmp_path) as wal:
        wal.save(ents(1, 4), HardState(1, 1, 2))
        before = dump(wal)
        path = wal.segment_paths()[-1]
    good_size = path.stat().st_size
    with open(path, "ab") as file:
        file.write(b"\xff\x00\x13 garbage that is not a record")
    with caplog.at_level(logging.WARNING, logger="raft.wal"), WAL(tmp_path) as wal:
        assert dump(wal) == before
    assert path.stat().st_size == good_size
    [message] = [r.getMessage() for r in caplog.records if "torn" in r.getMessage()]
    assert str(path) in message and f"offset {good_size}" in message


@pytest.mark.parametrize("cut", [1, 5, 8, 9, 30])
def test_partial_last_record_is_truncated(tmp_path: Path, cut: int) -> None:
    with WAL(tmp_path) as wal:
        wal.save(ents(1, 4), HardState(1, 1, 2))
        before = dump(wal)
        wal.save(ents(4, 6), HardState(1, 1, 5))
        path = wal.segment_paths()[-1]
    last_save_start = record_offsets(path)[-2]  # entries record, then hard state record
    with open(path, "r+b") as file:
        file.truncate(last_save_start + cut)
    with WAL(tmp_path) as wal:
        assert dump(wal) == before
        wal.save(ents(4, 5, term=3), HardState(3, 1, 3))  # appending after recovery works
        after = dump(wal)
    with WAL(tmp_path) as wal:
        assert dump(wal) == after


def test_hard_state_never_survives_without_its_entries(tmp_path: Path) -> None:
    with WAL(tmp_path) as wal:
        wal.save(ents(1, 3), HardState(1, 1, 1))
        before = dump(wal)
        wal.save(ents(3, 50), HardState(2, 1, 49))
        path = wal.segment_paths()[-1]
    entries_at, hard_state_at = record_offsets(path)[-2:]
    original = path.read_bytes()
    # A crash that kept a prefix of the write, cut inside the entries record.
    path.write_bytes(original[: entries_at + 300])
    with WAL(tmp_path) as wal:
        assert dump(wal) == before
    # A power loss that kept the hard state's page but not all of the entries':
    # refusing is the only safe answer (it cannot be told from bit rot).
    damaged = bytearray(original)
    damaged[entries_at + 200 : hard_state_at] = bytes(hard_state_at - entries_at - 200)
    path.write_bytes(bytes(damaged))
    with pytest.raises(CorruptWALError, match="checksum") as info:
        WAL(tmp_path)
    assert info.value.offset == entries_at


def test_zero_filled_tail_is_truncated(tmp_path: Path) -> None:
    with WAL(tmp_path) as wal:
        wal.save(ents(1, 4), HardState(1, 1, 2))
        before = dump(wal)
        path = wal.segment_paths()[-1]
    with open(path, "ab") as file:
        file.write(bytes(4096))
    with WAL(tmp_path) as wal:
        assert dump(wal) == before


def test_bad_checksum_of_the_final_record_is_a_torn_tail(tmp_path: Path) -> None:
    with WAL(tmp_path) as wal:
        wal.save(ents(1, 4), HardState(1, 1, 2))
        before = dump(wal)
        wal.save(ents(4, 6), None)
        path = wal.segment_paths()[-1]
    flip_bit(path, path.stat().st_size - 3)
    with WAL(tmp_path) as wal:
        assert dump(wal) == before


def test_bit_flip_in_a_middle_record_refuses_to_open(tmp_path: Path) -> None:
    with WAL(tmp_path) as wal:
        for lo in range(1, 31, 5):
            wal.save(ents(lo, lo + 5), HardState(1, 1, lo))
        path = wal.segment_paths()[-1]
    middle = record_offsets(path)[5]
    flip_bit(path, middle + HEADER.size + 4)
    with pytest.raises(CorruptWALError) as info:
        WAL(tmp_path)
    assert info.value.path == path and info.value.offset == middle
    assert str(path) in str(info.value) and f"offset {middle}" in str(info.value)
    assert "checksum" in str(info.value)
    with pytest.raises(CorruptWALError):  # not WALLockedError: the failed open unlocked
        WAL(tmp_path)  # and it keeps refusing: nothing was truncated


def test_bit_flip_in_a_length_field_is_not_mistaken_for_a_torn_tail(tmp_path: Path) -> None:
    with WAL(tmp_path) as wal:
        for lo in range(1, 31, 5):
            wal.save(ents(lo, lo + 5), HardState(1, 1, lo))
        path = wal.segment_paths()[-1]
    middle = record_offsets(path)[3]
    flip_bit(path, middle + 6)  # the length now points far past the end of the file
    with pytest.raises(CorruptWALError, match="intact record follows") as info:
        WAL(tmp_path)
    assert info.value.offset == middle


def test_bit_flip_in_a_non_last_segment_refuses_to_open(tmp_path: Path) -> None:
    with WAL(tmp_path, segment_bytes=1024) as wal:
        for lo in range(1, 101, 5):
            wal.save(ents(lo, lo + 5), HardState(1, 1, lo))
        first = wal.segment_paths()[0]
        assert len(wal.segment_paths()) > 2
    final = record_offsets(first)[-1]  # even the final record of a non-last segment
    flip_bit(first, first.stat().st_size - 2)
    with pytest.raises(CorruptWALError) as info:
        WAL(tmp_path, segment_bytes=1024)
    assert (info.value.path, info.value.offset) == (first, final)


def test_truncated_non_last_segment_refuses_to_open(tmp_path: Path) -> None:
    with WAL(tmp_path, segment_bytes=1024) as wal:
        for lo in range(1, 101, 5):
            wal.save(ents(lo, lo + 5), None)
        first = wal.segment_paths()[0]
    size = first.stat().st_size
    with open(first, "r+b") as file:
        file.truncate(size - 4)
    with pytest.raises(CorruptWALError, match="past the end"):
        WAL(tmp_path)


def test_absurd_length_is_rejected_before_allocating(tmp_path: Path) -> None:
    with WAL(tmp_path, segment_bytes=1024) as wal:
        for lo in range(1, 101, 5):
            wal.save(ents(lo, lo + 5), None)
        first = wal.segment_paths()[0]
    offset = record_offsets(first)[1]
    data = bytearray(first.read_bytes())
    data[offset : offset + HEADER.size] = frame(b"", length=0xFFFF_FFF0)
    first.write_bytes(bytes(data))
    with pytest.raises(CorruptWALError, match="outside") as info:
        WAL(tmp_path)
    assert info.value.offset == offset


def test_valid_checksum_but_undecodable_record_refuses_even_at_the_tail(tmp_path: Path) -> None:
    with WAL(tmp_path) as wal:
        wal.save(ents(1, 3), None)
        path = wal.segment_paths()[-1]
    size = path.stat().st_size
    with open(path, "ab") as file:
        file.write(frame(b"\x93\x63\x01\x02"))  # a msgpack array with an unknown tag
    with pytest.raises(CorruptWALError, match="undecodable") as info:
        WAL(tmp_path)
    assert info.value.offset == size


def test_missing_segment_refuses_to_open(tmp_path: Path) -> None:
    with WAL(tmp_path, segment_bytes=1024) as wal:
        for lo in range(1, 101, 5):
            wal.save(ents(lo, lo + 5), None)
        paths = wal.segment_paths()
    paths[1].unlink()
    with pytest.raises(CorruptWALError, match="sequence gap"):
        WAL(tmp_path)


def test_one_fsync_per_save_however_many_entries(tmp_path: Path) -> None:
    with WAL(tmp_path) as wal:
        fsyncs, dir_fsyncs = wal.fsync_count, wal.dir_fsync_count
        for lo in range(1, 5001, 1000):
            wal.save(ents(lo, lo + 1000, size=100), HardState(1, 1, lo))
        assert wal.fsync_count - fsyncs == 5
        assert wal.dir_fsync_count == dir_fsyncs
        wal.save([], HardState(1, 1, 5000), sync=False)
        wal.save(ents(5001, 5003), None, sync=False)
        assert wal.fsync_count - fsyncs == 5
        wal.save([], HardState(1, 1, 5000), sync=True)  # nothing new, but syncs the above
        assert wal.fsync_count - fsyncs == 6
        wal.sync()  # nothing unsynced: no fsync
        wal.save([], HardState(1, 1, 5000), sync=True)
        assert wal.fsync_count - fsyncs == 6


def test_large_batches_are_split_into_records(tmp_path: Path) -> None:
    with WAL(tmp_path) as wal:
        wal.save(ents(1, 3001, size=1000), None)
        path = wal.segment_paths()[-1]
        before = dump(wal)
        assert wal.fsync_count == 2  # segment creation + this one save
    assert len(record_offsets(path)) >= 4  # start record + several entries records
    with WAL(tmp_path) as wal:
        assert dump(wal) == before


def test_compaction_removes_old_segments(tmp_path: Path) -> None:
    with WAL(tmp_path, segment_bytes=1024) as wal:
        for lo in range(1, 201, 5):
            wal.save(ents(lo, lo + 5), HardState(1, 1, lo + 4))
        wal.mark_snapshot(SnapshotMeta(index=150, term=1, conf=ConfState(voters=(1,))))
        segments_before = wal.segment_paths()
        wal.compact(120)
        remaining = wal.segment_paths()
        assert len(remaining) < len(segments_before)
        assert remaining == segments_before[-len(remaining) :]
        assert all(not path.exists() for path in segments_before[: -len(remaining)])
        first_kept = int(remaining[0].name.split("-")[1].removesuffix(".wal"), 16)
        assert first_kept - 1 <= 120
        before = dump(wal)
        assert wal.state.first_index() == 121 and wal.state.term(120) == 1
    with WAL(tmp_path, segment_bytes=1024) as wal:
        assert dump(wal) == before
        assert wal.state.snapshot.index == 150
        with pytest.raises(UnavailableError):
            wal.compact(10_000)


@pytest.mark.parametrize("delta", [-2, -1, 0, 1])
def test_a_segment_is_removed_exactly_when_its_entries_are_compacted(
    tmp_path: Path, delta: int
) -> None:
    with WAL(tmp_path, segment_bytes=700) as wal:
        for lo in range(1, 61, 10):
            wal.save(ents(lo, lo + 10), None)
        paths = wal.segment_paths()
        boundary = int(paths[2].name.split("-")[1].removesuffix(".wal"), 16) - 1
        wal.compact(boundary + delta)  # the 3rd segment holds entries after `boundary`
        assert wal.segment_paths() == paths[2:] if delta >= 0 else paths[1:]
        before = dump(wal)
    with WAL(tmp_path) as wal:
        assert dump(wal) == before


def test_compaction_at_a_rewritten_segment_boundary(tmp_path: Path) -> None:
    """The first replayed segment's base entry was rewritten after the segment began."""
    with WAL(tmp_path, segment_bytes=600) as wal:
        wal.save(ents(1, 21), None)
        wal.save(ents(21, 23), None)  # rolls: the new segment starts after index 20
        boundary = int(wal.segment_paths()[-1].name.split("-")[1].removesuffix(".wal"), 16) - 1
        wal.save(ents(boundary, boundary + 3, term=2), None)  # rewrites the base entry
        wal.compact(boundary)
        before = dump(wal)
        assert wal.state.term(boundary) == 2
    with WAL(tmp_path) as wal:
        assert dump(wal) == before


def test_truncation_reaching_behind_the_first_kept_segment_survives_reopen(
    tmp_path: Path,
) -> None:
    """Found by the model test: a segment began after index 9, then the log was cut
    back to 9 and compacted to 9, so replay starts from that segment's base."""
    with WAL(tmp_path, segment_bytes=200) as wal:
        wal.save(ents(1, 10, size=30), None)
        wal.save(ents(7, 11, size=0), None)  # rolls; the new segment's base is index 9
        assert wal.segment_paths()[-1].name == segment_name(2, 10)
        wal.save(ents(9, 10, term=2, size=0), None)  # drops 10, rewrites the base entry
        wal.compact(9)
        assert len(wal.segment_paths()) == 1
        before = dump(wal)
        assert (wal.state.last_index(), wal.state.term(9)) == (9, 2)
    with WAL(tmp_path) as wal:
        assert dump(wal) == before


def _segments_with_a_truncation(wal: WAL) -> None:
    """Segments whose first indexes are not monotonic: 1, 11, 21, 31, 8, ..."""
    for lo in range(1, 31, 10):
        wal.save(ents(lo, lo + 10), None)
    wal.save(ents(5, 8, term=2), None)  # rolls at 30, then cuts the log back to 7
    wal.save(ents(8, 16, term=2), None)  # rolls: this segment's base is index 7
    for lo in range(16, 41, 5):
        wal.save(ents(lo, lo + 5, term=2), None)


def test_segments_are_removed_only_as_a_replayable_prefix(tmp_path: Path) -> None:
    with WAL(tmp_path, segment_bytes=300) as wal:
        _segments_with_a_truncation(wal)
        paths = wal.segment_paths()
        firsts = [int(p.name.split("-")[1].removesuffix(".wal"), 16) for p in paths]
        assert firsts[:5] == [1, 11, 21, 31, 8]
        wal.compact(9)  # segment 5 (base 7) could start replay, segment 2 (base 10) not
        assert wal.segment_paths() == paths
        wal.compact(12)
        assert wal.segment_paths() == paths[1:]
        before = dump(wal)
    with WAL(tmp_path) as wal:
        assert dump(wal) == before


@pytest.mark.parametrize("deleted_before_crash", [0, 1, 2, 3])
def test_a_crash_in_the_middle_of_segment_removal_still_replays(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, deleted_before_crash: int
) -> None:
    with WAL(tmp_path / "twin", segment_bytes=300) as twin:
        _segments_with_a_truncation(twin)
        twin.compact(35)
        kept = [path.name for path in twin.segment_paths()]
    wal = WAL(tmp_path / "crashed", segment_bytes=300)
    _segments_with_a_truncation(wal)
    assert len(wal.segment_paths()) > len(kept) + 3
    unlink = Path.unlink
    calls = []

    def crash_after_some(path: Path, missing_ok: bool = False) -> None:
        calls.append(path)
        if len(calls) > deleted_before_crash:
            raise OSError(errno.EIO, "simulated crash")
        unlink(path, missing_ok)

    monkeypatch.setattr(Path, "unlink", crash_after_some)
    with pytest.raises(OSError, match="simulated crash"):
        wal.compact(35)
    monkeypatch.undo()
    expected = dump(wal)
    wal.close()
    with WAL(tmp_path / "crashed") as reopened:  # replays, then finishes the removal
        assert dump(reopened) == expected
        assert [path.name for path in reopened.segment_paths()] == kept


def test_install_snapshot_replays_like_the_live_log(tmp_path: Path) -> None:
    with WAL(tmp_path) as wal:
        wal.save(ents(1, 11), HardState(1, 1, 5))
        wal.install_snapshot(SnapshotMeta(index=7, term=1))  # agrees: keeps 8..10
        assert (wal.state.first_index(), wal.state.last_index()) == (8, 10)
        wal.install_snapshot(SnapshotMeta(index=9, term=5))  # disagrees: log discarded
        assert (wal.state.first_index(), wal.state.last_index()) == (10, 9)
        before = dump(wal)
    with WAL(tmp_path) as wal:
        assert dump(wal) == before
        assert wal.state.snapshot == SnapshotMeta(index=9, term=5)


def test_second_open_is_refused_by_the_lock(tmp_path: Path) -> None:
    with WAL(tmp_path), pytest.raises(WALLockedError):
        WAL(tmp_path)
    with WAL(tmp_path):  # released on close
        pass


def test_leftover_temporary_segment_is_removed(tmp_path: Path) -> None:
    with WAL(tmp_path) as wal:
        wal.save(ents(1, 4), None)
        before = dump(wal)
    leftover = tmp_path / (segment_name(2, 4) + ".tmp")
    leftover.write_bytes(b"half-created segment")
    with WAL(tmp_path) as wal:
        assert dump(wal) == before
        assert len(wal.segment_paths()) == 1
    assert not leftover.exists()


def test_invalid_appends_write_nothing(tmp_path: Path) -> None:
    with WAL(tmp_path, max_record_bytes=4096) as wal:
        wal.save(ents(1, 4), None)
        size = wal.segment_paths()[-1].stat().st_size
        with pytest.raises(ValueError, match="gap"):
            wal.save(ents(6, 8), HardState(1, 1, 1))
        with pytest.raises(ValueError, match="contiguous"):
            wal.save([*ents(4, 5), *ents(6, 7)], None)
        with pytest.raises(ValueError, match="max_record_bytes"):
            wal.save([Entry(1, 4, bytes(8000))], None)
        assert wal.segment_paths()[-1].stat().st_size == size
        assert wal.state.last_index() == 3 and wal.state.hard_state == HardState()
        wal.save(ents(4, 5), None)  # still usable


def test_compacted_entries_are_ignored(tmp_path: Path) -> None:
    with WAL(tmp_path) as wal:
        wal.save(ents(1, 11), None)
        wal.compact(5)
        wal.save(ents(3, 5, term=9), None)  # entirely compacted: nothing happens
        wal.save(ents(4, 8, term=2), None)  # 4..5 ignored, 6..7 replace 6..10
        assert [e.term for e in wal.state.entries(6, 8)] == [2, 2]
        assert wal.state.last_index() == 7
        before = dump(wal)
    with WAL(tmp_path) as wal:
        assert dump(wal) == before


def test_a_failed_write_poisons_the_wal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    wal = WAL(tmp_path)
    wal.save(ents(1, 3), None)

    def no_space(fd: int, data: object) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", no_space)
    with pytest.raises(OSError):
        wal.save(ents(3, 4), None)
    monkeypatch.undo()
    with pytest.raises(WALFailedError):
        wal.save(ents(3, 4), None)
    assert wal.state.last_index() == 2  # state only changes after a successful write
    wal.close()
    with WAL(tmp_path) as reopened:
        assert reopened.state.last_index() == 2


def test_entries_record_is_a_tagged_msgpack_array() -> None:
    import msgspec

    encoded = msgspec.msgpack.encode(EntriesRecord(ents(1, 2)))
    assert encoded[0] == 0x92 and encoded[1] == 2  # [tag 2, [entries]]


def _write_some(directory: Path) -> tuple[bytes, os.stat_result, tuple[object, ...]]:
    with WAL(directory) as wal:
        for index in range(1, 40, 3):
            wal.save(ents(index, index + 3), HardState(term=1, vote=1, commit=index - 1))
        (segment,) = wal.segment_paths()
        return segment.read_bytes(), os.stat(segment), dump(wal)


def test_blocks_reserved_ahead_change_neither_size_nor_contents(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reserving disk blocks past the end of a segment (raft.preallocate) is
    invisible: the file holds the same bytes as without, and replays."""
    reserved_bytes, reserved_stat, state = _write_some(tmp_path / "reserved")
    with monkeypatch.context() as patch:
        patch.setattr(preallocate, "reserve", lambda fd, offset, length: False)
        plain_bytes, plain_stat, _ = _write_some(tmp_path / "plain")
    assert reserved_bytes == plain_bytes
    assert reserved_stat.st_size == plain_stat.st_size == len(plain_bytes)
    probe = os.open(tmp_path / "probe", os.O_RDWR | os.O_CREAT)
    try:
        supported = preallocate.reserve(probe, 0, 4096)
    finally:
        os.close(probe)
    if supported:
        allocated = reserved_stat.st_blocks * 512
        assert allocated >= len(reserved_bytes) + preallocate.RESERVE_BYTES // 2
    with WAL(tmp_path / "reserved") as reopened:
        assert dump(reopened) == state


def test_a_log_that_cannot_reserve_blocks_works_as_before(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []

    def refuse(fd: int, offset: int, length: int) -> bool:
        calls.append(length)
        return False

    monkeypatch.setattr(preallocate, "reserve", refuse)
    with WAL(tmp_path / "wal") as wal:
        for index in range(1, 20):
            wal.save(ents(index, index + 1), HardState(term=1, vote=1, commit=index - 1))
        before = dump(wal)
    assert len(calls) == 1  # tried once, then not again
    with WAL(tmp_path / "wal") as reopened:
        assert dump(reopened) == before


def recovered_after_a_crash(directory: Path, scratch: Path) -> tuple[object, ...]:
    """What a crash now would recover: the files as they are (the WAL stays open)."""
    shutil.rmtree(scratch, ignore_errors=True)
    shutil.copytree(directory, scratch)
    with WAL(scratch) as copy:
        return dump(copy)


def test_a_hard_state_advancing_only_the_commit_goes_out_with_the_next_write(
    tmp_path: Path,
) -> None:
    """Saved alone and unsynced, it is held in memory: a crash recovers the
    commit index written before (a hint Raft learns again); the next write,
    sync() or close() writes it.  A term or vote change is written at once."""
    directory, scratch = tmp_path / "wal", tmp_path / "scratch"
    with WAL(directory) as wal:
        wal.save(ents(1, 4), HardState(1, 1, 1))
        before = dump(wal)
        wal.save([], HardState(1, 1, 3), sync=False)
        assert wal.hard_state == HardState(1, 1, 3)
        assert recovered_after_a_crash(directory, scratch) == before

        wal.save(ents(4, 6), None)
        assert wal.state.hard_state == HardState(1, 1, 3)
        assert recovered_after_a_crash(directory, scratch) == dump(wal)

        wal.save([], HardState(1, 1, 5), sync=False)
        wal.sync()
        assert recovered_after_a_crash(directory, scratch) == dump(wal)
        fsyncs = wal.fsync_count
        wal.sync()
        assert wal.fsync_count == fsyncs  # nothing left to write

        wal.save([], HardState(2, 0, 5), sync=False)  # a new term: written at once
        assert recovered_after_a_crash(directory, scratch) == dump(wal)
        wal.save([], HardState(2, 0, 6), sync=False)
        at_close = dump(wal)
    with WAL(directory) as wal:
        assert dump(wal) == at_close
