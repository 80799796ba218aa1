"""Backups: snapshot streams, backup files, and restoring them into a new cluster.

A real 3-member in-process cluster (disk storage, loopback TCP) holds keys
written over many revisions (overwrites, deletes, a txn, a compaction, a lease
with a key attached); a backup of it is saved once for the module.  The tests
check what the file says and that any damage to it is refused, restore it
into a new 3-member cluster and read everything back, and check the stream
itself: bounded chunks, a point-in-time copy, linearizable by default, and a
client that refuses a stream that breaks its own size or checksum.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import msgspec
import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from kvstore import api
from kvstore.api import KeyValue, ServerFrame, SnapshotInfo, SnapshotRequest, SnapshotResponse
from kvstore.backup import BackupError, CorruptBackupError, load_backup, read_header, save_backup
from kvstore.client import Client, CompactedError, InvalidRequest, NoLeaderError, Unavailable
from kvstore.commands import Command, encode_command
from kvstore.config import Address, cluster_id
from kvstore.restore import restore_backup
from kvstore.server import MAX_CONCURRENT_SNAPSHOTS
from kvstore.snapshot_client import SnapshotIntegrityError
from kvstore.snapshot_stream import chunk_bytes_for, encode
from kvstore.state_machine import KVStateMachine
from kvstore.testing import InProcessCluster, free_port, in_process_cluster
from raft.framing import FrameReader, encode_frame

TOKEN = "restored"


@dataclass(frozen=True)
class Source:
    """What the backed-up cluster held when the backup was saved."""

    path: Path
    kvs: list[KeyValue]
    revision: int
    compact_revision: int
    history_revision: int
    """A revision after the compaction, to read history at."""
    history: list[KeyValue]
    lease: int
    cluster_id: int
    peers: dict[str, Address]


def all_keys(client: Client, revision: int = 0) -> Awaitable[api.RangeResponse]:
    return client.get(b"\0", from_key=True, revision=revision)


async def populate(client: Client) -> tuple[int, int, int]:
    """Write a history with overwrites, deletes, a txn, a compaction and a
    lease; answer (lease id, compacted revision, a revision after it)."""
    await client.put("a/1", "first")
    await client.put("a/2", "x")
    await client.put("b/1", "doomed")
    await client.put("a/1", "second")
    compact_revision = (await client.put("a/2", "y")).header.revision
    await client.delete("b/1")
    await client.compact(compact_revision)
    history_revision = (await client.put("a/1", "third")).header.revision
    await client.txn([], [api.PutRequest(key=b"c/1", value=b"1"), api.PutRequest(key=b"c/2")])
    lease = await client.lease_grant(600)
    await client.put("l/1", "leased", lease=lease.id)
    for n in range(300):
        await client.put(f"k/{n:04d}", bytes([n % 256]) * 100)
    await client.delete("k/0007")
    return lease.id, compact_revision, history_revision


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Source:
    path = tmp_path_factory.mktemp("backup") / "backup.db"

    async def main() -> Source:
        async with in_process_cluster(3) as cluster, cluster.client() as client:
            lease, compact_revision, history_revision = await populate(client)
            # The old cluster's member table (now with a learner) is in the
            # backup; a restored cluster must not inherit it.
            await client.member_add("spare", "127.0.0.1:9", learner=True)
            everything = await all_keys(client)
            history = await all_keys(client, history_revision)
            header = await save_backup(client, path, chunk_bytes=4096)
            assert header.revision == everything.header.revision
            return Source(
                path=path,
                kvs=everything.kvs,
                revision=everything.header.revision,
                compact_revision=compact_revision,
                history_revision=history_revision,
                history=history.kvs,
                lease=lease,
                cluster_id=everything.header.cluster_id,
                peers=dict(cluster.peers),
            )

    return trio.run(main)


def copy_of(source: Source, directory: Path) -> Path:
    path = directory / "copy.db"
    shutil.copyfile(source.path, path)
    return path


# -- The backup file ----------------------------------------------------------------------


def test_backup_header_describes_the_state(source: Source) -> None:
    backup = load_backup(source.path)
    header = backup.header
    assert header.revision == source.revision
    assert header.keys == len(source.kvs) == 304
    assert header.compact_revision == source.compact_revision
    assert header.cluster_id == source.cluster_id
    assert header.sha256 == hashlib.sha256(backup.payload).digest()
    assert header.payload_size == len(backup.payload)
    assert backup.file_size == source.path.stat().st_size
    state = KVStateMachine.from_snapshot(backup.payload)
    assert state.applied_index == header.raft_index > 0
    assert header.raft_term >= 1
    live = state.read(api.RangeRequest(key=b"\0", range_end=b"\0"))
    assert isinstance(live, api.RangeResponse) and live.kvs == source.kvs
    assert not list(source.path.parent.glob("*.part")), "the temporary file is gone"


def flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def damages(path: Path) -> dict[str, Callable[[], None]]:
    """Ways to damage the backup at ``path`` (each applied to a fresh copy)."""
    _, offset = read_header(path)
    size = path.stat().st_size

    def truncate(to: int) -> Callable[[], None]:
        return lambda: os.truncate(path, to)

    return {
        "magic": lambda: flip(path, 0),
        "version": lambda: flip(path, 8),
        "header": lambda: flip(path, offset - 3),
        "payload start": lambda: flip(path, offset + 2),
        "payload middle": lambda: flip(path, (offset + size) // 2),
        "payload end": lambda: flip(path, size - 1),
        "truncated payload": truncate(size - 1),
        "truncated header": truncate(offset - 1),
        "empty": truncate(0),
        "extended": lambda: path.write_bytes(path.read_bytes() + b"\0"),
    }


DAMAGES = [
    "magic",
    "version",
    "header",
    "payload start",
    "payload middle",
    "payload end",
    "truncated payload",
    "truncated header",
    "empty",
    "extended",
]


@pytest.mark.parametrize("damage", DAMAGES)
def test_damaged_backup_is_refused_by_status_and_restore(
    source: Source, tmp_path: Path, damage: str
) -> None:
    path = copy_of(source, tmp_path)
    damages(path)[damage]()
    with pytest.raises(CorruptBackupError, match="corrupt backup file"):
        load_backup(path)
    target = tmp_path / "restore" / "n1"
    with pytest.raises(CorruptBackupError):
        restore_backup(
            path,
            name="n1",
            data_dir=target,
            initial_cluster={"n1": ("127.0.0.1", 1)},
            cluster_token=TOKEN,
        )
    assert not target.exists()
    assert not (tmp_path / "restore").exists() or not any((tmp_path / "restore").iterdir())


def test_not_a_backup_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("hello, this is not a backup at all\n")
    with pytest.raises(CorruptBackupError, match="bad magic"):
        load_backup(path)


# -- Restoring ----------------------------------------------------------------------------


def test_restore_into_a_new_cluster_serves_every_key(source: Source, tmp_path: Path) -> None:
    root = tmp_path / "new"

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            cluster = InProcessCluster(nursery, 3, root, tick_interval=0.02, cluster_token=TOKEN)
            for name in cluster.names:
                restored = restore_backup(
                    source.path,
                    name=name,
                    data_dir=root / name,
                    initial_cluster=cluster.peers,
                    cluster_token=TOKEN,
                )
                assert restored.cluster_id == cluster.config(name).cluster_id
                assert restored.member_id == cluster.config(name).member_id
            for name in cluster.names:
                await cluster.start(name)
            await cluster.leader()
            for endpoint in cluster.endpoints:  # every member serves it all
                async with Client([endpoint]) as client:
                    everything = await all_keys(client)
                    assert everything.kvs == source.kvs
                    assert everything.header.revision == source.revision
                    assert everything.header.cluster_id != source.cluster_id
            async with cluster.client() as client:
                history = await all_keys(client, source.history_revision)
                assert history.kvs == source.history
                with pytest.raises(CompactedError):
                    await all_keys(client, source.compact_revision - 1)
                assert source.lease in (await client.lease_leases()).leases
                ttl = await client.lease_time_to_live(source.lease, keys=True)
                assert ttl.ttl > 0 and ttl.keys == [b"l/1"]
                put = await client.put("after/restore", "new")
                assert put.header.revision == source.revision + 1
                status = await client.status()
                assert status.compact_revision == source.compact_revision
                members = (await client.member_list()).members
                assert sorted(m.name for m in members) == sorted(cluster.names)
                assert not any(m.is_learner for m in members)
            nursery.cancel_scope.cancel()

    trio.run(main)


def test_restore_refuses_the_old_clusters_identity(source: Source, tmp_path: Path) -> None:
    assert cluster_id("kvstore", source.peers) == source.cluster_id
    target = tmp_path / "n1"
    with pytest.raises(BackupError, match="initial-cluster-token"):
        restore_backup(source.path, name="n1", data_dir=target, initial_cluster=source.peers)
    assert not target.exists()


def test_restore_refuses_a_non_empty_data_dir(source: Source, tmp_path: Path) -> None:
    target = tmp_path / "n1"
    target.mkdir()
    (target / "keep.txt").write_text("precious")
    peers = {"n1": ("127.0.0.1", 1)}
    with pytest.raises(BackupError, match="not empty"):
        restore_backup(source.path, name="n1", data_dir=target, initial_cluster=peers)
    assert [p.name for p in target.iterdir()] == ["keep.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["n1"], "no scratch left behind"


def test_restore_into_an_empty_existing_dir(source: Source, tmp_path: Path) -> None:
    target = tmp_path / "n1"
    target.mkdir()
    peers = {"n1": ("127.0.0.1", 1)}
    restored = restore_backup(source.path, name="n1", data_dir=target, initial_cluster=peers)
    assert (target / "raft" / "snap").is_dir() and (target / "raft" / "wal").is_dir()
    assert restored.raft_index == load_backup(source.path).header.raft_index
    assert sorted(p.name for p in tmp_path.iterdir()) == ["n1"]


def test_single_member_restore_starts_alone(source: Source, tmp_path: Path) -> None:
    async def main() -> None:
        async with trio.open_nursery() as nursery:
            cluster = InProcessCluster(
                nursery, 1, tmp_path, tick_interval=0.02, cluster_token=TOKEN
            )
            restore_backup(
                source.path,
                name="n1",
                data_dir=tmp_path / "n1",
                initial_cluster=cluster.peers,
                cluster_token=TOKEN,
            )
            await cluster.start("n1")
            await cluster.leader()
            async with cluster.client() as client:
                assert (await all_keys(client)).kvs == source.kvs
                await client.put("x", "y")
            # It restarts from its own WAL and snapshot, not the backup's.
            await cluster.kill("n1")
            await cluster.start("n1")
            await cluster.leader()
            async with cluster.client() as client:
                assert (await client.get("x")).kvs[0].value == b"y"
                assert (await all_keys(client)).header.revision == source.revision + 1
            nursery.cancel_scope.cancel()

    trio.run(main)


# -- The stream -----------------------------------------------------------------------------


def test_chunk_size_is_bounded() -> None:
    assert chunk_bytes_for(SnapshotRequest()) == api.SNAPSHOT_CHUNK_BYTES
    assert chunk_bytes_for(SnapshotRequest(chunk_bytes=10)) == 10
    huge = SnapshotRequest(chunk_bytes=1 << 40)
    assert chunk_bytes_for(huge) == api.MAX_SNAPSHOT_CHUNK_BYTES < api.MAX_FRAME_BYTES
    assert isinstance(chunk_bytes_for(SnapshotRequest(chunk_bytes=-1)), api.Error)


def test_stream_is_chunked_point_in_time_and_linearizable() -> None:
    async def main() -> None:
        async with in_process_cluster(3) as cluster:
            leader = await cluster.leader()
            follower = next(n for n in cluster.names if n != leader)
            follower_endpoint = cluster.endpoints[cluster.names.index(follower)]
            async with cluster.client() as client, Client([follower_endpoint]) as other:
                for n in range(50):
                    await client.put(f"key/{n}", "v" * 200)
                # Written through the leader, copied by a follower: still there.
                written = await client.put("last", "write")
                received = bytearray()
                sizes = []
                async with other.snapshot(chunk_bytes=1000) as download:
                    info = download.info
                    assert info is not None
                    assert info.revision == written.header.revision
                    assert download.endpoint == follower_endpoint
                    async for chunk in download:
                        if not received:
                            # The copy was taken: later writes are not in it.
                            await client.put("later", "not in the snapshot")
                        sizes.append(len(chunk))
                        received += chunk
                assert len(sizes) > 10 and max(sizes) <= 1000
                assert len(received) == info.size
                assert download.sha256 == hashlib.sha256(received).digest()
                state = KVStateMachine.from_snapshot(bytes(received))
                assert state.status().revision == written.header.revision
                assert state.status().keys == 51
                with pytest.raises(InvalidRequest, match="chunk_bytes"):
                    async with other.snapshot(chunk_bytes=-5):
                        pass

    trio.run(main)


def test_snapshot_without_a_leader() -> None:
    """Linearizable by default, so a member cut off from its quorum refuses;
    ``serializable`` copies what it has."""

    async def main() -> None:
        async with in_process_cluster(3) as cluster:
            async with cluster.client() as client:
                await client.put("k", "v")
            survivor = cluster.names[0]
            for name in cluster.names[1:]:
                await cluster.kill(name)
            endpoint = cluster.endpoints[0]
            async with Client([endpoint], request_timeout=1.0) as client:
                node = cluster.members[survivor].node
                assert node is not None
                with trio.fail_after(10):
                    while node.leader != 0:
                        await trio.sleep(0.02)
                with pytest.raises((NoLeaderError, Unavailable)):
                    async with client.snapshot():
                        pass
                received = bytearray()
                async with client.snapshot(serializable=True) as download:
                    async for chunk in download:
                        received += chunk
                state = KVStateMachine.from_snapshot(bytes(received))
                read = state.read(api.RangeRequest(key=b"k"))
                assert isinstance(read, api.RangeResponse) and read.kvs[0].value == b"v"

    trio.run(main)


# -- A client that checks what it gets ------------------------------------------------------

PAYLOAD = b"p" * 2500
INFO = SnapshotInfo(
    raft_index=3, raft_term=1, revision=2, compact_revision=0, keys=1, size=len(PAYLOAD), format=1
)
HEADER = api.ResponseHeader(cluster_id=1, member_id=2, revision=2)


def good_stream() -> list[SnapshotResponse]:
    chunks = [PAYLOAD[i : i + 1000] for i in range(0, len(PAYLOAD), 1000)]
    messages = [SnapshotResponse(header=HEADER, info=INFO, remaining_bytes=len(PAYLOAD))]
    sent = 0
    for chunk in chunks:
        sent += len(chunk)
        messages.append(
            SnapshotResponse(header=HEADER, blob=chunk, remaining_bytes=len(PAYLOAD) - sent)
        )
    digest = hashlib.sha256(PAYLOAD).digest()
    return [*messages, SnapshotResponse(header=HEADER, sha256=digest)]


def bad_streams() -> dict[str, tuple[list[SnapshotResponse], type[Exception]]]:
    good = good_stream()
    wrong_digest = msgspec.structs.replace(good[-1], sha256=b"\1" * 32)
    flipped = msgspec.structs.replace(good[2], blob=b"q" + good[2].blob[1:])
    return {
        "wrong digest": ([*good[:-1], wrong_digest], SnapshotIntegrityError),
        "flipped chunk": ([good[0], good[1], flipped, *good[3:]], SnapshotIntegrityError),
        "missing chunk": ([good[0], good[1], *good[3:]], SnapshotIntegrityError),
        "repeated chunk": ([good[0], good[1], good[1], *good[2:]], SnapshotIntegrityError),
        "cut short": (good[:3], Unavailable),
        "no info": (good[1:], SnapshotIntegrityError),
    }


async def fake_member(
    messages: list[SnapshotResponse], *, task_status: trio.TaskStatus[str]
) -> None:
    """A member that answers one snapshot request with ``messages``, then hangs up."""

    async def serve(stream: trio.SocketStream) -> None:
        payload = await FrameReader(stream, api.MAX_FRAME_BYTES).read()
        assert payload is not None
        request_id = api.decode_client_frame(payload).request_id
        try:
            for message in messages:
                await stream.send_all(encode_frame(api.encode(ServerFrame(request_id, message))))
        except trio.BrokenResourceError:
            pass  # the client saw enough and hung up
        await stream.aclose()

    port = free_port()
    listeners = await trio.open_tcp_listeners(port, host="127.0.0.1")
    task_status.started(f"127.0.0.1:{port}")
    await trio.serve_listeners(serve, listeners)


@pytest.mark.parametrize("case", list(bad_streams()))
def test_client_refuses_a_broken_stream(case: str, tmp_path: Path) -> None:
    messages, error = bad_streams()[case]
    target = tmp_path / "backup.db"
    target.write_bytes(b"the previous backup")

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            endpoint = await nursery.start(fake_member, messages)
            async with Client([endpoint], request_timeout=2.0) as client:
                with pytest.raises(error):
                    await save_backup(client, target)
            nursery.cancel_scope.cancel()

    trio.run(main)
    assert target.read_bytes() == b"the previous backup"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["backup.db"]


def test_client_accepts_a_good_stream(tmp_path: Path) -> None:
    async def main() -> None:
        async with trio.open_nursery() as nursery:
            endpoint = await nursery.start(fake_member, good_stream())
            async with Client([endpoint]) as client, client.snapshot() as download:
                received = b"".join([chunk async for chunk in download])
            assert received == PAYLOAD and download.info == INFO
            assert download.sha256 == hashlib.sha256(PAYLOAD).digest()
            nursery.cancel_scope.cancel()

    trio.run(main)


def test_save_fails_over_to_a_live_member(tmp_path: Path) -> None:
    async def main() -> None:
        async with in_process_cluster(3) as cluster:
            async with cluster.client() as client:
                await client.put("k", "v")
            dead = f"127.0.0.1:{free_port()}"
            async with Client([dead, *cluster.endpoints]) as client:
                header = await save_backup(client, tmp_path / "b.db")
            assert header.keys == 1
            assert load_backup(tmp_path / "b.db").header == header

    trio.run(main)


# -- Encoding a copy a step at a time --------------------------------------------------------


def machine_with(puts: int) -> KVStateMachine:
    machine = KVStateMachine()
    for n in range(puts):
        command = Command(1, n, api.PutRequest(key=b"k%d" % (n % 50), value=b"v%d" % n))
        machine.apply(n + 1, encode_command(command))
    if puts > 10:
        command = Command(1, puts, api.CompactionRequest(revision=puts // 2))
        machine.apply(puts + 1, encode_command(command))
    return machine


@pytest.mark.parametrize("puts", [0, 1, 14, 15, 16, 17, 300, 70_000])
def test_encoding_in_steps_gives_the_same_bytes(puts: int) -> None:
    machine = machine_with(puts)
    copy = machine.capture()
    expected = machine.snapshot()
    assert copy.encode() == expected
    for step in (1, 7, 4096) if puts < 1000 else (4096, 65_536, 100_000):
        steps = copy.encode_in_steps(step)
        count = 0
        while True:
            try:
                next(steps)
                count += 1
            except StopIteration as done:
                assert done.value == expected
                break
        assert count == -(-copy.versions // step)
    # Writes after the copy do not change it.
    machine.apply(puts + 5, encode_command(Command(1, 10**6, api.PutRequest(key=b"new"))))
    assert trio.run(encode, copy) == expected != machine.snapshot()


def test_a_member_serves_a_bounded_number_of_snapshots_at_once() -> None:
    """Each stream holds a copy of the state; further ones wait for a slot."""

    async def main() -> None:
        async with in_process_cluster(1) as cluster:
            async with cluster.client() as client:
                await client.put("k", "v")
            member = cluster.members["n1"]
            streams = [member.snapshot(SnapshotRequest()) for _ in range(MAX_CONCURRENT_SNAPSHOTS)]
            for stream in streams:  # each has taken its copy and sent its info
                first = await anext(stream)
                assert isinstance(first, SnapshotResponse) and first.info is not None
            waiting = member.snapshot(SnapshotRequest())
            started = trio.Event()

            async def third() -> None:
                first = await anext(waiting)
                assert isinstance(first, SnapshotResponse) and first.info is not None
                started.set()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(third)
                await trio.testing.wait_all_tasks_blocked(0.005)
                assert not started.is_set(), "a stream beyond the limit started"
                await streams[0].aclose()
                with trio.fail_after(5):
                    await started.wait()
            for stream in [*streams[1:], waiting]:
                await stream.aclose()

    trio.run(main)


def test_clients_that_hang_up_mid_stream_free_their_slots() -> None:
    """Clients that vanish mid-stream cost the member nothing lasting: it keeps
    serving, and their slots are free for the next backup."""

    async def main() -> None:
        async with in_process_cluster(1) as cluster, cluster.client() as client:
            for n in range(12):  # a payload larger than the sockets' buffers
                await client.put(f"big/{n}", bytes([n]) * 1_000_000)
            for _ in range(MAX_CONCURRENT_SNAPSHOTS + 1):
                async with client.snapshot(chunk_bytes=65_536) as download:
                    async for _chunk in download:
                        break  # leaving the block hangs up
            with trio.fail_after(20):
                received = 0
                async with client.snapshot() as download:
                    async for chunk in download:
                        received += len(chunk)
            assert download.info is not None and received == download.info.size
            assert (await client.get("big/3")).kvs[0].value == b"\3" * 1_000_000

    trio.run(main)


@given(data=st.data())
@settings(max_examples=60)
def test_any_flipped_bit_or_truncation_is_caught(source: Source, data: st.DataObject) -> None:
    original = source.path.read_bytes()
    damaged = bytearray(original)
    if data.draw(st.booleans(), label="truncate"):
        damaged = damaged[: data.draw(st.integers(0, len(original) - 1), label="length")]
    else:
        offset = data.draw(st.integers(0, len(original) - 1), label="offset")
        damaged[offset] ^= 1 << data.draw(st.integers(0, 7), label="bit")
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "damaged.db"
        path.write_bytes(bytes(damaged))
        with pytest.raises(CorruptBackupError):
            load_backup(path)
