"""Benchmark of the durable storage layer (raft/wal.py, raft/disk_storage.py).

Measures, on the file system of ``--dir`` (default: a fresh temporary directory):

* WAL append throughput through ``DiskStorage.persist`` for 100-byte entries in
  batches of 1 and of 256, one fsync per batch (the fsync count is reported),
  and once more without fsync to show the CPU cost alone;
* recovery time: reopening a directory holding a 1,000,000-entry log;
* writing (atomic, fsynced) and loading (checksum verified) a 100 MB snapshot.

Run: ``python3 bench/wal_bench.py`` (sizes are flags; ``--help``).
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from raft.disk_storage import DiskStorage
from raft.messages import ConfState, Entry, HardState, SnapshotMeta
from raft.ready import Ready
from raft.snapshot_file import SnapshotStore

ENTRY_BYTES = 100
MB = 1_000_000


def filesystem_of(path: Path) -> str:
    """``type device`` of the mount holding ``path`` (from /proc/mounts), if known."""
    best, found = "", "unknown"
    try:
        with open("/proc/mounts") as mounts:
            for line in mounts:
                device, mount_point, fs_type = line.split()[:3]
                if str(path).startswith(mount_point) and len(mount_point) > len(best):
                    best, found = mount_point, f"{fs_type} on {device} ({mount_point})"
    except OSError:
        pass
    return found


@contextmanager
def fresh_directory(root: Path, name: str) -> Iterator[Path]:
    path = root / name
    shutil.rmtree(path, ignore_errors=True)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def append(
    storage: DiskStorage, first: int, count: int, batch: int, data: bytes, sync: bool = True
) -> int:
    """Persist ``count`` entries from ``first`` in Readies of ``batch``; the next index."""
    index = first
    end = first + count
    while index < end:
        top = min(index + batch, end)
        entries = [Entry(term=1, index=i, data=data) for i in range(index, top)]
        storage.persist(
            Ready(
                soft_state=None,
                hard_state=HardState(term=1, vote=1, commit=top - 1),
                entries=entries,
                must_sync=sync,
            )
        )
        index = top
    return index


def bench_append(root: Path, batch: int, count: int, sync: bool = True) -> list[str]:
    data = random.Random(batch).randbytes(ENTRY_BYTES)
    with fresh_directory(root, f"append-{batch}") as directory:
        storage = DiskStorage(directory, ConfState(voters=(1,)))
        fsyncs = storage.wal.fsync_count
        started = time.perf_counter()
        append(storage, 1, count, batch, data, sync)
        elapsed = time.perf_counter() - started
        fsyncs = storage.wal.fsync_count - fsyncs
        storage.close()
    batches = -(-count // batch)
    return [
        f"append, batch {batch}" + ("" if sync else ", no fsync (CPU cost)"),
        f"{count:,} x {ENTRY_BYTES} B",
        f"{elapsed:.3f} s",
        f"{count / elapsed:,.0f} entries/s, {count * ENTRY_BYTES / elapsed / MB:.2f} MB/s",
        f"{fsyncs:,} ({fsyncs / batches:.2f}/batch)",
    ]


def bench_recovery(root: Path, count: int) -> list[str]:
    data = random.Random(0).randbytes(ENTRY_BYTES)
    with fresh_directory(root, "recovery") as directory:
        with DiskStorage(directory, ConfState(voters=(1,))) as storage:
            append(storage, 1, count, 1000, data)
        wal_bytes = sum(path.stat().st_size for path in (directory / "wal").glob("*.wal"))
        started = time.perf_counter()
        with DiskStorage(directory) as storage:
            elapsed = time.perf_counter() - started
            assert storage.last_index() == count
            segments = len(storage.wal.segment_paths())
    return [
        "recovery (reopen)",
        f"{count:,} entries",
        f"{elapsed:.3f} s",
        f"{count / elapsed:,.0f} entries/s, {wal_bytes / elapsed / MB:.0f} MB/s "
        f"({wal_bytes / MB:.0f} MB in {segments} segments)",
        "-",
    ]


def bench_snapshot(root: Path, megabytes: int) -> list[list[str]]:
    data = random.Random(1).randbytes(megabytes * MB)
    meta = SnapshotMeta(index=1_000_000, term=7, conf=ConfState(voters=(1, 2, 3)))
    with fresh_directory(root, "snapshot") as directory:
        store = SnapshotStore(directory)
        started = time.perf_counter()
        store.save(meta, data)
        write = time.perf_counter() - started
        started = time.perf_counter()
        loaded = store.load(meta)
        load = time.perf_counter() - started
        assert loaded == data
    size = f"{megabytes} MB"
    return [
        ["snapshot write", size, f"{write:.3f} s", f"{megabytes / write:.0f} MB/s", "1 + dir"],
        ["snapshot load+verify", size, f"{load:.3f} s", f"{megabytes / load:.0f} MB/s", "-"],
    ]


def print_table(rows: list[list[str]]) -> None:
    header = ["benchmark", "size", "time", "throughput", "fsyncs"]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    for position, row in enumerate([header, *rows]):
        cells = (cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        print("  ".join(cells).rstrip())
        if position == 0:
            print("  ".join("-" * width for width in widths))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, help="where to write (default: a temporary dir)")
    parser.add_argument("--batch1-entries", type=int, default=3_000)
    parser.add_argument("--batch256-entries", type=int, default=256_000)
    parser.add_argument("--recovery-entries", type=int, default=1_000_000)
    parser.add_argument("--snapshot-mb", type=int, default=100)
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="wal-bench-", dir=args.dir))
    try:
        print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, directory {root}")
        print(f"file system: {filesystem_of(root.resolve())}\n")
        rows = [
            bench_append(root, 1, args.batch1_entries),
            bench_append(root, 256, args.batch256_entries),
            bench_append(root, 256, args.batch256_entries, sync=False),
            bench_recovery(root, args.recovery_entries),
            *bench_snapshot(root, args.snapshot_mb),
        ]
        print_table(rows)
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
