"""Liveness in the simulator: after the faults stop, the cluster makes progress.

TigerBeetle-style two phases: a seeded random schedule of faults (drops,
duplicates, reordering, crashes also half way through a Ready, partitions
symmetric and one-way, leadership transfers, forced campaigns) with every
safety checker running after each step; then everything is healed (crashed
nodes restart, links are restored, faults stop) and, with reliable delivery and
ticks, a leader must be elected within ten election timeouts and every
proposal made after healing must be applied on every node.

``KVSTORE_LIVENESS_SEEDS`` (default 100) sets how many seeded schedules run.
"""

from __future__ import annotations

import os
import random

import pytest

from raft.core import Config
from raft.messages import AppendEntries, Heartbeat
from raft.ready import Role
from raft.sim import ChaosProfile, Cluster, run_chaos

SEEDS = int(os.environ.get("KVSTORE_LIVENESS_SEEDS", "100"))
CHAOS_STEPS = 600

PROFILES = {
    "default": ChaosProfile(),
    "calm": ChaosProfile(
        drop=1, duplicate=1, crash=1, restart=2, partition=1, heal=3, lazy=1, campaign=0
    ),
    "stormy": ChaosProfile(
        drop=8, duplicate=8, crash=4, restart=4, partition=4, lazy=4, transfer=3, campaign=3
    ),
}


def scenario(seed: int) -> tuple[Cluster, ChaosProfile]:
    """Everything about a run follows from its seed: size, config, fault profile."""
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
    profile = PROFILES[r.choice(sorted(PROFILES))]
    return Cluster(r.choice([3, 5]), seed, config=config), profile


@pytest.mark.parametrize("seed", range(SEEDS))
def test_progress_after_chaos(seed: int) -> None:
    cluster, profile = scenario(seed)
    try:
        run_chaos(cluster, CHAOS_STEPS, profile=profile)
        cluster.check_liveness(proposals=4, tag=f"after-chaos-{seed}")
    except AssertionError as exc:
        raise AssertionError(
            f"seed {seed}: {exc}\n--- trace (tail) ---\n{cluster.format_trace(300)}"
        ) from exc


@pytest.mark.parametrize("size", [1, 3, 5])
@pytest.mark.parametrize("pre_vote", [False, True])
def test_cold_start_elects_within_bound(size: int, pre_vote: bool) -> None:
    for seed in range(20):
        config = Config(id=1, election_tick=10, pre_vote=pre_vote)
        cluster = Cluster(size, seed, config=config)
        leader = cluster.await_leader()
        assert cluster.core(leader).role is Role.LEADER
        # From a cold start nobody can win before the first election timeout.
        assert cluster.time >= 10


def test_isolated_leader_is_replaced_and_rejoins() -> None:
    cluster = Cluster(5, seed=3, config=Config(id=1, election_tick=5))
    old = cluster.await_leader()
    cluster.isolate(old)
    cluster.propose(old, b"lost-in-minority")
    others = [i for i in cluster.ids if i != old]

    def new_leader() -> bool:
        leaders = [i for i in others if cluster.core(i).role is Role.LEADER]
        return bool(leaders)

    cluster.run_until(new_leader, cluster.election_bound(), "electing a leader in the majority")
    # CheckQuorum: the isolated leader steps down on its own.
    cluster.run_until(
        lambda: cluster.core(old).role is not Role.LEADER, 20, "old leader stepping down"
    )
    cluster.check_liveness(proposals=3, tag="rejoined")
    assert all(b"lost-in-minority" not in cluster.nodes[i].applied_data for i in cluster.ids)


def test_one_way_partition_does_not_block_progress_forever() -> None:
    # The leader can still send to everyone but hears nothing back.
    cluster = Cluster(3, seed=5, config=Config(id=1, election_tick=5))
    leader = cluster.await_leader()
    for other in cluster.ids:
        if other != leader:
            cluster.cut(other, leader)
    cluster.propose(leader, b"unacknowledged")
    for _ in range(4 * cluster.election_bound() // 10):
        cluster.tick_all()
        cluster.stabilize()
    cluster.check_liveness(proposals=3, tag="one-way")


def test_follower_crash_mid_ready_and_restart_catches_up() -> None:
    cluster = Cluster(3, seed=9, config=Config(id=1, election_tick=5))
    leader = cluster.await_leader()
    follower = next(i for i in cluster.ids if i != leader)
    cluster.set_lazy(follower)
    cluster.propose(leader, b"a")
    cluster.deliver_where(lambda e: e.to == follower and isinstance(e.message, AppendEntries))
    assert cluster.core(follower).has_ready()
    cluster.crash(follower)
    assert cluster.nodes[follower].disk.storage.last_index() < cluster.core(leader).log.last_index()
    cluster.restart(follower)
    cluster.await_applied([b"a"])


def test_heartbeats_flow_in_a_healthy_cluster() -> None:
    cluster = Cluster(3, seed=1, config=Config(id=1, election_tick=5))
    leader = cluster.await_leader()
    cluster.tick(leader)
    assert any(isinstance(e.message, Heartbeat) for e in cluster.network.in_flight)
    cluster.stabilize()
    assert cluster.stable_leader() == leader
