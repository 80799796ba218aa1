"""Property-based safety (and liveness) tests of the Raft core in the simulator.

A Hypothesis ``RuleBasedStateMachine`` drives a simulated 3- or 5-node cluster
(PreVote and CheckQuorum each on or off, normal or one-entry-per-message flow
control, commit indexes broadcast at once or deferred) through any
interleaving of: message delivery in any order (by position, by link, oldest
first), drops, duplicates, ticks (one node, skewed, or all), crashes (also
half way through a Ready, or while handling a message), restarts, nodes that
hold their Ready back, symmetric and one-way partitions, proposals, ReadIndex
requests, leadership transfers, forced campaigns, deferred commit broadcasts
and log compaction (so lagging followers catch up by InstallSnapshot).  After
every simulated step all the safety checkers of :mod:`raft.sim.checkers` run.
At the end of every run the cluster is healed and must elect a leader, apply
new proposals everywhere and answer a read on every node within ten election
timeouts (the liveness phase).

Sizing: ``KVSTORE_PROPERTY_EXAMPLES`` (default 800) examples of up to
``KVSTORE_PROPERTY_STEPS`` (default 100) rules each (a rule may be many
simulated steps).  ``--hypothesis-show-statistics`` shows how far runs get
(leaders elected, commit index reached, entries applied, reads answered,
snapshots installed).  On failure the shrunk schedule is printed as Hypothesis
steps followed by the simulator's trace and the final state of every node.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any, TypeVar

from hypothesis import event, note, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from raft.core import Config, RaftCore
from raft.sim import ALL_PROPERTIES, Cluster, CrashPoint, MemoryDisk, SafetyChecker
from raft.sim.cluster import CoreFactory, DiskFactory

EXAMPLES = int(os.environ.get("KVSTORE_PROPERTY_EXAMPLES", "800"))
STEPS = int(os.environ.get("KVSTORE_PROPERTY_STEPS", "100"))
ELECTION_TICK = 5
TRACE_LINES = 400

F = TypeVar("F", bound=Callable[..., Any])

nodes = st.integers(min_value=1, max_value=5)
positions = st.integers(min_value=0, max_value=63)


def step(fn: F) -> F:
    """Mark the machine broken while a step runs, so teardown can tell a
    failed run (skip the liveness phase, print the trace) from a finished one."""

    @functools.wraps(fn)
    def wrapper(self: RaftSimulation, *args: Any, **kwargs: Any) -> Any:
        self.in_step = True
        result = fn(self, *args, **kwargs)
        self.in_step = False
        return result

    return wrapper  # type: ignore[return-value]


def _bucket(n: int) -> str:
    for top in (0, 1, 3, 10, 30, 100, 300):
        if n <= top:
            return f"<={top}"
    return ">300"


class RaftSimulation(RuleBasedStateMachine):
    """Subclasses may swap the core or the disk (tests of the checkers do)."""

    core_factory: CoreFactory = RaftCore
    disk_factory: DiskFactory = MemoryDisk
    properties: frozenset[str] = ALL_PROPERTIES
    spares: int = 0
    """Extra nodes started outside the configuration (membership runs add them)."""

    def __init__(self) -> None:
        super().__init__()
        self._cluster: Cluster | None = None
        self.counter = 0
        self.in_step = False

    @property
    def cluster(self) -> Cluster:
        assert self._cluster is not None
        return self._cluster

    def node(self, n: int) -> int:
        return 1 + (n - 1) % len(self.cluster.ids)

    def unique(self, prefix: str) -> bytes:
        self.counter += 1
        return f"{prefix}{self.counter}".encode()

    def in_flight(self) -> bool:
        return bool(self._cluster is not None and self._cluster.network.in_flight)

    def position(self, p: int) -> int:
        return p % len(self.cluster.network.in_flight)

    # -- setup ------------------------------------------------------------------------

    @initialize(
        size=st.sampled_from([3, 5]),
        seed=st.integers(min_value=0, max_value=2**32),
        pre_vote=st.booleans(),
        check_quorum=st.booleans(),
        small_messages=st.booleans(),
        warm=st.booleans(),
        eager_commit=st.booleans(),
    )
    @step
    def setup(
        self,
        size: int,
        seed: int,
        pre_vote: bool,
        check_quorum: bool,
        small_messages: bool,
        warm: bool,
        eager_commit: bool = True,
    ) -> None:
        config = Config(
            id=1,
            election_tick=ELECTION_TICK,
            pre_vote=pre_vote,
            check_quorum=check_quorum,
            # One entry per AppendEntries and a tiny in-flight window: more
            # probing, more partial replication, more interleavings.
            max_size_per_msg=1 if small_messages else 1 << 20,
            max_inflight_msgs=2 if small_messages else 256,
            max_snapshot_chunk=16 if small_messages else 1 << 20,
            snapshot_window=2 if small_messages else 4,
            # Deferred: followers hear of commits with later appends, heartbeats
            # or the broadcast_commit rule (the driver's timer).
            eager_commit_broadcast=eager_commit,
        )
        self._cluster = Cluster(
            size,
            seed,
            spares=type(self).spares,
            config=config,
            core_factory=type(self).core_factory,
            disk_factory=type(self).disk_factory,
            checker=SafetyChecker(range(1, size + 1), properties=self.properties),
        )
        if warm:
            # Start from a working cluster: a leader and a few applied entries.
            leader = self.cluster.await_leader()
            values = [self.unique("w") for _ in range(2)]
            for value in values:
                self.cluster.propose(leader, value)
            self.cluster.await_applied(values)

    # -- the network ----------------------------------------------------------------------

    @precondition(in_flight)
    @rule(p=positions)
    @step
    def deliver(self, p: int) -> None:
        self.cluster.deliver(self.position(p))

    @precondition(in_flight)
    @rule(p=positions, at=st.sampled_from(CrashPoint))
    @step
    def deliver_and_crash(self, p: int, at: CrashPoint) -> None:
        """The recipient crashes while handling the message (at point ``at``)."""
        self.cluster.deliver(self.position(p), crash_at=at)

    @precondition(in_flight)
    @rule(frm=nodes, to=nodes)
    @step
    def deliver_link(self, frm: int, to: int) -> None:
        """Deliver the oldest message on the link ``frm -> to`` (if there is one)."""
        a, b = self.node(frm), self.node(to)
        position = self.cluster.network.find(lambda e: e.frm == a and e.to == b)
        if position is not None:
            self.cluster.deliver(position)

    @precondition(in_flight)
    @rule(k=st.integers(min_value=1, max_value=30))
    @step
    def deliver_oldest(self, k: int) -> None:
        for _ in range(k):
            if not self.cluster.network.in_flight:
                break
            self.cluster.deliver(0)

    @precondition(in_flight)
    @rule(p=positions)
    @step
    def drop(self, p: int) -> None:
        self.cluster.drop(self.position(p))

    @precondition(in_flight)
    @rule(p=positions)
    @step
    def duplicate(self, p: int) -> None:
        self.cluster.duplicate(self.position(p))

    @rule()
    @step
    def stabilize(self) -> None:
        self.cluster.stabilize(limit=20_000)

    @rule(rounds=st.integers(min_value=1, max_value=20))
    @step
    def run(self, rounds: int) -> None:
        """Time passes with the network working (cut links still drop)."""
        for _ in range(rounds):
            self.cluster.tick_all()
            self.cluster.stabilize(limit=20_000)

    @rule(group=st.sets(nodes, max_size=4))
    @step
    def partition(self, group: set[int]) -> None:
        self.cluster.partition({self.node(n) for n in group})

    @rule(a=nodes, b=nodes)
    @step
    def cut_one_way(self, a: int, b: int) -> None:
        if self.node(a) != self.node(b):
            self.cluster.cut(self.node(a), self.node(b))

    @rule(n=nodes)
    @step
    def isolate(self, n: int) -> None:
        self.cluster.isolate(self.node(n))

    def any_cut(self) -> bool:
        return self._cluster is not None and bool(self._cluster.network.blocked)

    @precondition(any_cut)
    @rule()
    @step
    def heal(self) -> None:
        self.cluster.heal()

    # -- time ---------------------------------------------------------------------------

    @rule(n=nodes, k=st.integers(min_value=1, max_value=12))
    @step
    def tick(self, n: int, k: int) -> None:
        self.cluster.tick(self.node(n), k)

    @rule(k=st.integers(min_value=1, max_value=6))
    @step
    def tick_all(self, k: int) -> None:
        self.cluster.tick_all(k)

    # -- crashes ----------------------------------------------------------------------------

    def any_down(self) -> bool:
        return self._cluster is not None and len(self._cluster.up()) < len(self._cluster.ids)

    def any_lazy(self) -> bool:
        return self._cluster is not None and bool(self.lazy_nodes())

    def lazy_nodes(self) -> list[int]:
        return [i for i, node in self.cluster.nodes.items() if node.up and node.lazy]

    @rule(n=nodes, at=st.sampled_from(CrashPoint))
    @step
    def crash(self, n: int, at: CrashPoint) -> None:
        up = self.cluster.up()
        if up:
            self.cluster.crash(up[(n - 1) % len(up)], at)

    @rule(n=nodes, at=st.sampled_from(CrashPoint))
    @step
    def crash_and_restart(self, n: int, at: CrashPoint) -> None:
        up = self.cluster.up()
        if up:
            node = up[(n - 1) % len(up)]
            self.cluster.crash(node, at)
            self.cluster.restart(node)

    @precondition(any_down)
    @rule(n=nodes)
    @step
    def restart(self, n: int) -> None:
        down = [i for i in self.cluster.ids if i not in self.cluster.up()]
        self.cluster.restart(down[(n - 1) % len(down)])

    @rule(n=nodes)
    @step
    def hold_ready(self, n: int) -> None:
        self.cluster.set_lazy(self.node(n), True)

    @precondition(any_lazy)
    @rule(n=nodes, release=st.booleans())
    @step
    def process_ready(self, n: int, release: bool) -> None:
        lazy = self.lazy_nodes()
        node = lazy[(n - 1) % len(lazy)]
        if release:
            self.cluster.set_lazy(node, False)
        else:
            self.cluster.process(node)

    @rule(n=nodes, keep=st.sampled_from([0, 1, 3]), everyone=st.booleans())
    @step
    def compact(self, n: int, keep: int, everyone: bool) -> None:
        """Snapshot the state machine and drop the log behind it, on one node or on
        all live nodes (then any lagging follower needs InstallSnapshot)."""
        targets = self.cluster.up() if everyone else [self.node(n)]
        for target in targets:
            self.cluster.compact(target, keep)

    # -- clients -------------------------------------------------------------------------------

    @rule(n=nodes)
    @step
    def propose(self, n: int) -> None:
        self.cluster.propose(self.node(n), self.unique("v"))

    @rule(n=nodes)
    @step
    def broadcast_commit(self, n: int) -> None:
        self.cluster.broadcast_commit(self.node(n))

    @rule(n=nodes)
    @step
    def read_index(self, n: int) -> None:
        self.cluster.read_index(self.node(n), self.unique("r"))

    @rule()
    @step
    def read_everywhere(self) -> None:
        """A ReadIndex request on every live node at once."""
        for node in self.cluster.up():
            self.cluster.read_index(node, self.unique("r"))

    @rule(a=nodes, b=nodes)
    @step
    def transfer_leadership(self, a: int, b: int) -> None:
        self.cluster.transfer_leadership(self.node(a), self.node(b))

    @rule(n=nodes)
    @step
    def campaign(self, n: int) -> None:
        self.cluster.campaign(self.node(n))

    @rule(n=nodes)
    @step
    def elect(self, n: int) -> None:
        """Force an election at ``n`` and let the network settle (leadership churn)."""
        self.cluster.campaign(self.node(n))
        self.cluster.stabilize(limit=20_000)

    # -- checks ----------------------------------------------------------------------------

    @invariant()
    @step
    def safety(self) -> None:
        if self._cluster is not None:
            self._cluster.check()

    @staticmethod
    def report_coverage(cluster: Cluster) -> None:
        """Hypothesis events (see --hypothesis-show-statistics): how far runs get
        (counted at the end of the liveness phase)."""
        checker = cluster.checker
        event(f"leaders elected: {_bucket(len(checker.leaders))}")
        event(f"sim steps: {_bucket(cluster.time)}")
        event(f"max commit index: {_bucket(checker.max_commit)}")
        applied = sum(1 for entry, _ in checker.applied.values() if entry.data)
        event(f"applied entries with data: {_bucket(applied)}")
        event(f"reads answered: {_bucket(cluster.reads_answered)}")
        event(f"snapshots installed: {_bucket(cluster.snapshots_installed)}")

    def teardown(self) -> None:
        cluster = self._cluster
        if cluster is None:
            return
        if self.in_step:
            # A step or a checker failed: show the schedule, skip the liveness phase.
            note(f"--- simulator trace ---\n{cluster.format_trace(TRACE_LINES)}")
            note(f"--- final state ---\n{cluster.describe()}")
            return
        try:
            cluster.check_liveness(proposals=3)
        except AssertionError:
            note(f"--- simulator trace ---\n{cluster.format_trace(TRACE_LINES)}")
            raise
        self.report_coverage(cluster)


RaftSimulation.TestCase.settings = settings(
    max_examples=EXAMPLES,
    stateful_step_count=STEPS,
)
TestRaftSimulation = RaftSimulation.TestCase
