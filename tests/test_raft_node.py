"""The trio driver: elections, replication, reads, snapshots and transfer, in
memory under a mock clock, and one cluster over real loopback TCP."""

from __future__ import annotations

import dataclasses
import itertools
import random
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio.testing

from raft.core import Config
from raft.errors import ProposalDropped
from raft.memory_transport import MemoryNetwork
from raft.messages import ConfState, Message
from raft.node import ApplyBatch, NodeConfig, ProposalOutcome, RaftNode
from raft.ready import Role
from raft.storage import MemoryStorage
from raft.transport import TcpTransport

IDS = (1, 2, 3)


class Applier:
    """A toy state machine: the list of applied payloads, snapshotted as a whole."""

    def __init__(self, node: RaftNode) -> None:
        self.node = node
        self.values: list[bytes] = []
        self.applied = 0
        self.changed = trio.Event()

    async def run(self) -> None:
        batch: ApplyBatch
        async for batch in self.node.committed:
            if batch.snapshot is not None:
                self.values = batch.snapshot.data.split(b"\n") if batch.snapshot.data else []
                self.applied = batch.snapshot.meta.index
            for entry in batch.entries:
                if entry.data:
                    self.values.append(entry.data)
                self.applied = entry.index
            if self.node.snapshot_due(self.applied):
                await self.node.save_snapshot(self.applied, b"\n".join(self.values))
            self.changed.set()
            self.changed = trio.Event()

    async def wait_applied(self, index: int) -> None:
        while self.applied < index:
            await self.changed.wait()


class MemoryCluster:
    def __init__(
        self, nursery: trio.Nursery, snapshot_count: int = 10_000, **node_options: Any
    ) -> None:
        self.nursery = nursery
        self.node_options = node_options
        self.network = MemoryNetwork()
        self.storages = {i: MemoryStorage(ConfState(voters=IDS)) for i in IDS}
        self.nodes: dict[int, RaftNode] = {}
        self.appliers: dict[int, Applier] = {}
        self.scopes: dict[int, trio.CancelScope] = {}
        self.snapshot_count = snapshot_count

    async def start(self, node_id: int) -> None:
        config = NodeConfig(
            raft=Config(id=node_id),
            tick_interval=0.01,
            storage_in_thread=False,
            snapshot_count=self.snapshot_count,
            snapshot_catchup_entries=2,
        )
        config = dataclasses.replace(config, **self.node_options)
        node = RaftNode(
            config,
            self.storages[node_id],
            self.network.transport(node_id),
            random.Random(node_id),
        )
        applier = Applier(node)
        scope = trio.CancelScope()

        async def run(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
            with scope:
                async with trio.open_nursery() as inner:
                    await inner.start(node.run)
                    inner.start_soon(applier.run)
                    task_status.started()

        await self.nursery.start(run)
        self.nodes[node_id], self.appliers[node_id], self.scopes[node_id] = node, applier, scope

    def stop(self, node_id: int) -> None:
        self.scopes.pop(node_id).cancel()
        del self.nodes[node_id]

    async def leader(self) -> RaftNode:
        while True:
            leaders = [n for n in self.nodes.values() if n.role is Role.LEADER]
            if len(leaders) == 1:
                return leaders[0]
            await trio.sleep(0.01)


@asynccontextmanager
async def memory_cluster(
    snapshot_count: int = 10_000, **node_options: Any
) -> AsyncIterator[MemoryCluster]:
    async with trio.open_nursery() as nursery:
        cluster = MemoryCluster(nursery, snapshot_count, **node_options)
        for node_id in IDS:
            await cluster.start(node_id)
        yield cluster
        nursery.cancel_scope.cancel()


def mock_clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0)


def test_elects_a_leader_and_replicates_through_any_member() -> None:
    async def main() -> None:
        async with memory_cluster() as cluster:
            leader = await cluster.leader()
            follower = next(n for n in cluster.nodes.values() if n is not leader)
            index = await leader.propose(b"from-leader")
            assert index is not None
            assert await follower.propose(b"from-follower") is None
            for applier in cluster.appliers.values():
                while b"from-follower" not in applier.values:
                    await applier.changed.wait()
                assert applier.values[:2] == [b"from-leader", b"from-follower"]

    trio.run(main, clock=mock_clock())


def test_read_index_reflects_every_acknowledged_write() -> None:
    async def main() -> None:
        async with memory_cluster() as cluster:
            leader = await cluster.leader()
            index = await leader.propose(b"x")
            assert index is not None
            await cluster.appliers[leader.id].wait_applied(index)
            follower = next(n for n in cluster.nodes.values() if n is not leader)
            async with trio.open_nursery() as nursery:
                results: list[int] = []

                async def read() -> None:
                    results.append(await follower.read_index())

                for _ in range(20):
                    nursery.start_soon(read)
            assert len(results) == 20 and min(results) >= index

    trio.run(main, clock=mock_clock())


