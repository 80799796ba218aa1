"""The simulator itself: determinism, network faults, crash semantics, trace."""

from __future__ import annotations

from raft.core import Config
from raft.messages import AppendEntries, ConfState, HardState, RequestVote, VoteResponse
from raft.ready import Ready
from raft.sim import Cluster, CrashPoint, MemoryDisk, Network, run_chaos
from raft.sim.checkers import SafetyChecker


def make(size: int = 3, seed: int = 1, **config: object) -> Cluster:
    return Cluster(size, seed, config=Config(id=1, election_tick=5, **config))  # type: ignore[arg-type]


def test_same_seed_same_run() -> None:
    traces = []
    for _ in range(2):
        cluster = make(5, seed=42)
        run_chaos(cluster, 400)
        traces.append(list(cluster.trace))
    assert traces[0] == traces[1]
    other = make(5, seed=43)
    run_chaos(other, 400)
    assert list(other.trace) != traces[0]


def test_network_reorder_duplicate_drop() -> None:
    net = Network()
    for to in (2, 3, 4):
        net.send(RequestVote(frm=1, to=to, term=1, last_index=0, last_term=0))
    first, second, third = net.in_flight
    assert net.take(2) == third  # delivered out of order
    net.duplicate(0)
    assert [e.message for e in net.in_flight] == [first.message, second.message, first.message]
    assert net.in_flight[2].seq != first.seq
    net.drop(1)
    assert [e.to for e in net.in_flight] == [2, 2]
    assert (net.sent, net.delivered, net.dropped) == (3, 1, 1)


def test_symmetric_and_one_way_partitions() -> None:
    net = Network()
    net.partition({1, 2}, nodes=[1, 2, 3])
    assert {(1, 3), (3, 1), (2, 3), (3, 2)} == net.blocked
    net.heal()
    net.cut(1, 2)
    net.send(VoteResponse(frm=2, to=1, term=1, reject=False))
    net.send(VoteResponse(frm=1, to=2, term=1, reject=False))
    assert [e.frm for e in net.in_flight] == [2]  # 1->2 dropped at send
    net.cut(2, 1)
    assert net.take(0) is None  # cut while in flight: lost on delivery
    assert net.dropped == 2


def test_messages_to_a_down_node_are_lost() -> None:
    cluster = make()
    cluster.campaign(1)
    cluster.crash(2)
    cluster.deliver_where(lambda e: e.to == 2)
    assert "(n2 is down: lost)" in cluster.format_trace()
    assert not any(e.to == 2 for e in cluster.network.in_flight)


def test_leader_crash_after_send_loses_unpersisted_entries() -> None:
    cluster = make()
    leader = cluster.await_leader()
    before = cluster.nodes[leader].disk.storage.last_index()
    cluster.set_lazy(leader)
    cluster.propose(leader, b"only-on-the-wire")
    cluster.crash(leader, CrashPoint.AFTER_SEND)
    assert cluster.nodes[leader].disk.storage.last_index() == before
    sent = [e for e in cluster.network.in_flight if isinstance(e.message, AppendEntries)]
    assert sent and any(entry.data == b"only-on-the-wire" for entry in sent[0].message.entries)


def test_crash_after_persist_keeps_the_vote_but_never_sends_it() -> None:
    cluster = make(pre_vote=False)
    cluster.campaign(1)
    cluster.set_lazy(2)
    cluster.deliver_where(lambda e: e.to == 2 and isinstance(e.message, RequestVote))
    cluster.crash(2, CrashPoint.AFTER_PERSIST)
    assert cluster.nodes[2].disk.durable_hard_state().vote == 1
    assert not any(e.frm == 2 for e in cluster.network.in_flight)


