"""The trio driver: runs a :class:`~raft.core.RaftCore` against real time,
real storage and a transport.

The core is driven in *turns*, never two at once: a turn steps every queued
input, then turns each of the core's Readies into actions in the contract's
order: send the leader's traffic, persist (one fsync for the whole batch),
send what needed the persist, hand committed entries to the application,
advance.  Everything else (the ticker, the transport's receivers, callers
proposing or reading) queues inputs and wakes the node's task, which takes the
next turn.

Two inputs take their turn at once, in the caller's task, when the node is
between turns: a burst of peer messages the transport has just handed over
(:meth:`RaftNode.drained`), and a proposal reaching a leader with nothing in
flight.  That saves a task switch on each hop of a lone write's path (the
leader's proposal, the follower's append, the leader's ack).  Such a turn runs
without waiting; a Ready whose persist must go to a thread is left to the
node's task, which finishes the turn.  Under load the node's task is mostly
mid-turn, and inputs gather for its next one as before.

Group commit: inputs that arrive while the disk syncs all go into the next
batch.  The fsync of a batch runs in a worker thread, so the member goes on
reading requests, applying and answering while the disk syncs.  A Ready with
a lone entry (or none: a vote) is persisted in the turn's own task instead, as
etcd's raft loop does: with one write in flight there is little to overlap,
and the hand-off to a thread costs more CPU and latency than it saves.

The application receives committed entries in log order, as
:class:`ApplyBatch` es: from :attr:`RaftNode.committed` (an unbounded
channel), or, if it sets :attr:`RaftNode.apply`, in the turn's task (a
task switch less per batch).  It applies them to its state machine and may
hand back a snapshot of that state with :meth:`RaftNode.save_snapshot`.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import random
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import trio

from raft.core import Config, RaftCore, Status
from raft.errors import ReadIndexDropped, RequestDropped
from raft.membership import ConfChange
from raft.messages import ConfState, Entry, Message, Snapshot, SnapshotMeta
from raft.observer import RaftObserver
from raft.ready import Ready, Role
from raft.storage import Storage
from raft.transport import Transport

log = logging.getLogger(__name__)


class PersistentStorage(Storage, Protocol):
    """Storage the driver can write: the Ready contract's persist step, and snapshots."""

    def persist(self, ready: Ready) -> None: ...

    def stage_snapshot(self, meta: SnapshotMeta, data: bytes) -> None:
        """Prepare :meth:`save_snapshot` (write the data out); may run in a
        thread alongside the other calls."""
        ...

    def save_snapshot(self, meta: SnapshotMeta, data: bytes) -> None: ...

    def compact(self, index: int) -> None: ...


@dataclass(frozen=True)
class NodeConfig:
    raft: Config
    tick_interval: float = 0.1
    """Seconds per Raft tick (etcd: 100 ms heartbeat, election after 10 ticks)."""
    snapshot_count: int = 10_000
    """Applied entries between automatic snapshots."""
    snapshot_catchup_entries: int = 5_000
    """Entries kept in the log behind a snapshot, for followers slightly behind."""
    storage_in_thread: bool = True
    """Run the long storage calls (large persists, snapshot files, compaction)
    in a worker thread so the event loop keeps serving (False for in-memory
    storage, and under a mock clock, which would jump while a thread works)."""
    persist_inline_max_entries: int = 1
    """A Ready holding at most this many entries (and no snapshot) is
    persisted in the turn's own task, not a worker thread; see the module
    docstring."""
    max_pending_messages: int = 100_000
    """Incoming peer messages queued for the core before new ones are dropped."""
    commit_broadcast_delay: float | None = 0.005
    """Seconds a leader may keep a new commit index to itself, waiting for the
    next AppendEntries to carry it, before it sends it alone; ``None`` sends it
    at once (:attr:`raft.core.Config.eager_commit_broadcast`).  Followers apply
    (and serve serializable reads and watches) up to this much later in a
    quiet spell; under a stream of writes they handle half the messages.  It
    is kept well above a write's round trip: a lone client writing as fast
    as it can must not set it off after every write on a slow machine."""
    read_round_interval: float = 0.001
    """Least seconds between the starts of two ReadIndex rounds.  Under load,
    reads that arrive meanwhile share the next round, so a heartbeat round
    confirms many reads rather than two or three; a read after a quiet spell
    starts its round at once (so a lone client waits no longer)."""


