"""A deterministic simulated cluster of :class:`~raft.core.RaftCore` nodes.

One seed drives everything: :class:`Cluster` owns a ``random.Random(seed)`` and
derives each core's rng from it, so the same seed and the same sequence of
calls replay the same run, message for message.

Pieces:

* A node's durable storage is a pluggable :class:`~raft.sim.disk.Disk`
  (``disk_factory``).  Crash semantics live in exactly two places:
  :meth:`Disk.crash` (what the disk loses) and :meth:`Cluster._crash_now`
  (the core and everything in its memory are thrown away).
* :class:`SimNode` runs the Ready loop of one node.  A node is normally
  *eager* (every input is followed by processing its Ready to completion).  A
  *lazy* node only processes its Ready when asked, so inputs pile up in its
  core's memory and a crash loses them; :meth:`Cluster.crash` can also stop a
  node half way through a Ready (after sending, after persisting...).
* :class:`Cluster` ties nodes to a :class:`~raft.sim.network.Network`, records
  a readable trace (``t=12 n2 tick``, ``t=13 deliver #45 AppendEntries 1->3
  ...``), records events for the checkers, and runs the
  :class:`~raft.sim.checkers.SafetyChecker` after every step.
* Disk faults: :class:`DuringPersist` cuts the power part way through the
  persist step of a Ready; :meth:`Cluster.compact` and :meth:`Cluster.restart`
  can cut it part way through a snapshot save or a recovery;
  :meth:`Cluster.corrupt` flips a bit in a down node's files.  A node whose
  disk refuses to start (:class:`~raft.sim.disk.DiskRefused`) stays down for
  good: it is recorded in :attr:`Cluster.disk_failures` and the trace, and the
  liveness phase only asks progress of the healthy nodes.
* :meth:`Cluster.check_liveness` (with :meth:`Cluster.heal_all` and the
  ``await_*`` helpers) is the liveness phase; :mod:`raft.sim.chaos` has seeded
  random fault schedules.
* Membership: ``spares`` extra nodes start outside the configuration (an
  empty one, as a member started to join an existing cluster) and
  :meth:`Cluster.conf_change` adds, promotes and removes nodes.  The liveness
  phase asks progress only of the members of the leader's configuration.
"""

from __future__ import annotations

import dataclasses
import enum
import random
from collections import deque
from collections.abc import Callable, Iterable

import msgspec

from raft.core import Config, RaftCore
from raft.errors import RequestDropped
from raft.membership import ConfChange
from raft.messages import ConfState, Entry, Snapshot, SnapshotMeta
from raft.ready import Role
from raft.sim.checkers import (
    Applied,
    Event,
    LogView,
    NodeView,
    ReadIssued,
    ReadResult,
    Restarted,
    SafetyChecker,
    SnapshotRestored,
)
from raft.sim.disk import CorruptibleDisk, Disk, DiskRefused, MemoryDisk
from raft.sim.network import Envelope, Network, format_bytes
from raft.storage import Storage

CoreFactory = Callable[[Config, Storage, random.Random], RaftCore]
DiskFactory = Callable[[ConfState], Disk]


class LivenessViolation(AssertionError):
    """The healed cluster did not make progress within the allowed time."""


# -- the simulated state machine -----------------------------------------------------------

_IMAGE = msgspec.msgpack.Encoder()
_IMAGE_DECODER = msgspec.msgpack.Decoder(list[Entry])


def encode_image(entries: list[Entry]) -> bytes:
    """A node's state machine image: every entry it applied, in order."""
    return _IMAGE.encode(entries)


def decode_image(data: bytes) -> list[Entry]:
    return _IMAGE_DECODER.decode(data) if data else []


# -- one node --------------------------------------------------------------------------


class CrashPoint(enum.IntEnum):
    """Where in the Ready loop a crash hits (if the node has a Ready to process)."""

    BEFORE_READY = 0
    """Everything the core holds in memory is lost."""
    AFTER_SEND = 1
    """Ready.messages went out; nothing was persisted."""
    AFTER_PERSIST = 2
    """...and entries + hard state were persisted; persisted_messages never left."""
    AFTER_PERSISTED_SEND = 3
    """...and persisted_messages went out; nothing was applied, advance never ran."""


