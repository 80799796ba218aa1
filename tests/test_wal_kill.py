"""Crash test: SIGKILL a process writing to a DiskStorage, then check nothing it
reported durable was lost.

The child appends batches (each one persist = one fsync), saves a snapshot now
and then (which compacts the log and deletes WAL segments), now and then
persists a Ready carrying a leader's snapshot that replaces the log, and prints
what is durable after every call returns.  The parent kills it at a seeded random moment,
reopens the directory and checks the report against what recovery brings back;
the next child then continues from that recovered state.  SIGKILL keeps the page
cache, so this checks process-crash consistency (torn writes, half-created
segment and snapshot files, interrupted compaction), not power loss.
"""

from __future__ import annotations

import inspect
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from raft.disk_storage import DiskStorage

ROUNDS = 4
SEED = 20240521
REPO = Path(__file__).resolve().parent.parent


def payload(term: int, index: int) -> bytes:
    """The data of entry ``index`` written in ``term`` (shared with the child)."""
    return f"{term}:{index};".encode() * (1 + index % 13)


def snapshot_payload(index: int, term: int) -> bytes:
    """The data of the snapshot at ``index`` (shared with the child)."""
    return f"snapshot {index}/{term}".encode() * 50


CHILD = (
    """
import random
import sys

from raft.disk_storage import DiskStorage
from raft.messages import ConfState, Entry, HardState, Snapshot, SnapshotMeta
from raft.ready import Ready

"""
    + inspect.getsource(payload)
    + inspect.getsource(snapshot_payload)
    + """
rng = random.Random(int(sys.argv[2]))
storage = DiskStorage(
    sys.argv[1], ConfState(voters=(1,)), segment_bytes=32 * 1024, keep_entries=300
)
term = storage.hard_state.term + 1
commit = storage.hard_state.commit
index = storage.last_index()
print("ready", flush=True)
batches = 0
while True:
    count = rng.randint(1, 64)
    snapshot = None
    if batches % 40 == 39:  # as a lagging follower: a leader's snapshot replaces the log
        start = index + 5
        meta = SnapshotMeta(index=start, term=term, conf=storage.conf)
        snapshot = Snapshot(meta, snapshot_payload(meta.index, meta.term))
        index = commit = start
    numbers = range(index + 1, index + count + 1)
    entries = [Entry(term=term, index=i, data=payload(term, i)) for i in numbers]
    index += count
    commit = max(commit, index - rng.randint(0, 10))
    hard_state = HardState(term=term, vote=1, commit=commit)
    storage.persist(
        Ready(
            soft_state=None,
            hard_state=hard_state,
            entries=entries,
            snapshot=snapshot,
            must_sync=True,
        )
    )
    print(f"log {index} {term} {commit}", flush=True)
    if snapshot is not None:
        print(f"snap {snapshot.meta.index} {snapshot.meta.term}", flush=True)
    batches += 1
    if batches % 25 == 0 and commit > storage.snapshot_meta().index:
        meta = SnapshotMeta(index=commit, term=storage.term(commit), conf=storage.conf)
        storage.save_snapshot(meta, snapshot_payload(meta.index, meta.term))
        print(f"snap {meta.index} {meta.term}", flush=True)
"""
)


def run_child_until_killed(directory: Path, seed: int, delay: float) -> list[list[int]]:
    """Start a writer, SIGKILL it ``delay`` seconds after it is ready; its reports."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(directory), str(seed)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env=env,
    )
    lines: list[str] = []
    started = threading.Event()

    def read() -> None:
        assert child.stdout is not None
        for line in child.stdout:
            lines.append(line)
            started.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert started.wait(timeout=30), "child did not start"
        time.sleep(delay)
        assert child.poll() is None, "the child exited before the kill"
        os.kill(child.pid, signal.SIGKILL)
    finally:
        if child.poll() is None:
            os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=30)
        reader.join(timeout=30)
        for stream in (child.stdout, child.stderr):
            if stream is not None:
                stream.close()
    assert child.returncode == -signal.SIGKILL
    assert lines[0] == "ready\n"
    # A line cut short by the kill carries no promise: only complete lines count.
    return [
        [int(field) for field in line.split()[1:]] + [line.startswith("snap")]
        for line in lines[1:]
        if line.endswith("\n")
    ]


def test_sigkill_never_loses_what_was_reported_durable(tmp_path: Path) -> None:
    rng = random.Random(SEED)
    reported_batches = 0
    for round_number in range(ROUNDS):
        reports = run_child_until_killed(tmp_path, SEED + round_number, rng.uniform(0.3, 1.0))
        logs = [report for report in reports if not report[-1]]
        snaps = [report for report in reports if report[-1]]
        assert logs, "the child made no progress before the kill"
        reported_batches += len(logs)
        last_index, last_term, commit, _ = logs[-1]

        with DiskStorage(tmp_path) as storage:
            hard_state = storage.hard_state
            assert hard_state.term >= last_term
            assert hard_state.commit >= commit
            assert storage.last_index() >= last_index
            first = storage.first_index()
            if last_index >= first - 1:
                assert storage.term(last_index) == last_term
            else:  # a later (unreported) snapshot replaced the log
                assert storage.snapshot_meta().index > last_index
            for entry in storage.entries(first, storage.last_index() + 1):
                assert entry.data == payload(entry.term, entry.index)
            # Whatever was compacted away is covered by a snapshot that loads.
            meta = storage.snapshot_meta()
            if snaps:
                assert meta.index >= snaps[-1][0]
            assert meta.index >= first - 1
            loaded = storage.load_snapshot()
            if meta.index:
                assert loaded == (meta, snapshot_payload(meta.index, meta.term))
            else:
                assert loaded is None and first == 1
    assert reported_batches > ROUNDS * 10
