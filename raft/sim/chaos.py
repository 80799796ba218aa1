"""Seeded random fault schedules for a simulated cluster.

:func:`run_chaos` draws every action from one ``random.Random``, so a seed
replays the schedule exactly; :class:`ChaosProfile` weighs the actions.  The
liveness phase that should follow is :meth:`Cluster.check_liveness`.
"""

from __future__ import annotations

import dataclasses
import random

from raft.sim.cluster import Cluster, CrashPoint


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
    return proposals
