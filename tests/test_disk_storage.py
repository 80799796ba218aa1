"""Tests of DiskStorage (raft/disk_storage.py) and snapshot files (raft/snapshot_file.py)."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from raft.disk_storage import DiskStorage
from raft.messages import ConfState, Entry, HardState, Snapshot, SnapshotMeta
from raft.ready import Ready
from raft.snapshot_file import (
    CorruptSnapshotError,
    SnapshotNotFoundError,
    SnapshotStore,
    read_snapshot_file,
    snapshot_name,
    write_snapshot_file,
)
from raft.storage import CompactedError, MemoryStorage, UnavailableError

CONF = ConfState(voters=(1, 2, 3))


def ents(lo: int, hi: int, term: int = 1, size: int = 20) -> list[Entry]:
    return [
        Entry(term=term, index=i, data=f"{term}/{i}".encode().ljust(size, b"."))
        for i in range(lo, hi)
    ]


def ready(entries: list[Entry], hard_state: HardState | None, must_sync: bool = True) -> Ready:
    return Ready(soft_state=None, hard_state=hard_state, entries=entries, must_sync=must_sync)


def snapshot_data(meta: SnapshotMeta) -> bytes:
    return f"state machine at {meta.index}/{meta.term}".encode() * 3


View = tuple[HardState, ConfState, int, int, int, list[Entry]]


def view(storage: DiskStorage | MemoryStorage) -> View:
    """Everything the Storage protocol exposes, except the snapshot."""
    first, last = storage.first_index(), storage.last_index()
    entries = storage.entries(first, last + 1) if last >= first else []
    hard_state, conf = storage.initial_state()
    return hard_state, conf, first, last, storage.term(first - 1), entries


# --- Storage protocol and writers ---------------------------------------------------------


def test_reads_behave_like_memory_storage(tmp_path: Path) -> None:
    memory = MemoryStorage(CONF)
    with DiskStorage(tmp_path, CONF) as disk:
        for storage in (memory, disk):
            storage.append(ents(1, 21, size=100))
            storage.set_hard_state(HardState(1, 2, 10))
            storage.compact(5)
        assert view(disk) == view(memory)
        assert disk.entries(6, 21, max_bytes=250) == memory.entries(6, 21, max_bytes=250)
        assert len(disk.entries(6, 21, max_bytes=250)) == 2
        assert len(disk.entries(6, 21, max_bytes=1)) == 1  # always at least one entry
        assert disk.term(5) == 1 and disk.first_index() == 6 and disk.last_index() == 20
        for storage in (memory, disk):
            with pytest.raises(CompactedError):
                storage.entries(5, 7)
            with pytest.raises(CompactedError):
                storage.term(4)
            with pytest.raises(UnavailableError):
                storage.entries(6, 22)
            with pytest.raises(UnavailableError):
                storage.term(21)
        assert disk.snapshot_meta() == SnapshotMeta(conf=CONF) == memory.snapshot_meta()


def test_bootstrap_conf_is_durable_and_stored_conf_wins(tmp_path: Path) -> None:
    with DiskStorage(tmp_path, CONF) as disk:
        assert disk.initial_state() == (HardState(), CONF)
    with DiskStorage(tmp_path) as disk:
        assert disk.conf == CONF
    with DiskStorage(tmp_path, ConfState(voters=(9,))) as disk:
        assert disk.conf == CONF


def test_persist_is_one_fsync_per_ready(tmp_path: Path) -> None:
    with DiskStorage(tmp_path, CONF) as disk:
        wal = disk.wal
        fsyncs, dir_fsyncs = wal.fsync_count, wal.dir_fsync_count
        for batch in range(10):
            lo = 1 + batch * 500
            disk.persist(ready(ents(lo, lo + 500, size=100), HardState(1, 1, lo)))
            assert wal.fsync_count - fsyncs == batch + 1
        assert wal.dir_fsync_count == dir_fsyncs
        disk.persist(ready([], HardState(1, 1, 5000), must_sync=False))  # commit-only
        assert wal.fsync_count - fsyncs == 10
        disk.persist(ready([], None))  # nothing new, but the commit above becomes durable
        assert wal.fsync_count - fsyncs == 11
        disk.persist(ready([], None))  # nothing to write at all
        assert wal.fsync_count - fsyncs == 11
        state = view(disk)
    with DiskStorage(tmp_path) as disk:
        assert view(disk) == state
        assert disk.hard_state == HardState(1, 1, 5000)


def test_persist_writes_entries_then_hard_state_and_truncates(tmp_path: Path) -> None:
    memory = MemoryStorage(CONF)
    steps = [
        ready(ents(1, 8), HardState(1, 1, 3)),
        ready(ents(5, 7, term=2), HardState(2, 2, 4)),
        ready(ents(7, 9, term=2), None),
    ]
    with DiskStorage(tmp_path, CONF) as disk:
        for step in steps:
            disk.persist(step)
            memory.persist(step)
        assert view(disk) == view(memory)
    with DiskStorage(tmp_path) as disk:
        assert view(disk) == view(memory)


# --- Snapshots ------------------------------------------------------------------------


def test_snapshot_round_trip_survives_reopen(tmp_path: Path) -> None:
    meta = SnapshotMeta(index=30, term=1, conf=CONF)
    with DiskStorage(tmp_path, CONF, keep_entries=10) as disk:
        assert disk.load_snapshot() is None
        disk.append(ents(1, 41))
        disk.set_hard_state(HardState(1, 1, 35))
        disk.save_snapshot(meta, snapshot_data(meta))
        assert disk.snapshot_meta() == meta
        assert disk.first_index() == 21 and disk.term(20) == 1  # 10 entries kept behind
        assert disk.last_index() == 40
        state = view(disk)
    with DiskStorage(tmp_path) as disk:
        assert view(disk) == state
        assert disk.load_snapshot() == (meta, snapshot_data(meta))


def test_compaction_never_passes_the_commit_index(tmp_path: Path) -> None:
    meta = SnapshotMeta(index=30, term=1, conf=CONF)
    with DiskStorage(tmp_path, CONF, keep_entries=0) as disk:
        disk.append(ents(1, 41))
        disk.set_hard_state(HardState(1, 1, 12))
        disk.save_snapshot(meta, snapshot_data(meta))
        assert disk.first_index() == 13


def test_snapshots_compact_the_log_remove_segments_and_prune_files(tmp_path: Path) -> None:
    with DiskStorage(tmp_path, CONF, segment_bytes=2048, keep_entries=50) as disk:
        for lo in range(1, 1001, 20):
            disk.persist(ready(ents(lo, lo + 20), HardState(1, 1, lo + 19)))
        segments = disk.wal.segment_paths()
        for index in (200, 400, 600, 900):
            meta = SnapshotMeta(index=index, term=1, conf=CONF)
            disk.save_snapshot(meta, snapshot_data(meta))
        assert disk.first_index() == 851
        remaining = disk.wal.segment_paths()
        assert len(remaining) < len(segments) / 2
        names = sorted(path.name for path in (tmp_path / "snap").iterdir())
        assert names == [snapshot_name(SnapshotMeta(index=i, term=1)) for i in (600, 900)]
        state = view(disk)
    with DiskStorage(tmp_path, segment_bytes=2048) as disk:
        assert view(disk) == state
        assert disk.load_snapshot() == (
            SnapshotMeta(index=900, term=1, conf=CONF),
            snapshot_data(SnapshotMeta(index=900, term=1, conf=CONF)),
        )


def test_received_snapshot_replaces_a_conflicting_log(tmp_path: Path) -> None:
    meta = SnapshotMeta(index=50, term=3, conf=ConfState(voters=(1, 2, 3, 4)))
    with DiskStorage(tmp_path, CONF) as disk:
        disk.append(ents(1, 21))
        disk.set_hard_state(HardState(3, 0, 10))
        disk.save_snapshot(meta, snapshot_data(meta))
        assert disk.last_index() == 20  # saving alone keeps the log
        disk.apply_snapshot(meta)
        assert (disk.first_index(), disk.last_index(), disk.term(50)) == (51, 50, 3)
        assert disk.conf == meta.conf
        disk.append(ents(51, 53, term=3))
        state = view(disk)
    with DiskStorage(tmp_path) as disk:
        assert view(disk) == state
        assert disk.load_snapshot() == (meta, snapshot_data(meta))


def test_received_snapshot_through_persist_is_one_wal_fsync(tmp_path: Path) -> None:
    meta = SnapshotMeta(index=50, term=3, conf=ConfState(voters=(1, 2, 3, 4)))
    batch = Ready(
        soft_state=None,
        hard_state=HardState(3, 2, 51),
        entries=ents(51, 54, term=3),
        snapshot=Snapshot(meta, snapshot_data(meta)),
        must_sync=True,
    )
    memory = MemoryStorage(CONF)
    with DiskStorage(tmp_path, CONF, segment_bytes=1024) as disk:
        for storage in (memory, disk):
            for lo in range(1, 61, 10):
                storage.persist(ready(ents(lo, lo + 10), HardState(2, 1, 10)))
        fsyncs = disk.wal.fsync_count
        segments = disk.wal.segment_paths()
        disk.persist(batch)
        memory.persist(batch)
        created = set(disk.wal.segment_paths()) - set(segments)
        # One fsync for the WAL records of the Ready, plus one per segment created
        # (rollover); the snapshot file's own fsync is not a WAL fsync.
        assert disk.wal.fsync_count - fsyncs == 1 + len(created)
        assert view(disk) == view(memory)
        assert (disk.first_index(), disk.last_index()) == (51, 53)
        assert disk.snapshot() == memory.snapshot() == Snapshot(meta, snapshot_data(meta))
        assert len(disk.wal.segment_paths()) < len(segments)  # the old log's segments went
    with DiskStorage(tmp_path) as disk:
        assert view(disk) == view(memory)
        assert disk.snapshot() == memory.snapshot()


def test_received_snapshot_at_the_compacted_index_changes_no_entries(tmp_path: Path) -> None:
    meta = SnapshotMeta(index=5, term=3, conf=CONF)
    memory = MemoryStorage(CONF)
    with DiskStorage(tmp_path, CONF, keep_entries=0) as disk:
        for storage in (memory, disk):
            storage.append(ents(1, 11))
            storage.set_hard_state(HardState(3, 0, 8))
            storage.compact(5)
            storage.save_snapshot(meta, snapshot_data(meta))
            storage.apply_snapshot(meta)  # at the compacted index: the log stays as it is
        assert view(disk) == view(memory)
        assert (disk.first_index(), disk.last_index(), disk.term(5)) == (6, 10, 1)
    with DiskStorage(tmp_path) as disk:
        assert view(disk) == view(memory)


def test_apply_snapshot_requires_the_data_first(tmp_path: Path) -> None:
    with DiskStorage(tmp_path, CONF) as disk:
        disk.append(ents(1, 5))
        with pytest.raises(SnapshotNotFoundError):
            disk.apply_snapshot(SnapshotMeta(index=9, term=2, conf=CONF))
        assert disk.last_index() == 4


def test_older_snapshot_is_ignored_and_same_one_is_a_no_op(tmp_path: Path) -> None:
    meta = SnapshotMeta(index=3, term=1, conf=CONF)
    with DiskStorage(tmp_path, CONF) as disk:
        disk.append(ents(1, 5))
        disk.save_snapshot(meta, snapshot_data(meta))
        fsyncs = disk.wal.fsync_count
        disk.save_snapshot(meta, b"ignored")
        disk.save_snapshot(SnapshotMeta(index=2, term=1, conf=CONF), b"old")
        assert disk.wal.fsync_count == fsyncs
        assert disk.load_snapshot() == (meta, snapshot_data(meta))
        assert [path.name for path in (tmp_path / "snap").iterdir()] == [snapshot_name(meta)]


def test_leftover_temporary_snapshot_is_ignored_and_removed(tmp_path: Path) -> None:
    meta = SnapshotMeta(index=3, term=1, conf=CONF)
    with DiskStorage(tmp_path, CONF) as disk:
        disk.append(ents(1, 10))
        disk.save_snapshot(meta, snapshot_data(meta))
    # A crash while writing a newer snapshot leaves its temporary file.
    newer = SnapshotMeta(index=8, term=1, conf=CONF)
    leftover = tmp_path / "snap" / (snapshot_name(newer) + ".tmp")
    leftover.write_bytes(b"KVSNAP\0\0 half a snapshot")
    with DiskStorage(tmp_path) as disk:
        assert disk.snapshot_meta() == meta
        assert disk.load_snapshot() == (meta, snapshot_data(meta))
    assert not leftover.exists()


def test_snapshot_file_not_yet_recorded_in_the_wal_is_ignored(tmp_path: Path) -> None:
    meta = SnapshotMeta(index=3, term=1, conf=CONF)
    with DiskStorage(tmp_path, CONF) as disk:
        disk.append(ents(1, 10))
        disk.save_snapshot(meta, snapshot_data(meta))
    # A crash after the file was renamed into place but before the WAL recorded it.
    orphan = SnapshotMeta(index=8, term=1, conf=CONF)
    SnapshotStore(tmp_path / "snap").save(orphan, b"never recorded")
    with DiskStorage(tmp_path) as disk:
        assert disk.load_snapshot() == (meta, snapshot_data(meta))
        later = SnapshotMeta(index=6, term=1, conf=CONF)
        disk.save_snapshot(later, snapshot_data(later))  # prunes the orphan
        names = sorted(path.name for path in (tmp_path / "snap").iterdir())
        assert names == [snapshot_name(meta), snapshot_name(later)]


@pytest.mark.parametrize("where", ["data", "header", "magic", "truncated", "appended"])
def test_damaged_snapshot_file_is_detected(tmp_path: Path, where: str) -> None:
    meta = SnapshotMeta(index=3, term=1, conf=CONF)
    with DiskStorage(tmp_path, CONF) as disk:
        disk.append(ents(1, 5))
        disk.save_snapshot(meta, snapshot_data(meta))
    path = tmp_path / "snap" / snapshot_name(meta)
    raw = bytearray(path.read_bytes())
    if where == "data":
        raw[-5] ^= 0x01
    elif where == "header":
        raw[22] ^= 0x01
    elif where == "magic":
        raw[0:6] = b"NOTSNP"
    elif where == "truncated":
        del raw[-1]
    else:
        raw += b"x"
    path.write_bytes(bytes(raw))
    with DiskStorage(tmp_path) as disk, pytest.raises(CorruptSnapshotError) as info:
        disk.load_snapshot()
    assert info.value.path == path and str(path) in str(info.value)


def test_missing_snapshot_file_refuses_to_open(tmp_path: Path) -> None:
    meta = SnapshotMeta(index=3, term=1, conf=CONF)
    with DiskStorage(tmp_path, CONF) as disk:
        disk.append(ents(1, 5))
        disk.save_snapshot(meta, snapshot_data(meta))
    (tmp_path / "snap" / snapshot_name(meta)).unlink()
    with pytest.raises(SnapshotNotFoundError, match=snapshot_name(meta)):
        DiskStorage(tmp_path)
    with DiskStorage(tmp_path / "other"):  # and the failed open released the WAL
        pass


def test_snapshot_file_round_trip_and_atomic_write(tmp_path: Path) -> None:
    meta = SnapshotMeta(index=7, term=2, conf=CONF)
    data = bytes(range(256)) * 1000
    path = write_snapshot_file(tmp_path, meta, data)
    assert path.name == snapshot_name(meta) == "0000000000000007-0000000000000002.snap"
    assert read_snapshot_file(path) == (meta, data)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary left
    # A file whose name does not match its content is refused.
    path.rename(tmp_path / snapshot_name(SnapshotMeta(index=7, term=3)))
    with pytest.raises(CorruptSnapshotError, match="holds"):
        SnapshotStore(tmp_path).load(SnapshotMeta(index=7, term=3))


# --- Model-based test -------------------------------------------------------------------


class DiskMatchesMemory(RuleBasedStateMachine):
    """Random writes to DiskStorage and to MemoryStorage (the model) agree, across reopens.

    The only difference the machine mirrors by hand is DiskStorage's automatic
    compaction behind a saved snapshot (``keep_entries``).
    """

    def __init__(self) -> None:
        super().__init__()
        self.directory = Path(tempfile.mkdtemp(prefix="disk-model-"))
        self.model = MemoryStorage(CONF)

    @initialize(
        keep_entries=st.sampled_from([None, 0, 1, 3]),
        segment_bytes=st.sampled_from([200, 400, 1 << 20]),
    )
    def open_storage(self, keep_entries: int | None, segment_bytes: int) -> None:
        self.keep_entries = keep_entries
        self.segment_bytes = segment_bytes
        self.disk = self._open()

    def _open(self) -> DiskStorage:
        return DiskStorage(
            self.directory,
            CONF,
            segment_bytes=self.segment_bytes,
            keep_entries=self.keep_entries,
            keep_snapshots=2,
        )

    def teardown(self) -> None:
        if hasattr(self, "disk"):
            self.disk.close()
        shutil.rmtree(self.directory)

    @rule(data=st.data(), count=st.integers(0, 5), term=st.integers(1, 4), sync=st.booleans())
    def persist(self, data: st.DataObject, count: int, term: int, sync: bool) -> None:
        lo = data.draw(
            st.integers(max(1, self.model.first_index() - 2), self.model.last_index() + 2)
        )
        entries = ents(lo, lo + count, term=term, size=data.draw(st.integers(0, 60)))
        hard_state = data.draw(st.none() | self._hard_states())
        error = self._error(lambda: self.model.persist(ready(entries, hard_state)))
        if error is None:
            self.disk.persist(ready(entries, hard_state, must_sync=sync))
        else:
            with pytest.raises(error):
                self.disk.persist(ready(entries, hard_state, must_sync=sync))

    @rule(data=st.data())
    def set_hard_state(self, data: st.DataObject) -> None:
        hard_state = data.draw(self._hard_states())
        self.model.set_hard_state(hard_state)
        self.disk.set_hard_state(hard_state)

    @rule(data=st.data())
    def compact(self, data: st.DataObject) -> None:
        index = data.draw(st.integers(self.model.first_index() - 2, self.model.last_index() + 1))
        error = self._error(lambda: self.model.compact(index))
        if error is None:
            self.disk.compact(index)
        else:
            with pytest.raises(error):
                self.disk.compact(index)

    @precondition(lambda self: self.model.last_index() > self.model.snapshot_meta().index)
    @rule(data=st.data())
    def save_local_snapshot(self, data: st.DataObject) -> None:
        low = max(self.model.snapshot_meta().index + 1, self.model.first_index() - 1)
        index = data.draw(st.integers(low, self.model.last_index()))
        meta = SnapshotMeta(index=index, term=self.model.term(index), conf=self.model.conf)
        self.disk.save_snapshot(meta, snapshot_data(meta))
        self.model.save_snapshot(meta, snapshot_data(meta))
        self._mirror_compaction_behind(meta)

    @rule(
        data=st.data(),
        term=st.integers(1, 5),
        voters=st.sampled_from([(1,), (1, 2, 3)]),
        through_persist=st.booleans(),
    )
    def receive_snapshot(
        self, data: st.DataObject, term: int, voters: tuple[int, ...], through_persist: bool
    ) -> None:
        low = max(self.model.snapshot_meta().index, self.model.first_index() - 1) + 1
        index = data.draw(st.integers(low, max(low, self.model.last_index() + 3)))
        if data.draw(st.booleans()) and index <= self.model.last_index():
            term = self.model.term(index)  # agrees with the log: the suffix survives
        meta = SnapshotMeta(index=index, term=term, conf=ConfState(voters=voters))
        snapshot = Snapshot(meta, snapshot_data(meta))
        if through_persist:  # the Ready way: snapshot, entries after it, hard state
            count = data.draw(st.integers(0, 3))
            batch = Ready(
                soft_state=None,
                hard_state=HardState(term, 1, index),
                entries=ents(index + 1, index + 1 + count, term=term),
                snapshot=snapshot,
                must_sync=data.draw(st.booleans()),
            )
            self.disk.persist(batch)
            self.model.persist(batch)
        else:
            self.disk.save_snapshot(meta, snapshot.data)
            self.disk.apply_snapshot(meta)
            self.model.save_snapshot(meta, snapshot.data)
            self._mirror_compaction_behind(meta)
            self.model.apply_snapshot(meta)

    @rule()
    def reopen(self) -> None:
        self.disk.close()
        self.disk = self._open()

    @invariant()
    def storage_agrees_with_the_model(self) -> None:
        if not hasattr(self, "disk"):
            return
        disk, model = view(self.disk), view(self.model)
        # Membership is the one deliberate difference: DiskStorage reports the
        # latest snapshot's (as etcd restores it), MemoryStorage the one it last
        # applied or was built with.
        assert (disk[0], *disk[2:]) == (model[0], *model[2:])
        assert self.disk.conf == self.disk.snapshot_meta().conf
        assert self.disk.snapshot_meta() == self.model.snapshot_meta()
        assert self.disk.snapshot() == self.model.snapshot()
        assert len(list((self.directory / "snap").iterdir())) <= 2

    def _mirror_compaction_behind(self, meta: SnapshotMeta) -> None:
        """What DiskStorage.save_snapshot compacts on its own (``keep_entries``)."""
        if self.keep_entries is not None:
            model = self.model
            cut = min(meta.index - self.keep_entries, model.hard_state.commit, model.last_index())
            if cut >= model.first_index():
                model.compact(cut)

    def _hard_states(self) -> st.SearchStrategy[HardState]:
        return st.builds(
            HardState,
            term=st.integers(0, 5),
            vote=st.integers(0, 3),
            commit=st.integers(0, max(0, self.model.last_index())),
        )

    @staticmethod
    def _error(action: Callable[[], object]) -> type[Exception] | None:
        try:
            action()
        except (ValueError, LookupError) as exc:
            return type(exc)
        return None


def test_disk_storage_matches_memory_storage_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """The model test is about what recovery replays, not about the disk: fsync is
    stubbed out to keep it fast on a busy machine (reopening in the same process
    reads the page cache either way).  fsync discipline is covered by the counting
    tests and by tests/test_wal_kill.py.  ``KVSTORE_STORAGE_MODEL_EXAMPLES`` raises
    the number of examples (default 60) for a longer hunt."""
    monkeypatch.setattr(os, "fsync", lambda fd: None)
    monkeypatch.setattr(os, "fdatasync", lambda fd: None)
    run_state_machine_as_test(  # type: ignore[no-untyped-call]
        DiskMatchesMemory,
        settings=settings(
            max_examples=int(os.environ.get("KVSTORE_STORAGE_MODEL_EXAMPLES", "60")),
            stateful_step_count=40,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )


# --- With the Raft core ----------------------------------------------------------------


def test_a_raft_core_restarts_from_disk_storage(tmp_path: Path) -> None:
    """A one-member cluster on DiskStorage: what it committed comes back after a restart."""
    import random

    from raft.core import Config, RaftCore
    from raft.storage import Storage

    def run(
        storage: DiskStorage, seed: int, proposals: list[bytes]
    ) -> tuple[RaftCore, list[bytes]]:
        core = RaftCore(Config(id=1), storage, random.Random(seed))
        applied: list[bytes] = []

        def drive() -> None:
            while core.has_ready():
                batch = core.ready()
                storage.persist(batch)
                applied.extend(entry.data for entry in batch.committed_entries if entry.data)
                core.advance(batch)

        for _ in range(40):
            core.tick()
            drive()
        for data in proposals:
            core.propose(data)
            drive()
        return core, applied

    with DiskStorage(tmp_path, ConfState(voters=(1,))) as disk:
        protocol: Storage = disk
        core, applied = run(disk, 1, [b"a", b"b", b"c"])
        assert applied == [b"a", b"b", b"c"] and protocol.last_index() >= 4
        first_term = core.term
    with DiskStorage(tmp_path) as disk:
        core, applied = run(disk, 2, [b"d"])
        assert applied == [b"a", b"b", b"c", b"d"]
        assert core.term > first_term and disk.hard_state.commit == disk.last_index()