def test_a_batch_of_proposals_is_appended_in_order_in_one_turn() -> None:
    async def main() -> None:
        async with memory_cluster() as cluster:
            leader = await cluster.leader()
            data = [b"b%d" % n for n in range(10)]
            outcomes = await leader.propose_batch(data)
            assert all(isinstance(index, int) for index in outcomes)
            indexes = [index for index in outcomes if isinstance(index, int)]
            assert indexes == list(range(indexes[0], indexes[0] + 10))
            applier = cluster.appliers[leader.id]
            await applier.wait_applied(indexes[-1])
            assert applier.values[-10:] == data

            follower = next(n for n in cluster.nodes.values() if n is not leader)
            assert await follower.propose_batch([b"f1", b"f2"]) == [None, None]  # forwarded
            while b"f2" not in applier.values:
                await applier.changed.wait()
            assert applier.values[-2:] == [b"f1", b"f2"]

    trio.run(main, clock=mock_clock())


def test_a_batch_proposed_without_a_leader_is_refused_item_by_item() -> None:
    async def main() -> None:
        alone = RaftNode(
            NodeConfig(raft=Config(id=1), storage_in_thread=False),
            MemoryStorage(ConfState(voters=IDS)),
            MemoryNetwork().transport(1),
            random.Random(1),
        )
        async with trio.open_nursery() as nursery:
            await nursery.start(alone.run)
            outcomes = await alone.propose_batch([b"x", b"y"])
            assert len(outcomes) == 2
            assert all(isinstance(outcome, ProposalDropped) for outcome in outcomes)
            with pytest.raises(ProposalDropped):
                await alone.propose(b"z")
            nursery.cancel_scope.cancel()

    trio.run(main, clock=mock_clock())


@pytest.mark.parametrize("delay", [None, 0.002])
def test_followers_hear_of_a_commit_within_the_broadcast_delay(delay: float | None) -> None:
    """A leader holds a new commit index back for at most
    ``commit_broadcast_delay`` (waiting for an append to carry it), then sends
    it alone: followers apply a lone write that much later than the leader,
    long before the next heartbeat; with ``None`` they apply it at once."""

    async def main() -> None:
        async with memory_cluster(tick_interval=1.0, commit_broadcast_delay=delay) as cluster:
            leader = await cluster.leader()
            await trio.sleep(0.5)  # everything before settles
            index = await leader.propose(b"lone")
            assert index is not None
            await cluster.appliers[leader.id].wait_applied(index)
            committed_at = trio.current_time()
            for node_id, applier in cluster.appliers.items():
                if node_id != leader.id:
                    await applier.wait_applied(index)
            lag = trio.current_time() - committed_at
            assert lag == pytest.approx(delay or 0.0, abs=1e-6)

    trio.run(main, clock=mock_clock())


def test_read_rounds_are_paced_and_a_lone_read_is_not_delayed() -> None:
    """Under a stream of reads, rounds start at most once per
    ``read_round_interval`` and are shared; a read after a quiet spell starts
    its round at once; every read sees every write acknowledged before it."""

    async def main() -> None:
        async with memory_cluster() as cluster:
            leader = await cluster.leader()
            interval = leader.config.read_round_interval
            assert interval > 0
            round_starts: list[float] = []
            read_index = leader.core.read_index

            def recording_read_index(context: bytes) -> None:
                round_starts.append(trio.current_time())
                read_index(context)

            leader.core.read_index = recording_read_index  # type: ignore[method-assign]
            index = await leader.propose(b"x")
            assert index is not None
            await trio.sleep(1)  # a quiet spell
            started = trio.current_time()
            assert await leader.read_index() >= index
            assert round_starts == [started]  # no pacing wait

            round_starts.clear()
            reads = 0

            async def reader(delay: float) -> None:
                nonlocal reads
                await trio.sleep(delay)
                for _ in range(20):
                    assert await leader.read_index() >= index
                    reads += 1
                    await trio.sleep(delay)

            async with trio.open_nursery() as nursery:
                for n in range(20):
                    nursery.start_soon(reader, n * interval / 20)
            assert reads == 400
            gaps = [b - a for a, b in itertools.pairwise(round_starts)]
            assert min(gaps) >= interval * 0.999
            assert len(round_starts) < reads / 5  # rounds are shared

    trio.run(main, clock=mock_clock())


