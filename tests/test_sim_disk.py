"""The real WAL and snapshot files under the simulator's disk faults.

:class:`~raft.sim.wal_disk.WALDisk` runs the real ``DiskStorage`` on a
file-system model with fsync semantics: a crash loses what was not fsynced and
may tear the last write, power can fail after any disk operation of a persist,
a snapshot save, a snapshot install or a recovery, and a separate fault flips a
bit in a durable file.  Here:

* the model itself (what survives a crash, what a directory fsync makes durable);
* deterministic scenarios: a torn last record is truncated and the node rejoins
  with every entry it had acknowledged; a flipped bit in an earlier record (or
  in the snapshot file) refuses to start, naming the file and offset, and the
  node stays down while the others carry on; a power cut at every step of a
  snapshot install, of a snapshot save and of a recovery leaves the old or the
  new state, never a mix;
* the Hypothesis state machine of ``test_sim_properties`` on WAL disks, with
  rules for power cuts during persists, snapshot saves and recoveries, and bit
  flips on a minority of nodes; every safety checker runs after every step,
  and the healthy nodes must make progress after healing;
* seeded chaos schedules with disk faults, then the liveness phase.

Sizing: ``KVSTORE_DISK_PROPERTY_EXAMPLES`` (default 500) examples of up to
``KVSTORE_DISK_PROPERTY_STEPS`` (default 60) rules, and
``KVSTORE_DISK_CHAOS_SEEDS`` (default 30) chaos seeds.
"""

from __future__ import annotations

import dataclasses
import os
import random
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import event, settings
from hypothesis import strategies as st
from hypothesis.stateful import initialize, invariant, precondition, rule
from test_sim_properties import ELECTION_TICK, RaftSimulation, nodes, positions, step

from raft.core import Config
from raft.disk_storage import DiskStorage
from raft.messages import (
    AppendEntries,
    AppendResponse,
    ConfState,
    Entry,
    HardState,
    InstallSnapshot,
)
from raft.ready import Ready
from raft.sim import (
    DISK_CHAOS,
    Cluster,
    CrashPoint,
    DurabilityViolation,
    DuringPersist,
    MemoryDisk,
    run_chaos,
)
from raft.sim.chaos import MAX_CUT_OPS
from raft.sim.cluster import decode_image
from raft.sim.network import Envelope
from raft.sim.wal_disk import (
    PowerCut,
    SimFS,
    StorageViolation,
    WALDisk,
    WALDiskFactory,
    _intact_records,
)
from raft.snapshot_file import CorruptSnapshotError
from raft.wal import CorruptWALError

EXAMPLES = int(os.environ.get("KVSTORE_DISK_PROPERTY_EXAMPLES", "500"))
STEPS = int(os.environ.get("KVSTORE_DISK_PROPERTY_STEPS", "60"))
CHAOS_SEEDS = int(os.environ.get("KVSTORE_DISK_CHAOS_SEEDS", "30"))
CHAOS_STEPS = 1500
CONFIG = Config(id=1, election_tick=5)


def disk(cluster: Cluster, node: int) -> WALDisk:
    d = cluster.nodes[node].disk
    assert isinstance(d, WALDisk)
    return d


def to(node: int, kind: type) -> Callable[[Envelope], bool]:
    def match(envelope: Envelope) -> bool:
        return envelope.to == node and isinstance(envelope.message, kind)

    return match


# -- the file-system model ------------------------------------------------------------------