@dataclass(frozen=True)
class ApplyBatch:
    """Work for the application, in log order: restore ``snapshot`` if set, then
    apply ``entries``."""

    snapshot: Snapshot | None
    entries: list[Entry]


Applier = Callable[[ApplyBatch], None]
"""Applies one batch to the application's state machine, in the turn (in the
node's task or an input's, see the module docstring): it must not block or
await (it may queue inputs: propose, read_index, ...)."""

ConfListener = Callable[[ConfState, bytes], None]
"""Told the membership in effect and the context of the newest conf change in
the log (b"" if none), whenever the membership changes (and once at start)."""


class LeadershipLost(RequestDropped):
    """The node stopped while a read was pending; it was not served."""


class _NodeStopped(RequestDropped):
    """The node stopped before the core saw the proposal."""


@dataclass
class _Waiter:
    done: trio.Event = dataclasses.field(default_factory=trio.Event)
    index: int | None = None
    error: Exception | None = None

    def resolve(self, index: int | None = None, error: Exception | None = None) -> None:
        self.index, self.error = index, error
        self.done.set()

    async def wait(self) -> int | None:
        await self.done.wait()
        if self.error is not None:
            raise self.error
        return self.index


ProposalOutcome = int | RequestDropped | None
"""What became of one proposal: its index on the leader, ``None`` when
forwarded to the leader, or the :class:`~raft.errors.RequestDropped` that
refused it (definitely not appended)."""

OutcomeListener = Callable[[list[ProposalOutcome]], None]
"""Told the outcome of every proposal of a batch, in order, in the turn that
proposes them (perhaps before :meth:`RaftNode.submit_batch` returns): it
must not block or await."""


@dataclass
class _ReadBatch:
    """The read round in flight: its context and every read waiting on it."""

    context: bytes
    waiters: list[_Waiter]
    ticks: int = 0