def test_isolated_leader_is_replaced_and_no_write_is_lost() -> None:
    async def main() -> None:
        async with memory_cluster() as cluster:
            leader = await cluster.leader()
            for n in range(5):
                await leader.propose(b"before-%d" % n)
            cluster.network.isolate(leader.id)
            while True:
                new = await cluster.leader()
                if new is not leader and new.role is Role.LEADER:
                    break
                await trio.sleep(0.05)
            # The old leader stepped down (CheckQuorum) and refuses proposals
            # or forwards them into the void; the new one accepts.
            await new.propose(b"after")
            cluster.network.heal()
            for applier in cluster.appliers.values():
                while b"after" not in applier.values:
                    await applier.changed.wait()
                assert applier.values[:5] == [b"before-%d" % n for n in range(5)]

    trio.run(main, clock=mock_clock())


def test_restarted_member_catches_up_by_snapshot() -> None:
    async def main() -> None:
        async with memory_cluster(snapshot_count=10) as cluster:
            leader = await cluster.leader()
            lagging = next(i for i in IDS if i != leader.id)
            cluster.stop(lagging)
            for n in range(60):
                last = await leader.propose(b"v%d" % n)
            assert last is not None
            await cluster.appliers[leader.id].wait_applied(last)
            assert cluster.storages[leader.id].first_index() > 2, "leader log should be compacted"
            await cluster.start(lagging)
            applier = cluster.appliers[lagging]
            await applier.wait_applied(last)
            assert applier.values == [b"v%d" % n for n in range(60)]
            assert cluster.storages[lagging].snapshot_meta().index > 0

    trio.run(main, clock=mock_clock())


def test_leadership_transfer_and_proposals_without_leader() -> None:
    async def main() -> None:
        async with memory_cluster() as cluster:
            leader = await cluster.leader()
            target = next(i for i in IDS if i != leader.id)
            leader.transfer_leadership(target)
            while cluster.nodes[target].role is not Role.LEADER:
                await trio.sleep(0.01)
            # Cut everyone off from everyone: the leader steps down (CheckQuorum)
            # and nobody can win an election.
            for node_id in IDS:
                cluster.network.isolate(node_id)
            await trio.sleep(50 * 0.01 * 10)  # 50 election timeouts of virtual time
            with pytest.raises(ProposalDropped):
                await cluster.nodes[target].propose(b"nobody")

    trio.run(main, clock=mock_clock())


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def test_cluster_over_loopback_tcp() -> None:
    async def main() -> None:
        ports = {i: free_port() for i in IDS}
        peers = {i: ("127.0.0.1", ports[i]) for i in IDS}
        nodes: dict[int, RaftNode] = {}
        appliers: dict[int, Applier] = {}
        async with trio.open_nursery() as nursery:
            for node_id in IDS:
                transport = TcpTransport(node_id, peers[node_id], peers)
                node = RaftNode(
                    NodeConfig(
                        raft=Config(id=node_id), tick_interval=0.02, storage_in_thread=False
                    ),
                    MemoryStorage(ConfState(voters=IDS)),
                    transport,
                )
                nodes[node_id], appliers[node_id] = node, Applier(node)
                await nursery.start(node.run)
                nursery.start_soon(appliers[node_id].run)
            with trio.fail_after(10):
                for node in nodes.values():
                    await node.wait_for_leader()  # else a proposal to it is refused
                for n in range(50):
                    await nodes[1 + n % 3].propose(b"tcp-%d" % n)
                # Forwarded proposals carry no order relative to each other,
                # so wait for every value rather than for one index.
                expected = sorted(b"tcp-%d" % n for n in range(50))
                for applier in appliers.values():
                    while sorted(applier.values) != expected:
                        assert len(applier.values) <= len(expected)
                        await applier.changed.wait()
            nursery.cancel_scope.cancel()

    trio.run(main)


# -- Turns taken at once, in the caller's task ---------------------------------------------


@asynccontextmanager
async def lone_node(**options: Any) -> AsyncIterator[RaftNode]:
    """A one-voter cluster whose node is leader, applying with ``node.apply``
    (set it in the body; until then applied batches are dropped)."""
    config = NodeConfig(raft=Config(id=1), tick_interval=0.01, storage_in_thread=False)
    node = RaftNode(
        dataclasses.replace(config, **options),
        MemoryStorage(ConfState(voters=(1,))),
        MemoryNetwork().transport(1),
        random.Random(1),
    )
    node.apply = lambda batch: None
    async with trio.open_nursery() as nursery:
        await nursery.start(node.run)
        while node.role is not Role.LEADER:
            await trio.sleep(0.01)
        while node.core.log.committed < node.core.log.last_index():
            await trio.sleep(0.01)  # the new term's empty entry
        yield node
        nursery.cancel_scope.cancel()


