"""Seeded random fault schedules for a simulated cluster.

:func:`run_chaos` draws every action from one ``random.Random``, so a seed
replays the schedule exactly; :class:`ChaosProfile` weighs the actions.  The
liveness phase that should follow is :meth:`Cluster.check_liveness`.

Disk faults (power cuts part way through a persist, a snapshot save or a
recovery; bit flips on at most a minority of nodes) have weight 0 by default,
so the default schedules stay what they were; :data:`DISK_CHAOS` turns them on
for a cluster on :class:`~raft.sim.wal_disk.WALDisk` disks.
"""

from __future__ import annotations

import dataclasses
import random

from raft.sim.cluster import Cluster, CrashPoint, DuringPersist


@dataclasses.dataclass(frozen=True)
class ChaosProfile:
    """Relative weights of the actions :func:`run_chaos` picks from."""

    deliver: int = 40
    drop: int = 4
    duplicate: int = 3
    tick: int = 25
    propose: int = 8
    read: int = 4
    crash: int = 2
    restart: int = 3
    partition: int = 2
    heal: int = 2
    transfer: int = 1
    campaign: int = 1
    lazy: int = 2
    process: int = 3
    compact: int = 2
    deliver_crash: int = 1
    # Disk faults (off by default; new actions go last so old seeds replay).
    power_cut: int = 0
    """Crash part way through a persist (the recipient of a message, or a node
    holding its Ready)."""
    compact_cut: int = 0
    """Crash part way through a snapshot save."""
    restart_cut: int = 0
    """Crash part way through a down node's recovery."""
    bit_flip: int = 0
    """Flip a bit on a node's disk (never on a majority of the nodes)."""


MAX_CUT_OPS = 12
"""Power cuts hit after 0..MAX_CUT_OPS-1 disk operations: enough to reach every
step of a snapshot install (file, rename, directory sync, WAL records, prune)."""


DISK_CHAOS = ChaosProfile(
    deliver=500,
    drop=10,
    duplicate=10,
    tick=350,
    propose=150,
    read=30,
    crash=5,
    restart=40,
    partition=5,
    heal=30,
    transfer=3,
    campaign=2,
    lazy=10,
    process=30,
    compact=25,
    deliver_crash=5,
    power_cut=12,
    compact_cut=5,
    restart_cut=5,
    bit_flip=1,
)
"""For a cluster on :class:`~raft.sim.wal_disk.WALDisk` disks: power cuts part
way through persists, snapshot saves, snapshot installs and recoveries, bit
flips (about one per 1,500 steps, never on a majority), with enough calm in
between for logs to grow past segment sizes, snapshots to be taken and
installed, and torn tails to be recovered."""


def run_chaos(
    cluster: Cluster,
    steps: int,
    rng: random.Random | None = None,
    profile: ChaosProfile = ChaosProfile(),
    tag: str = "c",
) -> int:
    """Apply ``steps`` random actions (faults included) to ``cluster``.

    Everything is drawn from ``rng`` (by default the cluster's own), so a seed
    replays the schedule.  Returns how many proposals were made.
    """
    rng = rng or cluster.rng
    weights = dataclasses.asdict(profile)
    actions = list(weights)
    cum = [weights[a] for a in actions]
    ids = cluster.ids
    proposals = 0
    for step in range(steps):
        action = rng.choices(actions, cum)[0]
        node = rng.choice(ids)
        in_flight = len(cluster.network.in_flight)
        if action == "deliver" and in_flight:
            # A burst, mostly near the front (roughly FIFO), sometimes anywhere (reorder).
            for _ in range(rng.randint(1, 2 * len(ids))):
                in_flight = len(cluster.network.in_flight)
                if not in_flight:
                    break
                if rng.random() < 0.8:
                    cluster.deliver(rng.randrange(min(in_flight, 3)))
                else:
                    cluster.deliver(rng.randrange(in_flight))
        elif action == "deliver_crash" and in_flight:
            cluster.deliver(rng.randrange(in_flight), crash_at=CrashPoint(rng.randrange(4)))
        elif action == "drop" and in_flight:
            cluster.drop(rng.randrange(in_flight))
        elif action == "duplicate" and in_flight:
            cluster.duplicate(rng.randrange(in_flight))
        elif action == "tick":
            if rng.random() < 0.5:
                cluster.tick_all()
            else:
                cluster.tick(node, rng.randint(1, 3))
        elif action == "propose":
            proposals += 1
            cluster.propose(node, f"{tag}{step}".encode())
        elif action == "read":
            cluster.read_index(node, f"r{tag}{step}".encode())
        elif action == "crash" and len(cluster.up()) > 0:
            cluster.crash(node, CrashPoint(rng.randrange(4)))
        elif action == "restart":
            cluster.restart(node)
        elif action == "partition":
            if rng.random() < 0.3:
                cluster.cut(node, rng.choice([i for i in ids if i != node]))
            else:
                group = [i for i in ids if rng.random() < 0.5]
                cluster.partition(group)
        elif action == "heal":
            cluster.heal()
        elif action == "transfer":
            cluster.transfer_leadership(node, rng.choice(ids))
        elif action == "campaign":
            cluster.campaign(node)
        elif action == "lazy":
            cluster.set_lazy(node, rng.random() < 0.6)
        elif action == "process":
            cluster.process(node)
        elif action == "compact":
            cluster.compact(node, keep=rng.choice([0, 0, 1, 3]))
        elif action == "power_cut":
            at = DuringPersist(rng.randrange(MAX_CUT_OPS))
            if in_flight and rng.random() < 0.7:
                cluster.deliver(rng.randrange(in_flight), crash_at=at)
            elif cluster.up():
                cluster.crash(node, at)
        elif action == "compact_cut":
            keep = rng.choice([0, 1])
            cluster.compact(node, keep=keep, power_cut_after=rng.randrange(MAX_CUT_OPS))
        elif action == "restart_cut" and node not in cluster.up():
            cluster.restart(node, power_cut_after=rng.randrange(MAX_CUT_OPS))
        elif (
            action == "bit_flip"
            and node not in cluster.corrupted
            and len(cluster.corrupted) < (len(ids) - 1) // 2
        ):
            cluster.corrupt(node)
    return proposals
