"""InstallSnapshot: a follower behind the leader's first index catches up from
a snapshot sent in checksummed chunks; lost or corrupt chunks and leader
changes resume or restart the transfer cleanly."""

from __future__ import annotations

import random
from collections.abc import Callable

import msgspec

from raft.core import Config, RaftCore
from raft.messages import (
    ConfState,
    InstallSnapshot,
    Message,
    Snapshot,
    SnapshotMeta,
    SnapshotResponse,
)
from raft.progress import ProgressState
from raft.ready import Role
from raft.snapshot_transfer import SnapshotReceiver, SnapshotSender
from raft.storage import MemoryStorage

Filter = Callable[[Message], Message | None]


class Cluster:
    """Three cores, a synchronous network with a message filter, and a state
    machine per node that is the list of applied payloads (the snapshot data is
    that list, encoded)."""

    def __init__(self, chunk: int = 64) -> None:
        self.ids = (1, 2, 3)
        self.storages = {i: MemoryStorage(ConfState(voters=self.ids)) for i in self.ids}
        self.cores = {i: self._make(i) for i in self.ids}
        self.applied: dict[int, list[bytes]] = {i: [] for i in self.ids}
        self.inflight: list[Message] = []
        self.filter: Filter = lambda message: message
        self.chunk = chunk
        self.sent: list[Message] = []

    def _make(self, node: int, applied: int = 0) -> RaftCore:
        config = Config(id=node, max_snapshot_chunk=getattr(self, "chunk", 64), applied=applied)
        return RaftCore(config, self.storages[node], random.Random(node))

    def drive(self, rounds: int = 50) -> None:
        for _ in range(rounds):
            busy = False
            for node, core in self.cores.items():
                while core.has_ready():
                    busy = True
                    ready = core.ready()
                    self.inflight.extend(ready.messages)
                    self.storages[node].persist(ready)
                    self.inflight.extend(ready.persisted_messages)
                    if ready.snapshot is not None:
                        self.applied[node] = list(msgspec.msgpack.decode(ready.snapshot.data))
                    self.applied[node].extend(e.data for e in ready.committed_entries if e.data)
                    core.advance(ready)
            pending, self.inflight = self.inflight, []
            for message in pending:
                busy = True
                self.sent.append(message)
                delivered = self.filter(message)
                if delivered is not None:
                    self.cores[delivered.to].step(delivered)
            if not busy:
                return

    def tick(self, times: int = 1) -> None:
        for _ in range(times):
            for core in self.cores.values():
                core.tick()
            self.drive()

    def leader(self) -> RaftCore:
        leaders = [core for core in self.cores.values() if core.role is Role.LEADER]
        assert len(leaders) == 1
        return leaders[0]

    def compact_leader(self) -> int:
        """Snapshot the leader's state machine at its applied index and drop its log."""
        leader = self.leader()
        storage = self.storages[leader.id]
        index = leader.log.applied
        meta = SnapshotMeta(index=index, term=storage.term(index), conf=ConfState(voters=self.ids))
        storage.save_snapshot(meta, msgspec.msgpack.encode(self.applied[leader.id]))
        storage.compact(index)
        return index


def isolate(node: int) -> Filter:
    return lambda m: None if node in (m.frm, m.to) else m


def lagging_cluster(chunk: int = 64, entries: int = 40) -> tuple[Cluster, int]:
    cluster = Cluster(chunk)
    cluster.cores[1].campaign()
    cluster.drive()
    cluster.filter = isolate(3)
    for n in range(entries):
        cluster.leader().propose(b"value-%03d" % n)
        cluster.drive()
    cluster.compact_leader()
    return cluster, 3


def test_follower_behind_the_first_index_catches_up_by_snapshot() -> None:
    cluster, lagging = lagging_cluster()
    cluster.filter = lambda message: message
    cluster.tick(3)
    expected = [b"value-%03d" % n for n in range(40)]
    assert cluster.applied[lagging] == expected
    chunks = [m for m in cluster.sent if isinstance(m, InstallSnapshot)]
    assert len(chunks) > 3, "the snapshot should go in several chunks"
    assert all(len(chunk.data) <= 64 for chunk in chunks)
    assert cluster.storages[lagging].snapshot_meta().index > 0
    # It then carries on replicating normally.
    cluster.leader().propose(b"after")
    cluster.drive()
    cluster.tick(1)
    assert cluster.applied[lagging][-1] == b"after"
    progress = cluster.leader().status().progress[lagging]
    assert progress.state is ProgressState.REPLICATE