def test_a_proposal_to_an_idle_leader_is_appended_and_applied_before_submit_returns() -> None:
    """Nothing in flight, nothing to batch with: the proposal's turn is taken
    in the caller's task (one voter, so it also commits and applies there).
    With a write in flight, the next proposal waits for the node's turn."""

    async def main() -> None:
        async with lone_node() as node:
            applied: list[bytes] = []
            node.apply = lambda batch: applied.extend(e.data for e in batch.entries)
            outcomes: list[ProposalOutcome] = []
            node.submit_batch([b"now"], outcomes.extend)
            assert len(outcomes) == 1 and isinstance(outcomes[0], int)
            assert applied == [b"now"]

            # The applier proposes in the middle of a turn: that waits for the next.
            def propose_an_echo(batch: ApplyBatch) -> None:
                for entry in batch.entries:
                    applied.append(entry.data)
                    if entry.data == b"ping":
                        node.submit_batch([b"echo"], outcomes.extend)

            node.apply = propose_an_echo
            node.submit_batch([b"ping"], outcomes.extend)
            assert applied == [b"now", b"ping"] and len(outcomes) == 2
            await trio.testing.wait_all_tasks_blocked()
            assert applied == [b"now", b"ping", b"echo"] and len(outcomes) == 3

    trio.run(main, clock=mock_clock())


class HeldMessages:
    """An inbox that keeps what it is handed."""

    def __init__(self) -> None:
        self.messages: list[Message] = []

    def deliver(self, message: Message) -> None:
        self.messages.append(message)

    def drained(self) -> None:
        pass


def test_a_drained_burst_is_stepped_in_the_transports_task() -> None:
    """What the transport hands over and then says is all (``drained``) is
    stepped, persisted and answered before ``drained`` returns, when the node
    is between turns; a commit broadcast that turn makes due still goes out
    on time (the node's task, waiting, learns the new deadline)."""

    async def main() -> None:
        async with memory_cluster(tick_interval=1.0, commit_broadcast_delay=0.002) as cluster:
            leader = await cluster.leader()
            follower = next(n for n in cluster.nodes.values() if n is not leader)
            await trio.sleep(0.5)  # everything before settles
            # The test plays the transport for the leader and one follower.
            to_follower, to_leader = HeldMessages(), HeldMessages()
            cluster.network._members[follower.id] = to_follower
            cluster.network._members[leader.id] = to_leader
            index = await leader.propose(b"x")
            assert index is not None
            (append,) = to_follower.messages
            follower.deliver(append)
            assert follower.core.log.last_index() < index  # delivering only queues
            follower.drained()
            assert cluster.storages[follower.id].last_index() == index
            (ack,) = [m for m in to_leader.messages if m.frm == follower.id]
            leader.deliver(ack)
            leader.drained()
            assert leader.core.log.committed == index
            committed_at = trio.current_time()
            cluster.network._members[follower.id] = follower
            cluster.network._members[leader.id] = leader
            await cluster.appliers[follower.id].wait_applied(index)
            assert trio.current_time() - committed_at == pytest.approx(0.002, abs=1e-6)

    trio.run(main, clock=mock_clock())


def test_a_batch_that_must_wait_for_its_fsync_is_finished_by_the_nodes_task() -> None:
    """A Ready whose persist goes to a worker thread is left to the node's
    task: the proposals are appended at once, but applied only after the
    persist (real clock: threads and a mock clock don't mix)."""

    async def main() -> None:
        async with lone_node(storage_in_thread=True) as node:
            applied: list[bytes] = []
            node.apply = lambda batch: applied.extend(e.data for e in batch.entries)
            outcomes: list[ProposalOutcome] = []
            node.submit_batch([b"a", b"b"], outcomes.extend)
            assert len(outcomes) == 2 and applied == []
            assert node.storage.last_index() < node.core.log.last_index()
            # Meanwhile, turns offered to the node only wake it.
            node.drained()
            with trio.fail_after(5):
                while applied != [b"a", b"b"]:
                    await trio.sleep(0.001)
            assert node.storage.last_index() == node.core.log.last_index()

    trio.run(main)


def test_an_error_in_a_turn_taken_at_once_stops_the_node() -> None:
    async def main() -> None:
        with pytest.raises(BaseExceptionGroup) as raised:
            async with lone_node() as node:

                def broken(batch: ApplyBatch) -> None:
                    raise RuntimeError("applier bug")

                node.apply = broken
                node.submit_batch([b"x"], lambda outcomes: None)
                await trio.sleep_forever()
        assert raised.group_contains(RuntimeError, match="applier bug", depth=None)

    trio.run(main, clock=mock_clock())