def test_lazy_node_crash_loses_its_vote() -> None:
    cluster = make(pre_vote=False)
    cluster.campaign(1)
    cluster.set_lazy(2)
    cluster.deliver_where(lambda e: e.to == 2 and isinstance(e.message, RequestVote))
    assert cluster.core(2).vote == 1  # granted in memory...
    cluster.crash(2)
    assert cluster.nodes[2].disk.durable_hard_state().vote == 0  # ...never persisted
    assert not any(e.frm == 2 for e in cluster.network.in_flight)  # ...nor sent
    cluster.restart(2)
    assert cluster.core(2).vote == 0


def test_restart_reapplies_committed_entries() -> None:
    cluster = make()
    leader = cluster.await_leader()
    cluster.propose(leader, b"v")
    cluster.await_applied([b"v"])
    follower = next(i for i in cluster.ids if i != leader)
    cluster.crash(follower)
    cluster.restart(follower)
    cluster.await_applied([b"v"])
    assert cluster.nodes[follower].incarnation == 2


def test_pluggable_disk() -> None:
    persisted: list[int] = []

    class CountingDisk(MemoryDisk):
        def persist(self, ready: Ready) -> None:
            persisted.append(len(ready.entries))
            super().persist(ready)

    def factory(conf: ConfState) -> CountingDisk:
        return CountingDisk(conf)

    cluster = Cluster(3, 2, config=Config(id=1, election_tick=5), disk_factory=factory)
    cluster.check_liveness(proposals=2)
    assert sum(persisted) >= 3 * 3  # no-op + 2 proposals on every node


def test_trace_is_readable() -> None:
    cluster = make(seed=7)
    cluster.check_liveness(proposals=1, tag="t")
    text = cluster.format_trace()
    assert "deliver #" in text and "AppendEntries" in text and "tick all" in text
    assert "is leader in term" in text
    assert text.splitlines()[0].startswith("t=0 cluster of 3 nodes, seed 7")
    assert "earlier lines omitted" in cluster.format_trace(last=5)


def test_checker_sees_every_step() -> None:
    checker = SafetyChecker([1, 2, 3])
    cluster = Cluster(3, 4, config=Config(id=1, election_tick=5), checker=checker)
    run_chaos(cluster, 200)
    assert checker.checks == cluster.time  # one full check per simulated step


def test_durable_state_survives_crash() -> None:
    cluster = make()
    leader = cluster.await_leader()
    hs_before = cluster.nodes[leader].disk.durable_hard_state()
    cluster.crash(leader)
    assert cluster.nodes[leader].disk.durable_hard_state() == hs_before
    assert isinstance(hs_before, HardState) and hs_before.term >= 1


def test_lagging_follower_catches_up_by_snapshot() -> None:
    cluster = make(seed=3, max_snapshot_chunk=16, snapshot_window=2)
    leader = cluster.await_leader()
    lagging = next(i for i in cluster.ids if i != leader)
    cluster.crash(lagging)
    values = [f"v{k}".encode() for k in range(6)]
    for value in values:
        cluster.propose(leader, value)
    cluster.stabilize()
    for i in cluster.up():
        cluster.compact(i)
    assert cluster.nodes[leader].disk.storage.first_index() > 2
    cluster.restart(lagging)
    cluster.await_applied(values)
    assert cluster.snapshots_installed >= 1
    states = {
        i: [(e.index, e.term, e.data) for e in node.state] for i, node in cluster.nodes.items()
    }
    assert states[lagging] == states[leader]
    # A restart rebuilds the state machine from the node's own snapshot.
    cluster.crash(lagging)
    cluster.restart(lagging)
    assert cluster.nodes[lagging].state[: len(states[leader])] == cluster.nodes[leader].state


def test_a_follower_paused_while_probed_learns_the_commit_without_waiting_for_a_tick() -> None:
    """When a paused follower's acknowledgement arrives after the commit index
    moved on and there is nothing new to send, the leader still tells it the
    commit index at once (an empty AppendEntries), as etcd does."""
    cluster = Cluster(5, seed=8, config=Config(id=1, pre_vote=False, check_quorum=False))
    cluster.campaign(1)
    cluster.stabilize()
    assert {node.core.log.committed for node in cluster.nodes.values()} == {1}