@dataclasses.dataclass(frozen=True)
class DuringPersist:
    """A crash point *inside* the persist step, between ``AFTER_SEND`` and
    ``AFTER_PERSIST``: Ready.messages went out, then the power failed after
    ``ops`` disk operations of the persist (see
    :meth:`~raft.sim.disk.Disk.persist_interrupted`), so none of
    persisted_messages left.  Usable wherever a :class:`CrashPoint` is."""

    ops: int


Stop = CrashPoint | DuringPersist


class SimNode:
    """One member: a disk that survives crashes and a core that does not."""

    def __init__(self, node_id: int, disk: Disk) -> None:
        self.id = node_id
        self.disk = disk
        self.core: RaftCore | None = None
        self.incarnation = 0
        self.lazy = False
        self.applied_index = 0
        self.applied_data: dict[bytes, int] = {}
        """data -> index of every non-empty entry in the state machine."""
        self.state: list[Entry] = []
        """The simulated state machine: every entry applied (or restored), in order."""
        self.read_results: dict[bytes, int] = {}
        self.disk_failure: str | None = None
        """Why the disk refused to start (the node then stays down for good)."""

    def restore(self, entries: list[Entry]) -> None:
        """Replace the state machine with an image (from a snapshot)."""
        self.state = list(entries)
        self.applied_index = entries[-1].index if entries else 0
        self.applied_data = {e.data: e.index for e in entries if e.data}

    @property
    def up(self) -> bool:
        return self.core is not None

    def view(self) -> NodeView:
        hard = self.disk.durable_hard_state()
        durable = self.disk.durable_log()
        core = self.core
        if core is None:
            return NodeView(
                id=self.id,
                up=False,
                incarnation=self.incarnation,
                term=hard.term,
                role=None,
                commit=hard.commit,
                log=durable,
                durable=durable,
                hard_state=hard,
            )
        raft_log = core.log
        first, last = raft_log.first_index(), raft_log.last_index()
        entries = raft_log.entries(first, last + 1)
        return NodeView(
            id=self.id,
            up=True,
            incarnation=self.incarnation,
            term=core.term,
            role=core.role,
            commit=raft_log.committed,
            log=LogView(first, raft_log.term(first - 1), tuple(entries)),
            durable=durable,
            hard_state=hard,
        )


# -- the cluster ------------------------------------------------------------------------