def test_lost_chunks_are_resent_and_the_transfer_resumes() -> None:
    cluster, lagging = lagging_cluster()
    dropped: list[int] = []

    def lossy(message: Message) -> Message | None:
        offset = message.offset if isinstance(message, InstallSnapshot) else -1
        if offset in (64, 192) and offset not in dropped:
            dropped.append(offset)
            return None
        return message

    cluster.filter = lossy
    cluster.tick(10)
    assert dropped == [64, 192]
    assert cluster.applied[lagging] == [b"value-%03d" % n for n in range(40)]


def test_a_corrupt_chunk_is_rejected_and_never_applied() -> None:
    cluster, lagging = lagging_cluster()
    corrupted: list[int] = []

    def corrupting(message: Message) -> Message | None:
        if isinstance(message, InstallSnapshot) and message.offset == 128 and not corrupted:
            corrupted.append(message.offset)
            return msgspec.structs.replace(message, data=b"X" * len(message.data))
        return message

    cluster.filter = corrupting
    cluster.tick(10)
    assert corrupted
    rejections = [m for m in cluster.sent if isinstance(m, SnapshotResponse) and m.reject]
    assert rejections and rejections[0].offset == 128
    assert cluster.applied[lagging] == [b"value-%03d" % n for n in range(40)]


def test_a_leader_change_mid_transfer_restarts_it_cleanly() -> None:
    cluster, lagging = lagging_cluster()
    old_leader = cluster.leader().id
    # Let only the first two chunks through, then depose the leader.
    seen = 0

    def first_chunks_only(message: Message) -> Message | None:
        nonlocal seen
        if isinstance(message, InstallSnapshot):
            seen += 1
            return message if seen <= 2 else None
        return message

    cluster.filter = first_chunks_only
    cluster.drive()
    assert cluster.applied[lagging] == []
    # The other follower takes over; it must compact too, so 3 still needs a snapshot.
    other = next(i for i in cluster.ids if i not in (old_leader, lagging))
    cluster.filter = lambda message: message
    cluster.cores[old_leader].transfer_leadership(other)
    cluster.drive()
    assert cluster.leader().id == other
    cluster.compact_leader()
    cluster.tick(10)
    assert cluster.applied[lagging] == [b"value-%03d" % n for n in range(40)]


def test_receiver_rejects_gaps_and_bad_totals() -> None:
    data = bytes(range(200))
    sender = SnapshotSender(Snapshot(SnapshotMeta(index=9, term=2), data), chunk_size=50, window=8)
    chunks = sender.next_chunks(1, 2, 2)
    assert [chunk.offset for chunk in chunks] == [0, 50, 100, 150]
    assert chunks[-1].done and not chunks[0].done
    receiver = SnapshotReceiver(chunks[0])
    assert receiver.accept(chunks[0]).offset == 50
    gap = receiver.accept(chunks[2])
    assert gap.reject and gap.offset == 50
    duplicate = receiver.accept(chunks[0])
    assert not duplicate.reject and duplicate.offset == 50
    receiver.accept(chunks[1])
    finished = receiver.accept(chunks[2]), receiver.accept(chunks[3])
    assert finished[1].snapshot is not None and finished[1].snapshot.data == data


def test_sender_window_bounds_chunks_in_flight() -> None:
    data = bytes(1000)
    sender = SnapshotSender(Snapshot(SnapshotMeta(index=9, term=2), data), chunk_size=100, window=3)
    assert len(sender.next_chunks(1, 2, 2)) == 3
    assert sender.next_chunks(1, 2, 2) == []
    sender.on_response(100, reject=False)
    assert [chunk.offset for chunk in sender.next_chunks(1, 2, 2)] == [300]
    sender.on_response(150, reject=True)
    assert [chunk.offset for chunk in sender.next_chunks(1, 2, 2)] == [150, 250, 350]


def test_empty_snapshot_data_is_one_final_chunk() -> None:
    sender = SnapshotSender(Snapshot(SnapshotMeta(index=3, term=1), b""), chunk_size=10, window=2)
    chunks = sender.next_chunks(1, 2, 1)
    assert len(chunks) == 1 and chunks[0].done and chunks[0].data == b""
    result = SnapshotReceiver(chunks[0]).accept(chunks[0])
    assert result.snapshot is not None and result.snapshot.data == b""


def test_restarted_node_resumes_after_snapshot() -> None:
    cluster, lagging = lagging_cluster()
    cluster.filter = lambda message: message
    cluster.tick(3)
    storage = cluster.storages[lagging]
    snapshot = storage.snapshot()
    # Crash and restart: the driver restores from its own snapshot.
    cluster.cores[lagging] = cluster._make(lagging, applied=snapshot.meta.index)
    cluster.applied[lagging] = list(msgspec.msgpack.decode(snapshot.data))
    cluster.leader().propose(b"later")
    cluster.drive()
    cluster.tick(2)
    assert cluster.applied[lagging][-1] == b"later"
    assert cluster.applied[lagging][:40] == [b"value-%03d" % n for n in range(40)]