def test_fs_model_keeps_synced_data_and_loses_or_tears_the_rest(tmp_path: Path) -> None:
    outcomes = set()
    for seed in range(40):
        root = tmp_path / str(seed)
        root.mkdir()
        fs = SimFS(root, random.Random(seed))
        with fs.active():
            fd = os.open(root / "f", os.O_WRONLY | os.O_CREAT, 0o644)
            os.write(fd, b"synced")
            os.fsync(fd)
            dir_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
            os.fsync(dir_fd)
            os.close(dir_fd)
            os.write(fd, b"-unsynced")
            os.close(fd)
        assert not fs.clean()
        fs.crash()
        data = (root / "f").read_bytes()
        # A prefix of the unsynced append, maybe then zeros; never less than what was synced.
        assert data.startswith(b"synced")
        tail = data[len(b"synced") :].rstrip(b"\0")
        assert b"-unsynced".startswith(tail)
        outcomes.add(
            "all" if data == b"synced-unsynced" else "none" if data == b"synced" else "torn"
        )
        assert fs.clean()
    assert outcomes == {"all", "none", "torn"}


def test_fs_model_directory_entries_need_a_directory_fsync(tmp_path: Path) -> None:
    kept = set()
    for seed in range(30):
        root = tmp_path / str(seed)
        root.mkdir()
        fs = SimFS(root, random.Random(seed))
        with fs.active():
            fd = os.open(root / "new.tmp", os.O_WRONLY | os.O_CREAT, 0o644)
            os.write(fd, b"data")
            os.fsync(fd)  # the content is durable, the name is not
            os.close(fd)
            os.rename(root / "new.tmp", root / "new")
        fs.crash()
        names = sorted(p.name for p in root.iterdir())
        # A prefix of [create new.tmp, rename to new] survives.
        assert names in ([], ["new.tmp"], ["new"])
        if names:
            assert (root / names[0]).read_bytes() == b"data"
        kept.add(tuple(names))
    assert len(kept) == 3


def test_fs_model_power_cut_stops_every_later_operation(tmp_path: Path) -> None:
    fs = SimFS(tmp_path, random.Random(1))
    fs.arm(1)
    with fs.active(), pytest.raises(PowerCut):
        fd = os.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT, 0o644)  # operation 1
        try:
            os.write(fd, b"x" * 100)  # cut: a random prefix is written
        finally:
            os.close(fd)
    with fs.active(), pytest.raises(PowerCut):
        os.unlink(tmp_path / "f")
    assert (tmp_path / "f").exists()
    fs.disarm()
    fs.release_fds()
    fs.crash()
    assert fs.powered


def test_memory_disk_interrupted_persist_keeps_a_prefix_of_the_parts() -> None:
    d = MemoryDisk(ConfState(voters=(1,)))
    ready = Ready(None, HardState(term=1, vote=1), entries=[Entry(term=1, index=1)], must_sync=True)
    d.persist_interrupted(ready, 1)
    assert d.storage.last_index() == 1
    assert d.durable_hard_state() == HardState()


# -- deterministic scenarios ------------------------------------------------------------------


def acked_index(cluster: Cluster, follower: int) -> int:
    """The highest index ``follower`` has acknowledged in a message still in flight."""
    acks = [
        e.message.index
        for e in cluster.network.in_flight
        if e.frm == follower and isinstance(e.message, AppendResponse) and not e.message.reject
    ]
    return max(acks, default=0)


def torn_tail(d: WALDisk) -> bool:
    segment = sorted((d.directory / "wal").glob("*.wal"))[-1]
    data = segment.read_bytes()
    records = _intact_records(data)
    return bool(records) and records[-1][1] < len(data)