class RaftNode:
    def __init__(
        self,
        config: NodeConfig,
        storage: PersistentStorage,
        transport: Transport,
        rng: random.Random | None = None,
        observer: RaftObserver | None = None,
    ) -> None:
        self.config = config
        self.observer = observer or RaftObserver()
        self.storage = storage
        self.transport = transport
        initial = storage.snapshot()
        self._snapshot_index = initial.meta.index
        raft_config = dataclasses.replace(
            config.raft,
            applied=initial.meta.index,
            eager_commit_broadcast=config.commit_broadcast_delay is None,
        )
        self.core = RaftCore(raft_config, storage, rng or random.Random())
        self.id = raft_config.id
        send, receive = trio.open_memory_channel[ApplyBatch](math.inf)
        self._apply_send = send
        self.committed: trio.MemoryReceiveChannel[ApplyBatch] = receive
        self.apply: Applier | None = None
        """If set before :meth:`run`, every batch goes to it (in the turn,
        before the Ready is advanced) instead of to :attr:`committed`."""
        self._initial_batch = ApplyBatch(initial, []) if initial.meta.index > 0 else None

        self._wakeup = trio.Event()
        self._ticks = 0
        self._ticks_this_step = 0
        self._incoming: deque[Message] = deque()
        self._proposals: list[tuple[list[bytes], OutcomeListener]] = []
        self._stopped = False
        self._read_queue: list[_Waiter] = []
        self._read_batch: _ReadBatch | None = None
        self._read_counter = 0
        self._next_read_round = -math.inf
        """The earliest time the next read round may start."""
        self._commit_broadcast_at = math.inf
        """When the leader sends a commit index no message has carried yet."""
        self._transfers: list[int] = []
        self._conf_changes: list[tuple[ConfChange, _Waiter]] = []
        self.conf_listener: ConfListener | None = None
        """Called (in the turn, before any message goes out) when the
        membership changes, so the application can connect to new members
        before the leader sends them anything."""
        self._snapshots: list[tuple[SnapshotMeta, bytes, _Waiter]] = []
        self._campaign = False
        self.leader = 0
        self.role = Role.FOLLOWER
        self.leader_changes = 0
        self._leader_known = trio.Event()
        self._leadership_changed = trio.Event()
        self.dropped_messages = 0
        self.fsyncs = 0
        self._in_turn = True
        """A turn is under way, or the loop has not started or has stopped:
        inputs only queue and wake the node's task."""
        self._parked: Ready | None = None
        """A Ready an immediate turn left to the node's task (see the module docstring)."""
        self._failure: Exception | None = None
        """What an immediate turn raised, for the node's task to raise."""
        self._idle_wait: trio.CancelScope | None = None
        """The node's task's wait for its next turn (its deadline follows the timers)."""

    # -- Inputs from other tasks ------------------------------------------------------

    def deliver(self, message: Message) -> None:
        """Queue a message from a peer for the turn :meth:`drained` brings
        about (the transport calls both: :class:`~raft.transport.Inbox`)."""
        if len(self._incoming) >= self.config.max_pending_messages:
            self.dropped_messages += 1
            return
        self._incoming.append(message)

    def drained(self) -> None:
        """The transport has delivered everything it received: take the turn
        now if the node is between turns, else wake the node's task (see the
        module docstring)."""
        self._take_turn_now()

    async def propose(self, data: bytes) -> int | None:
        """Hand ``data`` to the core; returns its index on the leader, ``None``
        when forwarded.  Raises :class:`~raft.errors.ProposalDropped` if it was
        refused (definitely not appended)."""
        (outcome,) = await self.propose_batch([data])
        if isinstance(outcome, RequestDropped):
            raise outcome
        return outcome

    async def propose_batch(self, data: list[bytes]) -> list[ProposalOutcome]:
        """Hand every item of ``data`` to the core in one turn, in order, and
        return their outcomes (see :data:`ProposalOutcome`).  Raises
        :class:`~raft.errors.RequestDropped` if the node stopped before the
        core saw them (none appended)."""
        done = trio.Event()
        result: list[ProposalOutcome] = []

        def settle(outcomes: list[ProposalOutcome]) -> None:
            result.extend(outcomes)
            done.set()

        self.submit_batch(data, settle)
        await done.wait()
        if result and isinstance(result[0], _NodeStopped):
            raise result[0]  # every outcome is: none was appended
        return result

    def submit_batch(self, data: list[bytes], on_outcomes: OutcomeListener) -> None:
        """Hand every item of ``data`` to the core's next turn (taken at once
        if nothing is in flight, see the module docstring), without waiting:
        ``on_outcomes`` is told what became of each, in that turn.  If the
        node stops first (or has stopped), every outcome is a
        :class:`~raft.errors.RequestDropped` and none was appended."""
        if self._stopped:
            on_outcomes([_NodeStopped("node stopped")] * len(data))
            return
        self._proposals.append((data, on_outcomes))
        log = self.core.log
        if len(self._proposals) == 1 and log.committed == log.last_index():
            self._take_turn_now()  # nothing in flight: no batch to wait for
        else:
            self._wakeup.set()

    async def propose_conf_change(self, change: ConfChange) -> int:
        """Append a membership change on the leader; returns its log index.
        Raises :class:`~raft.errors.ProposalDropped` if it was refused
        (definitely not appended): see :meth:`RaftCore.propose_conf_change`."""
        waiter = _Waiter()
        self._conf_changes.append((change, waiter))
        self._wakeup.set()
        index = await waiter.wait()
        assert index is not None
        return index

    def conf_state(self) -> ConfState:
        return self.core.conf_state()

    async def read_index(self) -> int:
        """A linearizable read point: once the application has applied the
        returned index, its state reflects every write acknowledged before this
        call.  Raises :class:`~raft.errors.ReadIndexDropped` when no leader is
        known.

        One ReadIndex round is in flight at a time; every read that arrives
        meanwhile joins the next round, so a busy member confirms thousands of
        reads with one heartbeat round (as etcd's linearizable read loop does).
        A round whose answer is lost (leader change, dropped message) is
        retried, never failed: a read has no effect, so asking again is safe.
        """
        waiter = _Waiter()
        self._read_queue.append(waiter)
        self._wakeup.set()
        index = await waiter.wait()
        assert index is not None
        return index

    def transfer_leadership(self, to: int) -> None:
        self._transfers.append(to)
        self._wakeup.set()

    def campaign(self) -> None:
        self._campaign = True
        self._wakeup.set()

    async def save_snapshot(self, index: int, data: bytes) -> None:
        """Persist ``data``, the application's state after applying ``index``,
        as a snapshot, then compact the log behind it (keeping
        ``snapshot_catchup_entries``).

        The node goes on meanwhile: the data is written out in a worker thread
        (:meth:`PersistentStorage.stage_snapshot`), and only recording it waits
        for the node's turn with the storage."""
        if index <= self._snapshot_index:
            return
        meta = self._snapshot_meta(index)
        await self._storage_call(self.storage.stage_snapshot, meta, data)
        waiter = _Waiter()
        self._snapshots.append((meta, data, waiter))
        self._wakeup.set()
        await waiter.wait()

    def snapshot_due(self, applied_index: int) -> bool:
        return applied_index - self._snapshot_index >= self.config.snapshot_count

    async def wait_leadership_change(self) -> None:
        """Return at the next change of leader or of this node's role."""
        await self._leadership_changed.wait()

    async def wait_for_leader(self) -> int:
        while self.leader == 0:
            await self._leader_known.wait()
        return self.leader

    def status(self) -> Status:
        return self.core.status()

    # -- The loop -----------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(self.transport.run, self)
            nursery.start_soon(self._ticker)
            self._notify_conf(self.core.conf_state())
            if self._initial_batch is not None:
                self._hand_over(self._initial_batch)
                self._initial_batch = None
            task_status.started()
            try:
                await self._loop()
            finally:
                self._stopped = True
                self._in_turn = True
                self._fail_reads(LeadershipLost("node stopped"))
                for data, on_outcomes in self._proposals:
                    on_outcomes([_NodeStopped("node stopped")] * len(data))
                for _, waiter in self._conf_changes:
                    waiter.resolve(error=RequestDropped("node stopped"))
                nursery.cancel_scope.cancel()

    async def _ticker(self) -> None:
        while True:
            await trio.sleep(self.config.tick_interval)
            self._ticks += 1
            self._wakeup.set()

    async def _loop(self) -> None:
        self._in_turn = False
        while True:
            with trio.move_on_at(self._next_deadline()) as idle_wait:
                self._idle_wait = idle_wait
                await self._wakeup.wait()
            self._idle_wait = None
            self._wakeup = trio.Event()
            if self._failure is not None:
                raise self._failure
            self._in_turn = True
            try:
                await self._take_turn()
            finally:
                self._in_turn = False

    def _next_deadline(self) -> float:
        """When the node's task must take a turn even if nothing wakes it."""
        deadline = self._commit_broadcast_at
        if self._read_queue and self._read_batch is None:
            # Reads wait for the round interval to pass (see NodeConfig).
            deadline = min(deadline, self._next_read_round)
        return deadline

    async def _take_turn(self) -> None:
        parked, self._parked = self._parked, None
        if parked is not None:
            await self._handle_ready(parked)
        self._broadcast_commit_if_due()
        await self._step_inputs()
        while self.core.has_ready():
            await self._handle_ready(self.core.ready())
        self._schedule_commit_broadcast()

    def _take_turn_now(self) -> None:
        """Take a turn in the caller's task if the node is between turns,
        else wake the node's task; a Ready that must wait (see
        :meth:`_persists_inline`) is parked for the node's task.  Never
        awaits (a lone entry's fsync does block the thread, as in any turn)."""
        if self._in_turn or self._snapshots:
            self._wakeup.set()
            return
        self._in_turn = True
        try:
            self._broadcast_commit_if_due()
            self._step_inputs_now()
            core = self.core
            while core.has_ready():
                ready = core.ready()
                if not self._persists_inline(ready):
                    self._parked = ready
                    self._wakeup.set()
                    return
                self._handle_ready_now(ready)
            self._schedule_commit_broadcast()
            idle_wait = self._idle_wait
            if idle_wait is not None and idle_wait.deadline != (deadline := self._next_deadline()):
                idle_wait.deadline = deadline
        except Exception as error:
            self._failure = error  # the node's task raises it: the node stops as if it had
            self._wakeup.set()
        finally:
            self._in_turn = self._parked is not None or self._failure is not None

    def _broadcast_commit_if_due(self) -> None:
        at = self._commit_broadcast_at
        if at != math.inf and trio.current_time() >= at:
            self._commit_broadcast_at = math.inf  # rescheduled at the turn's end if still due
            self.core.broadcast_commit()

    def _schedule_commit_broadcast(self) -> None:
        delay = self.config.commit_broadcast_delay
        if delay is None or not self.core.commit_broadcast_due():
            self._commit_broadcast_at = math.inf
        elif self._commit_broadcast_at == math.inf:
            self._commit_broadcast_at = trio.current_time() + delay

    async def _step_inputs(self) -> None:
        self._step_inputs_now()
        snapshots, self._snapshots = self._snapshots, []
        for meta, data, waiter in snapshots:
            await self._save_snapshot(meta, data)
            waiter.resolve()

    def _step_inputs_now(self) -> None:
        """Step every queued input but the snapshots to record (which wait)."""
        core = self.core
        for _ in range(self._ticks):
            core.tick()
        self._ticks_this_step, self._ticks = self._ticks, 0
        while self._incoming:
            core.step(self._incoming.popleft())
        if self._campaign:
            self._campaign = False
            core.campaign()
        proposals, self._proposals = self._proposals, []
        for batch, on_outcomes in proposals:
            outcomes: list[ProposalOutcome] = []
            for data in batch:
                try:
                    outcomes.append(core.propose(data))
                except RequestDropped as error:
                    outcomes.append(error)
            on_outcomes(outcomes)
        changes, self._conf_changes = self._conf_changes, []
        for change, waiter in changes:
            try:
                waiter.resolve(index=core.propose_conf_change(change))
            except RequestDropped as error:
                waiter.resolve(error=error)
        self._start_read_round()
        transfers, self._transfers = self._transfers, []
        for target in transfers:
            try:
                core.transfer_leadership(target)
            except RequestDropped:
                log.info("node %d: no leader to transfer leadership from", self.id)

    async def _handle_ready(self, ready: Ready) -> None:
        if self._persists_inline(ready):
            self._handle_ready_now(ready)
            return
        self._before_persist(ready)
        started = time.perf_counter()
        await self._storage_call(self.storage.persist, ready)
        self._synced(started)
        self._after_persist(ready)

    def _handle_ready_now(self, ready: Ready) -> None:
        """:meth:`_handle_ready` for a Ready that :meth:`_persists_inline`."""
        self._before_persist(ready)
        if ready.must_sync:
            started = time.perf_counter()
            self.storage.persist(ready)
            self._synced(started)
        elif ready.snapshot is not None or ready.entries or ready.hard_state is not None:
            self.storage.persist(ready)
        self._after_persist(ready)

    def _synced(self, started: float) -> None:
        """Count a persist with an fsync that began at ``started``."""
        self.fsyncs += 1
        self.observer.wal_synced(time.perf_counter() - started)

    def _before_persist(self, ready: Ready) -> None:
        if ready.conf_state is not None:
            self._notify_conf(ready.conf_state)
        self.transport.send(ready.messages)

    def _after_persist(self, ready: Ready) -> None:
        self.transport.send(ready.persisted_messages)
        if ready.snapshot is not None:
            self._snapshot_index = ready.snapshot.meta.index
        if ready.snapshot is not None or ready.committed_entries:
            self._hand_over(ApplyBatch(ready.snapshot, ready.committed_entries))
        batch = self._read_batch
        for read_state in ready.read_states:
            if batch is not None and read_state.context == batch.context:
                for waiter in batch.waiters:
                    waiter.resolve(index=read_state.index)
                self._read_batch = batch = None
                self._wakeup.set()  # start the next round for reads that queued meanwhile
        if ready.soft_state is not None:
            self._on_soft_state(ready.soft_state.leader, ready.soft_state.role)
        self.core.advance(ready)

    def _persists_inline(self, ready: Ready) -> bool:
        """Is ``ready`` persisted without waiting: no fsync, or one small
        enough for the turn's own task (see the module docstring)?"""
        return (
            not ready.must_sync
            or not self.config.storage_in_thread
            or (
                ready.snapshot is None
                and len(ready.entries) <= self.config.persist_inline_max_entries
            )
        )

    def _hand_over(self, batch: ApplyBatch) -> None:
        if self.apply is not None:
            self.apply(batch)
        else:
            self._apply_send.send_nowait(batch)

    def _notify_conf(self, conf: ConfState) -> None:
        if self.conf_listener is not None:
            self.conf_listener(conf, self.core.conf_context())

    async def _storage_call(self, function: Callable[..., None], *args: object) -> None:
        if self.config.storage_in_thread:
            await trio.to_thread.run_sync(function, *args)
        else:
            function(*args)

    def _on_soft_state(self, leader: int, role: Role) -> None:
        if leader != self.leader:
            log.info("node %d: leader is now %d (term %d)", self.id, leader, self.core.term)
            if leader != 0:
                self.leader_changes += 1
            # A read round routed to the old leader will never be answered: ask again.
            self._retry_read_round()
        if leader != 0:
            self._leader_known.set()
        elif self.leader != 0:
            self._leader_known = trio.Event()
        self.leader, self.role = leader, role
        self._leadership_changed.set()
        self._leadership_changed = trio.Event()

    def _start_read_round(self) -> None:
        batch = self._read_batch
        if batch is not None:
            batch.ticks += self._ticks_this_step
            if batch.ticks < 2 * self.config.raft.election_tick:
                return
            log.info("node %d: read round unanswered, asking again", self.id)
            self._retry_read_round()
        if not self._read_queue:
            return
        now = trio.current_time()
        if now < self._next_read_round:
            return  # the loop comes back at _next_read_round
        self._next_read_round = now + self.config.read_round_interval
        self._read_counter += 1
        context = self._read_counter.to_bytes(8, "big")
        waiters, self._read_queue = self._read_queue, []
        try:
            self.core.read_index(context)
        except ReadIndexDropped as error:
            for waiter in waiters:
                waiter.resolve(error=error)
            return
        self._read_batch = _ReadBatch(context, waiters)

    def _retry_read_round(self) -> None:
        if self._read_batch is not None:
            self._read_queue[:0] = self._read_batch.waiters
            self._read_batch = None
            self._wakeup.set()

    def _fail_reads(self, error: Exception) -> None:
        waiters = self._read_queue + (self._read_batch.waiters if self._read_batch else [])
        for waiter in waiters:
            if not waiter.done.is_set():
                waiter.resolve(error=error)
        self._read_queue, self._read_batch = [], None

    def _snapshot_meta(self, index: int) -> SnapshotMeta:
        core = self.core
        # The membership as of ``index``, not the newest one: a conf change
        # appended after ``index`` is not part of this snapshot's state.
        return SnapshotMeta(index=index, term=core.log.term(index), conf=core.conf_state_at(index))

    async def _save_snapshot(self, meta: SnapshotMeta, data: bytes) -> None:
        index = meta.index
        if index <= self._snapshot_index:
            return
        await self._storage_call(self.storage.save_snapshot, meta, data)
        self._snapshot_index = index
        compact_to = index - self.config.snapshot_catchup_entries
        if compact_to >= self.storage.first_index():
            await self._storage_call(self.storage.compact, compact_to)
        log.info("node %d: snapshot at %d, log compacted to %d", self.id, index, compact_to)