class Cluster:
    """N simulated nodes, a network, a trace and a safety checker.

    Every public operation is one *step*: it advances :attr:`time`, is logged
    in :attr:`trace`, and (with ``auto_check``) is followed by a full safety
    check.  Operations on a node that is down are logged and ignored.
    """

    def __init__(
        self,
        size: int = 3,
        seed: int = 0,
        *,
        spares: int = 0,
        config: Config | None = None,
        core_factory: CoreFactory = RaftCore,
        disk_factory: DiskFactory = MemoryDisk,
        checker: SafetyChecker | None = None,
        auto_check: bool = True,
        trace_limit: int = 20_000,
    ) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.ids = list(range(1, size + spares + 1))
        self.conf = ConfState(voters=tuple(range(1, size + 1)))
        """The initial configuration (spares are outside it)."""
        self.base_config = config or Config(id=1)
        self.core_factory = core_factory
        self.time = 0
        self.trace: deque[str] = deque(maxlen=trace_limit)
        self.network = Network(self._log)
        self.checker = checker if checker is not None else SafetyChecker(self.conf.voters)
        self.auto_check = auto_check
        self.events: list[Event] = []
        self.max_commit = 0
        """Highest commit index any node has reached so far (for ReadIndex checks)."""
        self.reads_answered = 0
        self.snapshots_installed = 0
        self.disk_failures: dict[int, str] = {}
        """Nodes whose disk refused to start, and why."""
        self.corrupted: set[int] = set()
        """Nodes whose disk had a bit flipped (:meth:`corrupt`)."""
        self.conf_changes_accepted = 0
        self.nodes = {
            i: SimNode(i, disk_factory(self.conf if i <= size else ConfState())) for i in self.ids
        }
        self._checked_at = -1
        for node in self.nodes.values():
            self._start(node)
        self._log(
            f"cluster of {size} nodes{f' (+{spares} spares)' if spares else ''}, seed {seed}, "
            f"election_tick "
            f"{self.base_config.election_tick}, pre_vote {self.base_config.pre_vote}, "
            f"check_quorum {self.base_config.check_quorum}"
        )

    # -- trace ------------------------------------------------------------------------

    def _log(self, line: str) -> None:
        self.trace.append(f"t={self.time} {line}")

    def format_trace(self, last: int | None = None) -> str:
        lines = list(self.trace)
        if last is not None and len(lines) > last:
            lines = [f"... {len(lines) - last} earlier lines omitted", *lines[-last:]]
        return "\n".join(lines)

    def describe(self) -> str:
        """One line per node: role, term, commit, log."""
        out = []
        for node in self.nodes.values():
            view = node.view()
            state = (
                f"{view.role.value if view.role else 'DOWN'} term {view.term} commit {view.commit}"
            )
            tail = " ".join(f"{e.index}@{e.term}" for e in view.log.entries[-12:])
            out.append(f"n{node.id}: {state} log [{tail}]")
        return "\n".join(out)

    # -- checking -----------------------------------------------------------------------

    def views(self) -> list[NodeView]:
        return [node.view() for node in self.nodes.values()]

    def check(self) -> None:
        """Run every safety checker on the current state (once per step)."""
        if self._checked_at == self.time:
            return
        self._checked_at = self.time
        events, self.events = self.events, []
        self.checker.check(self.views(), events)

    def _step_done(self) -> None:
        if self.auto_check:
            self.check()

    def _begin(self, line: str) -> None:
        self.time += 1
        self._log(line)

    # -- node lifecycle -------------------------------------------------------------------

    def _start(self, node: SimNode) -> bool:
        """Start a core on the node's disk; False (the node stays down for good)
        if the disk refuses."""
        if node.disk_failure is not None:
            self._log(f"  (n{node.id}'s disk refused to start before: it stays down)")
            return False
        rng = random.Random(self.rng.getrandbits(64))
        try:
            storage = node.disk.storage
            # The state machine is volatile: rebuild it from the latest snapshot.
            snapshot = storage.snapshot()
        except DiskRefused as exc:
            self._disk_failed(node, str(exc))
            return False
        node.incarnation += 1
        # The state machine starts at the snapshot, which may be ahead of the
        # start of the log (a snapshot saved, the log not compacted yet).
        config = dataclasses.replace(self.base_config, id=node.id, applied=snapshot.meta.index)
        node.core = self.core_factory(config, storage, rng)
        node.restore(decode_image(snapshot.data))
        node.read_results = {}
        node.lazy = False
        self.events.append(Restarted(node.id, node.incarnation, node.applied_index))
        if snapshot.meta.index:
            self.events.append(
                SnapshotRestored(node.id, node.incarnation, snapshot.meta, tuple(node.state))
            )
        return True

    def _disk_failed(self, node: SimNode, reason: str) -> None:
        node.disk_failure = reason
        self.disk_failures[node.id] = reason
        self._log(f"  n{node.id}'s disk REFUSES to start, the node stays down: {reason}")

    def healthy(self) -> list[int]:
        """Nodes whose disk has not refused to start (all of them, without disk faults)."""
        return [i for i, node in self.nodes.items() if node.disk_failure is None]

    def _drain(self, node: SimNode, stop: Stop | None = None) -> None:
        """Run the Ready loop of ``node`` until it has nothing left to do.

        With ``stop``, process only one Ready and crash at that point of it.
        """
        core = node.core
        assert core is not None
        rounds = 0
        while core.has_ready():
            rounds += 1
            if rounds > 10_000:
                raise AssertionError(f"n{node.id} has a Ready forever (livelock in the core?)")
            rd = core.ready()
            if rd.soft_state is not None:
                role, leader = rd.soft_state.role, rd.soft_state.leader
                self._log(f"n{node.id} is {role.value} in term {core.term}, leader n{leader}")
            self.network.send_all(rd.messages)
            if stop is CrashPoint.AFTER_SEND:
                self._crash_now(node, "after sending, before persisting")
                return
            if rd.entries or rd.hard_state is not None or rd.snapshot is not None:
                what = []
                if rd.snapshot is not None:
                    meta = rd.snapshot.meta
                    what.append(f"snapshot {meta.index}@{meta.term}")
                if rd.entries:
                    what.append(f"entries {rd.entries[0].index}..{rd.entries[-1].index}")
                if rd.hard_state is not None:
                    hs = rd.hard_state
                    what.append(f"term={hs.term} vote={hs.vote} commit={hs.commit}")
                self._log(f"n{node.id} persists {', '.join(what)}")
            if isinstance(stop, DuringPersist):
                how = node.disk.persist_interrupted(rd, stop.ops)
                self._crash_now(node, f"power cut after {stop.ops} disk operations: {how}")
                return
            node.disk.persist(rd)
            if stop is CrashPoint.AFTER_PERSIST:
                self._crash_now(node, "after persisting, before sending persisted messages")
                return
            self.network.send_all(rd.persisted_messages)
            if stop is CrashPoint.AFTER_PERSISTED_SEND:
                self._crash_now(node, "after sending persisted messages, before applying")
                return
            if rd.snapshot is not None:
                image = decode_image(rd.snapshot.data)
                node.restore(image)
                self.snapshots_installed += 1
                self._log(f"n{node.id} restores its state machine to index {node.applied_index}")
                self.events.append(
                    SnapshotRestored(node.id, node.incarnation, rd.snapshot.meta, tuple(image))
                )
            for entry in rd.committed_entries:
                self._apply(node, entry)
            for read_state in rd.read_states:
                self._log(
                    f"n{node.id} read state ctx={format_bytes(read_state.context)} "
                    f"index={read_state.index}"
                )
                node.read_results[read_state.context] = read_state.index
                self.reads_answered += 1
                self.events.append(ReadResult(node.id, read_state.context, read_state.index))
            core.advance(rd)
        self._note_commit(node)

    def _apply(self, node: SimNode, entry: Entry) -> None:
        node.applied_index = entry.index
        node.state.append(entry)
        if entry.data:
            node.applied_data[entry.data] = entry.index
        self.events.append(Applied(node.id, node.incarnation, entry))

    def _note_commit(self, node: SimNode) -> None:
        if node.core is not None:
            self.max_commit = max(self.max_commit, node.core.log.committed)

    def _after_input(self, node: SimNode) -> None:
        self._note_commit(node)
        if not node.lazy:
            self._drain(node)

    def _crash_now(self, node: SimNode, how: str) -> None:
        """The single place a crash happens: the core and its memory are gone,
        the disk keeps what it made durable."""
        node.core = None
        node.lazy = False
        lost = node.disk.crash()
        self._log(f"crash n{node.id} ({how})")
        if lost:
            self._log(f"  n{node.id}'s disk after the crash: {lost}")

    def _node(self, node_id: int) -> SimNode | None:
        node = self.nodes[node_id]
        if node.core is None:
            self._log(f"  (n{node_id} is down: ignored)")
            return None
        return node

    # -- inputs ---------------------------------------------------------------------------

    def tick(self, node_id: int, count: int = 1) -> None:
        self._begin(f"n{node_id} tick" + (f" x{count}" if count > 1 else ""))
        node = self._node(node_id)
        if node is not None:
            for _ in range(count):
                core = node.core
                if core is None:
                    break
                core.tick()
                self._after_input(node)
        self._step_done()

    def tick_all(self, count: int = 1) -> None:
        """Every live node ticks ``count`` times, in lockstep."""
        for _ in range(count):
            self._begin("tick all")
            for node in self.nodes.values():
                if node.core is not None:
                    node.core.tick()
                    self._after_input(node)
            self._step_done()

    def deliver(self, position: int, crash_at: Stop | None = None) -> bool:
        """Deliver the message at ``position`` in flight; False if it was lost.

        With ``crash_at``, the recipient crashes while handling it: at that
        point of processing the Ready the message produced.
        """
        envelope = self.network.in_flight[position]
        suffix = f" (recipient crashes {_stop_name(crash_at)})" if crash_at is not None else ""
        self._begin(f"deliver {envelope}{suffix}")
        taken = self.network.take(position)
        delivered = taken is not None and self._deliver(taken, crash_at)
        self._step_done()
        return delivered

    def _deliver(self, envelope: Envelope, crash_at: Stop | None = None) -> bool:
        node = self.nodes[envelope.to]
        if node.core is None:
            self._log(f"  (n{envelope.to} is down: lost)")
            return False
        node.core.step(envelope.message)
        if crash_at is None:
            self._after_input(node)
        else:
            self._note_commit(node)
            self._crash_during_ready(node, crash_at)
        return True

    def drop(self, position: int) -> None:
        self._begin("drop")
        self.network.drop(position)
        self._step_done()

    def duplicate(self, position: int) -> None:
        self._begin("duplicate")
        self.network.duplicate(position)
        self._step_done()

    def propose(self, node_id: int, data: bytes) -> int | None:
        """Propose ``data`` at ``node_id``; its index on a leader, else None."""
        self._begin(f"n{node_id} propose {format_bytes(data)}")
        node = self._node(node_id)
        index: int | None = None
        if node is not None and node.core is not None:
            try:
                index = node.core.propose(data)
            except RequestDropped as exc:
                self._log(f"  proposal dropped: {exc.reason}")
            else:
                self._log(f"  accepted at index {index}" if index else "  forwarded")
            self._after_input(node)
        self._step_done()
        return index

    def read_index(self, node_id: int, context: bytes) -> bool:
        """Issue a ReadIndex request; False if the core refused it."""
        self._begin(f"n{node_id} read_index ctx={format_bytes(context)}")
        node = self._node(node_id)
        accepted = False
        if node is not None and node.core is not None:
            self.events.append(ReadIssued(node_id, context, self.max_commit))
            try:
                node.core.read_index(context)
                accepted = True
            except RequestDropped as exc:
                self._log(f"  read dropped: {exc.reason}")
            self._after_input(node)
        self._step_done()
        return accepted

    def transfer_leadership(self, node_id: int, target: int) -> None:
        self._begin(f"n{node_id} transfer_leadership to n{target}")
        node = self._node(node_id)
        if node is not None and node.core is not None:
            try:
                node.core.transfer_leadership(target)
            except RequestDropped as exc:
                self._log(f"  transfer dropped: {exc.reason}")
            self._after_input(node)
        self._step_done()

    def conf_change(self, node_id: int, change: ConfChange) -> int | None:
        """Propose a membership change at ``node_id``; its index if accepted."""
        self._begin(f"n{node_id} conf change {change.type.name} n{change.node_id}")
        node = self._node(node_id)
        index: int | None = None
        if node is not None and node.core is not None:
            try:
                index = node.core.propose_conf_change(change)
            except RequestDropped as exc:
                self._log(f"  conf change refused: {exc.reason}")
            else:
                self.conf_changes_accepted += 1
                self._log(f"  accepted at index {index}")
            self._after_input(node)
        self._step_done()
        return index

    def campaign(self, node_id: int) -> None:
        self._begin(f"n{node_id} campaign")
        node = self._node(node_id)
        if node is not None and node.core is not None:
            node.core.campaign()
            self._after_input(node)
        self._step_done()

    def compact(self, node_id: int, keep: int = 0, power_cut_after: int | None = None) -> None:
        """``node_id`` snapshots its state machine and discards its log up to
        ``applied - keep`` (as an application does between Readies).

        With ``power_cut_after``, the power fails after that many disk
        operations of the snapshot save and the node crashes."""
        cut = f", power fails after {power_cut_after} disk operations" if power_cut_after else ""
        if power_cut_after == 0:
            cut = ", power fails at once"
        self._begin(f"n{node_id} compact (keep {keep}{cut})")
        node = self._node(node_id)
        if node is not None and node.core is not None:
            storage = node.disk.storage
            index = min(node.applied_index - keep, storage.last_index())
            if index >= storage.first_index():
                meta = SnapshotMeta(
                    index=index, term=storage.term(index), conf=node.core.conf_state_at(index)
                )
                image = [e for e in node.state if e.index <= index]
                snapshot = Snapshot(meta, encode_image(image))
                if power_cut_after is None:
                    node.disk.save_snapshot(snapshot)
                    self._log(f"  snapshot {index}@{meta.term}, log now starts at {index + 1}")
                else:
                    how = node.disk.save_snapshot_interrupted(snapshot, power_cut_after)
                    self._crash_now(node, f"power cut saving snapshot {index}@{meta.term}: {how}")
            else:
                self._log("  nothing to compact")
                if power_cut_after is not None:
                    self._crash_now(node, "power cut")
        self._step_done()

    # -- Ready processing, crashes, restarts --------------------------------------------------

    def broadcast_commit(self, node_id: int) -> None:
        """``node_id`` sends its commit index to the peers that have not heard
        it (what the driver does when a deferred broadcast is due)."""
        self._begin(f"n{node_id} broadcast commit")
        node = self._node(node_id)
        if node is not None and node.core is not None:
            node.core.broadcast_commit()
            self._after_input(node)
        self._step_done()

    def set_lazy(self, node_id: int, lazy: bool = True) -> None:
        """A lazy node processes its Ready only when :meth:`process` is called."""
        self._begin(f"n{node_id} {'holds' if lazy else 'stops holding'} its Ready")
        node = self._node(node_id)
        if node is not None:
            node.lazy = lazy
            if not lazy:
                self._drain(node)
        self._step_done()

    def process(self, node_id: int) -> None:
        """Process ``node_id``'s pending Ready to completion."""
        self._begin(f"n{node_id} process ready")
        node = self._node(node_id)
        if node is not None:
            self._drain(node)
        self._step_done()

    def crash(self, node_id: int, at: Stop = CrashPoint.BEFORE_READY) -> None:
        """Crash ``node_id``; with a pending Ready, at point ``at`` of processing it."""
        self._begin(f"crash n{node_id} at {_stop_name(at)}")
        node = self._node(node_id)
        if node is not None:
            self._crash_during_ready(node, at)
        self._step_done()

    def _crash_during_ready(self, node: SimNode, at: Stop) -> None:
        core = node.core
        if core is None:
            return
        if at is not CrashPoint.BEFORE_READY and core.has_ready():
            self._drain(node, stop=at)
        if node.core is not None:
            self._crash_now(node, "losing all unpersisted state")

    def restart(self, node_id: int, power_cut_after: int | None = None) -> None:
        """Restart a crashed node.  With ``power_cut_after``, the power fails
        after that many disk operations of its recovery and it stays down."""
        cut = f" (power fails after {power_cut_after} disk operations)"
        self._begin(f"restart n{node_id}" + (cut if power_cut_after is not None else ""))
        node = self.nodes[node_id]
        if node.core is not None:
            self._log(f"  (n{node_id} is up: ignored)")
        elif node.disk_failure is not None:
            self._log(f"  (n{node_id}'s disk refused to start before: it stays down)")
        elif power_cut_after is not None:
            try:
                how = node.disk.recover_interrupted(power_cut_after)
            except DiskRefused as exc:
                self._disk_failed(node, str(exc))
            else:
                self._log(f"  power cut during recovery of n{node_id}: {how}")
        elif self._start(node):
            hs = node.disk.durable_hard_state()
            self._log(
                f"  n{node_id} incarnation {node.incarnation} from disk: term={hs.term} "
                f"vote={hs.vote} commit={hs.commit} last index "
                f"{node.disk.storage.last_index()}"
            )
            self._drain(node)
        self._step_done()

    def corrupt(self, node_id: int) -> None:
        """Flip one bit in a file of ``node_id``'s disk (crashing it first if it
        is up): its next start must refuse.  The disk must be a
        :class:`~raft.sim.disk.CorruptibleDisk`."""
        self._begin(f"corrupt n{node_id}'s disk")
        node = self.nodes[node_id]
        disk = node.disk
        if not isinstance(disk, CorruptibleDisk):
            raise TypeError(f"{type(disk).__name__} cannot be corrupted")
        if node.core is not None:
            self._crash_now(node, "before its disk rots")
        self._log(f"  n{node_id}: {disk.flip_bit()}")
        self.corrupted.add(node_id)
        self._step_done()

    # -- network faults ------------------------------------------------------------------------

    def partition(self, *groups: Iterable[int]) -> None:
        self._begin("partition")
        self.network.partition(*groups, nodes=self.ids)
        self._step_done()

    def cut(self, frm: int, to: int) -> None:
        self._begin(f"cut {frm}->{to}")
        self.network.cut(frm, to)
        self._step_done()

    def isolate(self, node_id: int) -> None:
        self._begin(f"isolate n{node_id}")
        self.network.isolate(node_id, self.ids)
        self._step_done()

    def heal(self) -> None:
        self._begin("heal")
        self.network.heal()
        self._step_done()

    # -- scripted helpers ----------------------------------------------------------------------

    def deliver_where(self, predicate: Callable[[Envelope], bool], limit: int = 1000) -> int:
        """Deliver, oldest first, every message in flight that matches ``predicate``
        (including ones sent meanwhile); returns how many were delivered."""
        count = 0
        while count < limit:
            position = self.network.find(predicate)
            if position is None:
                return count
            self.deliver(position)
            count += 1
        raise AssertionError(f"deliver_where: still matching messages after {limit}")

    def drop_where(self, predicate: Callable[[Envelope], bool]) -> int:
        self._begin("drop matching messages")
        count = self.network.drop_where(predicate)
        self._step_done()
        return count

    def stabilize(self, limit: int = 100_000) -> int:
        """Deliver everything in flight (and what that causes), oldest first,
        until the network is empty.  Blocked links still drop."""
        count = 0
        while self.network.in_flight:
            if count >= limit:
                raise LivenessViolation(
                    f"network never went quiet: {len(self.network.in_flight)} messages "
                    f"still in flight after {limit} deliveries"
                )
            self.deliver(0)
            count += 1
        return count

    # -- queries -------------------------------------------------------------------------------

    def core(self, node_id: int) -> RaftCore:
        core = self.nodes[node_id].core
        if core is None:
            raise LookupError(f"n{node_id} is down")
        return core

    def up(self) -> list[int]:
        return [i for i, node in self.nodes.items() if node.core is not None]

    def leaders(self) -> list[int]:
        return [
            i
            for i, node in self.nodes.items()
            if node.core is not None and node.core.role is Role.LEADER
        ]

    def members(self) -> list[int]:
        """The members (voters and learners) of the configuration of the leader
        of the highest term, or of the node with the most up-to-date log when
        there is no leader.  Nodes outside it (removed, or spares never added)
        are not asked to make progress."""
        up = [node.core for node in self.nodes.values() if node.core is not None]
        if not up:
            return []
        leaders = [c for c in up if c.role is Role.LEADER]
        if leaders:
            source = max(leaders, key=lambda c: c.term)
        else:
            source = max(up, key=lambda c: (c.log.last_term(), c.log.last_index()))
        conf = source.conf_state()
        return sorted(set(conf.voters) | set(conf.learners))

    def stable_leader(self) -> int | None:
        """The leader every live member agrees on, in the highest term among
        members, if any."""
        members = set(self.members())
        up = [
            node.core
            for node in self.nodes.values()
            if node.core is not None and node.id in members
        ]
        if not up:
            return None
        term = max(core.term for core in up)
        leaders = [c.id for c in up if c.role is Role.LEADER and c.term == term]
        if len(leaders) != 1:
            return None
        leader = leaders[0]
        if all(c.term == term and c.leader == leader for c in up):
            return leader
        return None

    # -- liveness phase ----------------------------------------------------------------------

    def heal_all(self) -> None:
        """End every fault: restart crashed nodes, heal links, process held Readies.

        Messages still in flight stay in flight (they are delivered, late,
        by the liveness phase's reliable network).
        """
        self._begin("=== heal everything: liveness phase ===")
        self.network.heal()
        for node in self.nodes.values():
            if node.core is None:
                if not self._start(node):
                    continue
                self._log(f"restart n{node.id} (incarnation {node.incarnation})")
            node.lazy = False
            self._drain(node)
        self._step_done()

    def run_until(self, done: Callable[[], bool], max_ticks: int, what: str) -> int:
        """Reliable network: deliver everything, then tick every node once, until
        ``done()``; returns the ticks used or raises :class:`LivenessViolation`."""
        for ticks in range(max_ticks + 1):
            self.stabilize()
            if done():
                return ticks
            self.tick_all()
        raise LivenessViolation(
            f"liveness: {what} did not happen within {max_ticks} ticks after healing\n"
            + self.describe()
        )

    def await_leader(self, max_ticks: int | None = None) -> int:
        """Wait for a stable leader with no leadership transfer pending."""
        limit = max_ticks if max_ticks is not None else self.election_bound()

        def ready() -> bool:
            leader = self.stable_leader()
            return leader is not None and self.core(leader).status().lead_transferee == 0

        self.run_until(ready, limit, "electing a leader")
        leader = self.stable_leader()
        assert leader is not None
        return leader

    def election_bound(self) -> int:
        """Ten (maximal, randomized) election timeouts, in ticks."""
        return 10 * 2 * self.base_config.election_tick

    def await_applied(self, data: Iterable[bytes], max_ticks: int | None = None) -> None:
        """Wait until every healthy member has applied every value in ``data``."""
        wanted = list(data)
        limit = max_ticks if max_ticks is not None else self.election_bound()
        members = set(self.members())
        healthy = [self.nodes[i] for i in self.healthy() if i in members]

        def done() -> bool:
            return all(
                node.core is not None and all(d in node.applied_data for d in wanted)
                for node in healthy
            )

        self.run_until(done, limit, f"applying {len(wanted)} proposals on every node")

    def check_liveness(self, proposals: int = 3, tag: str = "live", reads: bool = True) -> None:
        """The liveness phase: heal, elect, then every new proposal is applied
        everywhere and (with ``reads``) a ReadIndex request on every node is answered.

        Nodes whose disk refused to start are left out: with a majority of
        healthy voters, progress is still required of all the others."""
        self.heal_all()
        leader = self.await_leader()
        members = set(self.members())
        healthy = [i for i in self.healthy() if i in members]
        values = [f"{tag}-{k}".encode() for k in range(proposals)]
        for k, value in enumerate(values):
            # Alternate between the leader and a follower (which forwards).
            target = leader if k % 2 == 0 else healthy[(leader + k) % len(healthy)]
            self.propose(target, value)
        self.await_applied(values)
        if reads:
            contexts = {i: f"{tag}-read-{i}".encode() for i in healthy}
            for i, context in contexts.items():
                self.read_index(i, context)

            def answered() -> bool:
                return all(context in self.nodes[i].read_results for i, context in contexts.items())

            self.run_until(answered, self.election_bound(), "answering a read on every node")
        self.check()


def _stop_name(stop: Stop) -> str:
    if isinstance(stop, DuringPersist):
        return f"DURING_PERSIST(after {stop.ops} disk operations)"
    return stop.name