def test_torn_last_record_is_truncated_and_node_rejoins_without_losing_acked_entries() -> None:
    torn_seen = 0
    for seed in range(12):
        with WALDiskFactory(seed) as factory:
            cluster = Cluster(3, seed, config=CONFIG, disk_factory=factory)
            leader = cluster.await_leader()
            follower = next(i for i in cluster.ids if i != leader)
            for k in range(5):
                cluster.propose(leader, f"a{k}".encode())
            cluster.deliver_where(to(follower, AppendEntries))
            acked = acked_index(cluster, follower)
            assert acked >= 5
            acked_entries = cluster.nodes[follower].disk.storage.entries(1, acked + 1)
            cluster.stabilize()
            # More entries arrive; the follower's power fails while it writes them.
            for k in range(5):
                cluster.propose(leader, f"b{k}".encode())
            position = cluster.network.find(to(follower, AppendEntries))
            assert position is not None
            cluster.deliver(position, crash_at=DuringPersist(1))  # cut at the fdatasync
            if not torn_tail(disk(cluster, follower)):
                cluster.restart(follower)
                continue
            torn_seen += 1
            truncated = disk(cluster, follower).torn_recoveries
            cluster.restart(follower)
            assert disk(cluster, follower).torn_recoveries == truncated + 1
            assert not torn_tail(disk(cluster, follower))
            storage = cluster.nodes[follower].disk.storage
            assert storage.entries(1, acked + 1) == acked_entries
            cluster.check_liveness(proposals=2)
            assert {b"a0", b"b4"} <= cluster.nodes[follower].applied_data.keys()
    assert torn_seen >= 3


@pytest.mark.parametrize("seed", range(8))
def test_flipped_bit_in_an_earlier_record_refuses_naming_file_and_offset(seed: int) -> None:
    with WALDiskFactory(seed, segment_bytes=1024) as factory:
        cluster = Cluster(3, seed, config=CONFIG, disk_factory=factory)
        leader = cluster.await_leader()
        values = [f"v{k}".encode() for k in range(20)]
        for value in values:
            cluster.propose(leader, value)
        cluster.await_applied(values)
        victim = next(i for i in cluster.ids if i != leader)
        applied_before = cluster.nodes[victim].applied_index
        incarnation = cluster.nodes[victim].incarnation
        cluster.corrupt(victim)
        d = disk(cluster, victim)
        assert d.corrupt_record is not None  # no snapshot yet: the flip is in the WAL
        cluster.restart(victim)
        assert cluster.disk_failures.keys() == {victim}
        assert not cluster.nodes[victim].up
        error = d.refusal
        assert isinstance(error, CorruptWALError)
        assert (error.path, error.offset) == d.corrupt_record
        assert str(error.path) in str(error) and f"offset {error.offset}" in str(error)
        assert f"corrupt n{victim}'s disk" in cluster.format_trace()
        assert "REFUSES to start" in cluster.format_trace()
        # The other two carry on; the victim never started again, so applied nothing.
        cluster.check_liveness(proposals=3)
        assert cluster.nodes[victim].incarnation == incarnation
        assert cluster.nodes[victim].applied_index == applied_before


def test_flipped_bit_in_the_snapshot_file_refuses() -> None:
    seen = 0
    for seed in range(10):
        with WALDiskFactory(seed) as factory:
            cluster = Cluster(3, seed, config=CONFIG, disk_factory=factory)
            leader = cluster.await_leader()
            values = [f"v{k}".encode() for k in range(6)]
            for value in values:
                cluster.propose(leader, value)
            cluster.await_applied(values)
            victim = next(i for i in cluster.ids if i != leader)
            cluster.compact(victim)
            cluster.corrupt(victim)
            cluster.restart(victim)
            error = disk(cluster, victim).refusal
            assert error is not None
            if disk(cluster, victim).corrupt_record is None:
                seen += 1
                assert isinstance(error, CorruptSnapshotError)
                assert error.path.suffix == ".snap"
            cluster.check_liveness(proposals=2)
    assert seen >= 2


def last_chunk_to(node: int) -> Callable[[Envelope], bool]:
    def match(envelope: Envelope) -> bool:
        message = envelope.message
        return envelope.to == node and isinstance(message, InstallSnapshot) and message.done

    return match


def lagging_follower(seed: int, factory: WALDiskFactory) -> tuple[Cluster, int, int]:
    """A cluster whose leader compacted past a follower that was down: the
    follower needs InstallSnapshot.  Returns the cluster, the follower and the
    leader; the follower is up, lazy, and its old state is on its disk."""
    cluster = Cluster(3, seed, config=CONFIG, disk_factory=factory)
    leader = cluster.await_leader()
    follower = next(i for i in cluster.ids if i != leader)
    cluster.propose(leader, b"old")
    cluster.await_applied([b"old"])
    cluster.crash(follower)
    values = [f"new{k}".encode() for k in range(6)]
    for value in values:
        cluster.propose(leader, value)
    cluster.run_until(
        lambda: all(value in cluster.nodes[leader].applied_data for value in values),
        100,
        "committing without the follower",
    )
    cluster.compact(leader)
    cluster.restart(follower)
    return cluster, follower, leader


@pytest.mark.parametrize("ops", range(MAX_CUT_OPS))
def test_power_cut_during_snapshot_install_leaves_old_or_new_state(ops: int) -> None:
    outcomes = set()
    for seed in range(3):
        with WALDiskFactory(seed) as factory:
            cluster, follower, leader = lagging_follower(seed, factory)
            d = disk(cluster, follower)
            old_meta = d.storage.snapshot_meta()
            old_log = d.durable_log()
            new_meta = cluster.nodes[leader].disk.storage.snapshot_meta()
            assert new_meta.index > old_log.last
            for _ in range(200):
                if cluster.network.find(to(follower, InstallSnapshot)) is not None:
                    break
                cluster.tick_all()
                cluster.deliver_where(lambda e: not isinstance(e.message, InstallSnapshot))
            last_chunk = cluster.network.find(last_chunk_to(follower))
            assert last_chunk is not None
            cluster.deliver(last_chunk, crash_at=DuringPersist(ops))
            assert not cluster.nodes[follower].up
            cluster.restart(follower)
            storage = d.storage
            meta = storage.snapshot_meta()
            image = decode_image(storage.snapshot().data)
            state = cluster.nodes[follower].state
            if meta == old_meta:
                outcomes.add("old")
                assert storage.first_index() == old_log.first
                assert storage.entries(old_log.first, old_log.last + 1) == list(old_log.entries)
            else:
                outcomes.add("new")
                assert meta == new_meta
                assert storage.first_index() == new_meta.index + 1
            # The state machine is restored from exactly the snapshot the log starts at
            # (then the committed entries after it are applied).
            assert [e.index for e in image] == list(range(1, meta.index + 1))
            assert state[: len(image)] == image
            cluster.check_liveness(proposals=2)
    if ops == 0:
        assert outcomes == {"old"}
    if ops == MAX_CUT_OPS - 1:
        assert outcomes == {"new"}


@pytest.mark.parametrize("ops", range(8))
def test_power_cut_during_snapshot_save_leaves_old_or_new_state(ops: int) -> None:
    outcomes = set()
    for seed in range(3):
        with WALDiskFactory(seed, segment_bytes=512) as factory:
            cluster = Cluster(3, seed, config=CONFIG, disk_factory=factory)
            leader = cluster.await_leader()
            values = [f"v{k}".encode() for k in range(12)]
            for value in values:
                cluster.propose(leader, value)
            cluster.await_applied(values)
            node = next(i for i in cluster.ids if i != leader)
            d = disk(cluster, node)
            before = d.durable_log()
            old_meta = d.storage.snapshot_meta()
            index = cluster.nodes[node].applied_index - 2
            cluster.compact(node, keep=2, power_cut_after=ops)
            cluster.restart(node)
            storage = d.storage
            meta, first = storage.snapshot_meta(), storage.first_index()
            assert meta == old_meta or meta.index == index
            # The log is compacted only once the snapshot is saved, and no further.
            assert first == before.first or (meta.index == index and first == index + 1)
            assert storage.entries(first, before.last + 1) == [
                e for e in before.entries if e.index >= first
            ]
            outcomes.add((meta.index, first))
            cluster.check_liveness(proposals=2)
    if ops == 0:
        assert outcomes == {(0, 1)}


@pytest.mark.parametrize("ops", range(6))
def test_power_cut_during_recovery_then_recovery_succeeds(ops: int) -> None:
    for seed in range(4):
        with WALDiskFactory(seed) as factory:
            cluster = Cluster(3, seed, config=CONFIG, disk_factory=factory)
            leader = cluster.await_leader()
            follower = next(i for i in cluster.ids if i != leader)
            cluster.set_lazy(follower)
            for k in range(4):
                cluster.propose(leader, f"v{k}".encode())
            cluster.deliver_where(to(follower, AppendEntries))
            cluster.crash(follower, DuringPersist(1))
            cluster.restart(follower, power_cut_after=ops)
            assert not cluster.nodes[follower].up
            cluster.restart(follower)
            assert cluster.nodes[follower].up
            cluster.check_liveness(proposals=2)


def test_lost_fsync_is_caught() -> None:
    """A storage that skips fsync loses acknowledged entries in a crash: the
    disk model and the checkers must notice."""

    class NoSyncDisk(WALDisk):
        def persist(self, ready: Ready) -> None:
            super().persist(dataclasses.replace(ready, must_sync=False))

    class NoSyncFactory(WALDiskFactory):
        def __call__(self, conf: ConfState) -> WALDisk:
            disk = NoSyncDisk(self.root / f"n{len(self.disks)}", conf, random.Random(0))
            self.disks.append(disk)
            return disk

    with NoSyncFactory() as factory:
        cluster = Cluster(3, 1, config=CONFIG, disk_factory=factory)
        # The first entry committed (the new leader's no-op) is durable nowhere:
        # the checker says so at once.
        with pytest.raises(DurabilityViolation, match="durable on only 0 of 3"):
            cluster.await_leader()


def test_snapshot_recorded_before_its_file_is_durable_is_caught(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A storage that records a received snapshot in the WAL before writing its
    file can crash in between: the disk model makes that crash happen, and
    recovery's refusal (the WAL names a missing file) is reported."""

    def persist_in_the_wrong_order(self: DiskStorage, ready: Ready) -> None:
        snapshot = ready.snapshot
        if snapshot is None:
            self._wal.save(ready.entries, ready.hard_state, sync=ready.must_sync)
            return
        self._wal.install_snapshot(snapshot.meta, sync=False)
        self._wal.save(ready.entries, ready.hard_state, sync=True)
        self._snapshots.save(snapshot.meta, snapshot.data)

    monkeypatch.setattr(DiskStorage, "persist", persist_in_the_wrong_order)
    caught = 0
    for ops in range(3, 8):
        with WALDiskFactory(ops) as factory:
            cluster, follower, _ = lagging_follower(ops, factory)
            for _ in range(200):
                position = cluster.network.find(last_chunk_to(follower))
                if position is not None:
                    break
                cluster.tick_all()
                cluster.deliver_where(lambda e: not isinstance(e.message, InstallSnapshot))
            assert position is not None
            cluster.deliver(position, crash_at=DuringPersist(ops))
            try:
                cluster.restart(follower)
            except StorageViolation as exc:
                assert "SnapshotNotFoundError" in str(exc)
                caught += 1
    assert caught >= 3


# -- the property test --------------------------------------------------------------------------

_SETTING_UP: list[WALDiskFactory] = []
"""The factory of the example being set up (RaftSimulation reads the disk
factory from the class; each example needs its own directory and seed)."""


def _current_factory(conf: ConfState) -> WALDisk:
    return _SETTING_UP[-1](conf)


cut_ops = st.integers(min_value=0, max_value=MAX_CUT_OPS - 1)


class WALDiskSimulation(RaftSimulation):
    """RaftSimulation on real WAL disks, plus power cuts and bit flips."""

    disk_factory = staticmethod(_current_factory)

    def __init__(self) -> None:
        super().__init__()
        self.disks: WALDiskFactory | None = None

    @initialize(
        size=st.sampled_from([3, 5]),
        seed=st.integers(min_value=0, max_value=2**32),
        pre_vote=st.booleans(),
        check_quorum=st.booleans(),
        small_messages=st.booleans(),
        warm=st.booleans(),
        eager_commit=st.booleans(),
        segment_bytes=st.sampled_from([1024, 4096, 1 << 20]),
        max_record_bytes=st.sampled_from([1024, 1 << 20]),
    )
    def setup(  # type: ignore[override]
        self,
        size: int,
        seed: int,
        pre_vote: bool,
        check_quorum: bool,
        small_messages: bool,
        warm: bool,
        eager_commit: bool,
        segment_bytes: int,
        max_record_bytes: int,
    ) -> None:
        self.disks = WALDiskFactory(
            seed, segment_bytes=segment_bytes, max_record_bytes=max_record_bytes
        )
        _SETTING_UP.append(self.disks)
        try:
            RaftSimulation.setup(
                self, size, seed, pre_vote, check_quorum, small_messages, warm, eager_commit
            )
        finally:
            _SETTING_UP.remove(self.disks)

    @precondition(RaftSimulation.in_flight)
    @rule(p=positions, ops=cut_ops)
    @step
    def deliver_and_cut_power(self, p: int, ops: int) -> None:
        """The recipient's power fails while it persists what the message caused."""
        self.cluster.deliver(self.position(p), crash_at=DuringPersist(ops))

    @rule(n=nodes, ops=cut_ops)
    @step
    def cut_power(self, n: int, ops: int) -> None:
        """A node's power fails part way through persisting its pending Ready
        (a node holding its Ready back has one)."""
        up = self.cluster.up()
        if up:
            self.cluster.crash(up[(n - 1) % len(up)], DuringPersist(ops))

    @rule(n=nodes, keep=st.sampled_from([0, 1, 3]), ops=cut_ops)
    @step
    def compact_and_cut_power(self, n: int, keep: int, ops: int) -> None:
        self.cluster.compact(self.node(n), keep, power_cut_after=ops)

    @precondition(RaftSimulation.any_down)
    @rule(n=nodes, ops=cut_ops)
    @step
    def restart_and_cut_power(self, n: int, ops: int) -> None:
        down = [i for i in self.cluster.ids if i not in self.cluster.up()]
        self.cluster.restart(down[(n - 1) % len(down)], power_cut_after=ops)

    def await_leader(self) -> int | None:
        """Let time pass (links stay as they are) until there is a stable leader."""
        for _ in range(3 * ELECTION_TICK):
            leader = self.cluster.stable_leader()
            if leader is not None:
                return leader
            self.cluster.tick_all()
            self.cluster.stabilize(limit=20_000)
        return None

    @rule(k=st.integers(min_value=1, max_value=12), rounds=st.integers(min_value=0, max_value=6))
    @step
    def write_burst(self, k: int, rounds: int) -> None:
        """``k`` proposals at the leader (if there is one), then time passes:
        logs grow, segments roll over, compaction deletes them."""
        leader = self.await_leader()
        if leader is None:
            return
        for _ in range(k):
            self.cluster.propose(leader, self.unique("b"))
        for _ in range(rounds):
            self.cluster.tick_all()
            self.cluster.stabilize(limit=20_000)

    @rule(n=nodes, ops=cut_ops)
    @step
    def snapshot_install_with_power_cut(self, n: int, ops: int) -> None:
        """A follower misses entries the leader then compacts away; it comes
        back and its power fails part way through installing the snapshot."""
        cluster = self.cluster
        leader = self.await_leader()
        followers = [i for i in cluster.up() if i != leader]
        if leader is None or not followers:
            event("snapshot install: no leader or no follower")
            return
        target = followers[(n - 1) % len(followers)]
        cluster.crash(target)
        for _ in range(3):
            cluster.propose(leader, self.unique("s"))
        cluster.tick_all()
        cluster.stabilize(limit=20_000)
        cluster.compact(leader)
        cluster.restart(target)
        for _ in range(4 * ELECTION_TICK):
            position = cluster.network.find(last_chunk_to(target))
            if position is not None:
                event("snapshot install cut by a power failure")
                cluster.deliver(position, crash_at=DuringPersist(ops))
                return
            cluster.tick_all()
            cluster.deliver_where(lambda e: not isinstance(e.message, InstallSnapshot), 5000)
        event("snapshot install: no InstallSnapshot came")

    def may_corrupt(self) -> bool:
        cluster = self._cluster
        return cluster is not None and len(cluster.corrupted) < (len(cluster.ids) - 1) // 2

    @precondition(may_corrupt)
    @rule(n=nodes)
    @step
    def flip_bit(self, n: int) -> None:
        """Rot on at most a minority of disks: the node must refuse to start."""
        healthy = [i for i in self.cluster.ids if i not in self.cluster.corrupted]
        self.cluster.corrupt(healthy[(n - 1) % len(healthy)])

    @invariant()
    def only_rotten_disks_refuse(self) -> None:
        if self._cluster is not None:
            assert set(self._cluster.disk_failures) <= self._cluster.corrupted

    def teardown(self) -> None:
        try:
            super().teardown()
            if self._cluster is not None and self.disks is not None and not self.in_step:
                stats = self.disks.stats()
                for name in ("power_cuts", "torn_recoveries", "refusals"):
                    event(f"disk {name.replace('_', ' ')}: {_bucket(stats[name])}")
        finally:
            if self.disks is not None:
                self.disks.close()


def _bucket(n: int) -> str:
    for top in (0, 1, 3, 10, 30):
        if n <= top:
            return f"<={top}"
    return ">30"


WALDiskSimulation.TestCase.settings = settings(max_examples=EXAMPLES, stateful_step_count=STEPS)
TestWALDiskSimulation = WALDiskSimulation.TestCase


# -- seeded chaos -------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(CHAOS_SEEDS))
def test_progress_after_chaos_with_disk_faults(seed: int) -> None:
    r = random.Random(seed)
    config = Config(
        id=1,
        election_tick=r.choice([3, 5, 10]),
        pre_vote=r.random() < 0.75,
        check_quorum=r.random() < 0.75,
        max_size_per_msg=r.choice([1, 64, 1 << 20]),
        max_inflight_msgs=r.choice([1, 4, 256]),
        max_snapshot_chunk=r.choice([8, 64, 1 << 20]),
        snapshot_window=r.choice([1, 4]),
    )
    with WALDiskFactory(
        seed,
        segment_bytes=r.choice([1024, 4096, 1 << 20]),
        max_record_bytes=r.choice([1024, 1 << 20]),
    ) as factory:
        cluster = Cluster(r.choice([3, 5]), seed, config=config, disk_factory=factory)
        try:
            run_chaos(cluster, CHAOS_STEPS, profile=DISK_CHAOS)
            cluster.check_liveness(proposals=4, tag=f"after-chaos-{seed}")
        except AssertionError as exc:
            raise AssertionError(
                f"seed {seed}: {exc}\n--- trace (tail) ---\n{cluster.format_trace(300)}"
            ) from exc
        assert set(cluster.disk_failures) <= cluster.corrupted


def test_crash_points_still_work_on_wal_disks() -> None:
    with WALDiskFactory(3) as factory:
        cluster = Cluster(3, 3, config=CONFIG, disk_factory=factory)
        leader = cluster.await_leader()
        for at in CrashPoint:
            follower = next(i for i in cluster.ids if i != leader)
            cluster.propose(leader, f"p{at.value}".encode())
            position = cluster.network.find(to(follower, AppendEntries))
            if position is not None:
                cluster.deliver(position, crash_at=at)
            cluster.restart(follower)
            leader = cluster.await_leader()
        cluster.check_liveness(proposals=2)
