"""Small helpers for testing the sans-I/O Raft core.

* :func:`make_core` builds a :class:`RaftCore` on a :class:`MemoryStorage` with a
  seeded rng.  It defaults to *plain paper Raft* (``pre_vote=False``,
  ``check_quorum=False``) so each paper claim is tested on its own; tests of the
  extensions switch them on explicitly.
* :func:`drive` runs the Ready loop of one core (send, persist, send persisted,
  apply, advance) and returns what came out.
* :class:`Network` is a tiny synchronous in-memory network in the style of
  etcd's ``raft_test.go``: FIFO delivery until quiet, links that can be cut,
  nodes that can be isolated, crashed and restarted.  It has no fault injection
  beyond that (the simulator in ``raft/sim`` does).
"""

from __future__ import annotations

import random
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import Any, NamedTuple, TypeVar

from raft.core import Config, RaftCore
from raft.messages import (
    AppendEntries,
    AppendResponse,
    ConfState,
    Entry,
    HardState,
    Message,
    RequestVote,
    VoteResponse,
)
from raft.ready import ReadState, Ready, Role
from raft.storage import MemoryStorage

M = TypeVar("M")

_STORAGE: weakref.WeakKeyDictionary[RaftCore, MemoryStorage] = weakref.WeakKeyDictionary()


# -- building cores -------------------------------------------------------------------


def entries(terms: Iterable[int], start: int = 1, data: bytes = b"") -> list[Entry]:
    """Entries with the given terms at consecutive indexes from ``start``."""
    return [Entry(term=t, index=start + i, data=data) for i, t in enumerate(terms)]


def make_storage(
    peers: Sequence[int] = (1, 2, 3),
    terms: Iterable[int] = (),
    *,
    term: int | None = None,
    vote: int = 0,
    commit: int = 0,
) -> MemoryStorage:
    """A MemoryStorage for a cluster of ``peers`` already holding a log whose
    entries have ``terms``; the hard-state term defaults to the last entry's term."""
    storage = MemoryStorage(ConfState(voters=tuple(peers)))
    log = entries(terms)
    storage.append(log)
    if term is None:
        term = log[-1].term if log else 0
    storage.set_hard_state(HardState(term=term, vote=vote, commit=commit))
    return storage


def make_core(
    id: int,
    peers: Sequence[int] = (1, 2, 3),
    storage: MemoryStorage | None = None,
    *,
    election_tick: int = 10,
    heartbeat_tick: int = 1,
    pre_vote: bool = False,
    check_quorum: bool = False,
    seed: int | None = None,
    **config: Any,
) -> RaftCore:
    """A core for node ``id``; the rng is seeded with ``seed`` (default: ``id``)."""
    if storage is None:
        storage = make_storage(peers)
    cfg = Config(
        id=id,
        election_tick=election_tick,
        heartbeat_tick=heartbeat_tick,
        pre_vote=pre_vote,
        check_quorum=check_quorum,
        **config,
    )
    core = RaftCore(cfg, storage, random.Random(id if seed is None else seed))
    _STORAGE[core] = storage
    return core


def storage_of(core: RaftCore) -> MemoryStorage:
    return _STORAGE[core]


# -- the Ready loop -------------------------------------------------------------------


class Output(NamedTuple):
    """What one :func:`drive` call produced, in order."""

    messages: list[Message]
    applied: list[Entry]
    read_states: list[ReadState]


def handle_ready(storage: MemoryStorage, core: RaftCore, rd: Ready, out: Output) -> None:
    """Steps 1-5 of the Ready contract for one Ready already taken from ``core``."""
    out.messages.extend(rd.messages)
    storage.persist(rd)
    out.messages.extend(rd.persisted_messages)
    out.applied.extend(rd.committed_entries)
    out.read_states.extend(rd.read_states)
    core.advance(rd)


def drive(core: RaftCore, storage: MemoryStorage | None = None) -> Output:
    """Run the Ready loop until the core has nothing more to say."""
    storage = storage if storage is not None else storage_of(core)
    out = Output([], [], [])
    for _ in range(1000):
        if not core.has_ready():
            return out
        handle_ready(storage, core, core.ready(), out)
    raise AssertionError(f"node {core.id} never stopped producing Ready")


# -- looking at messages and logs --------------------------------------------------------


def only(messages: Iterable[object], cls: type[M], **fields: Any) -> list[M]:
    """The messages of type ``cls`` whose attributes equal ``fields``."""
    return [
        m
        for m in messages
        if isinstance(m, cls) and all(getattr(m, k) == v for k, v in fields.items())
    ]


def log_entries(core: RaftCore) -> list[Entry]:
    """The core's whole log (the tests never compact)."""
    return list(core.log.entries(1, core.log.last_index() + 1))


def log_terms(core: RaftCore) -> list[int]:
    return [e.term for e in log_entries(core)]


def payloads(applied: Iterable[Entry]) -> list[bytes]:
    """Data of applied entries, leaving out the leaders' empty no-ops."""
    return [e.data for e in applied if e.data]


def become_leader(core: RaftCore) -> Output:
    """Make a lone ``core`` leader by granting every (pre-)vote it asks for.

    Returns the output of the Ready in which it became leader (its first
    AppendEntries, carrying the no-op)."""
    core.campaign()
    for _ in range(5):
        out = drive(core)
        if core.role is Role.LEADER:
            return out
        for m in only(out.messages, RequestVote):
            core.step(
                VoteResponse(frm=m.to, to=core.id, term=m.term, reject=False, pre_vote=m.pre_vote)
            )
    raise AssertionError(f"node {core.id} did not become leader")


def ack(leader: RaftCore, frm: int, index: int) -> AppendResponse:
    """A successful append acknowledgement from ``frm`` up to ``index``."""
    return AppendResponse(frm=frm, to=leader.id, term=leader.term, index=index)


def append(
    frm: int,
    to: int,
    term: int,
    prev: tuple[int, int],
    ents: list[Entry] | None = None,
    commit: int = 0,
) -> AppendEntries:
    """An AppendEntries with ``prev = (prev_index, prev_term)``."""
    return AppendEntries(
        frm=frm,
        to=to,
        term=term,
        prev_index=prev[0],
        prev_term=prev[1],
        entries=list(ents or []),
        commit=commit,
    )


# -- a tiny network -------------------------------------------------------------------


class Network:
    """Cores wired together through a FIFO queue.

    ``stabilize()`` drives every core and delivers queued messages until nothing
    is left in flight; every delivered message is recorded in ``delivered``.
    ``applied`` and ``read_states`` accumulate per node.
    """

    def __init__(
        self,
        peers: Sequence[int] = (1, 2, 3),
        *,
        logs: dict[int, Sequence[int]] | None = None,
        terms: dict[int, int] | None = None,
        **config: Any,
    ) -> None:
        self.peers = tuple(peers)
        self.config = config
        self.storages: dict[int, MemoryStorage] = {}
        self.nodes: dict[int, RaftCore] = {}
        self.applied: dict[int, list[Entry]] = {}
        self.read_states: dict[int, list[ReadState]] = {}
        self.in_flight: deque[Message] = deque()
        self.delivered: list[Message] = []
        self.down: set[int] = set()
        self._blocked: set[tuple[int, int]] = set()
        self._ignored: set[type] = set()
        for id in self.peers:
            self.storages[id] = make_storage(
                self.peers, (logs or {}).get(id, ()), term=(terms or {}).get(id)
            )
            self.restart(id)

    # links
    def drop(self, frm: int, to: int) -> None:
        """Lose every message from ``frm`` to ``to`` (one way)."""
        self._blocked.add((frm, to))

    def cut(self, a: int, b: int) -> None:
        self.drop(a, b)
        self.drop(b, a)

    def isolate(self, id: int) -> None:
        for other in self.peers:
            if other != id:
                self.cut(id, other)

    def ignore(self, cls: type) -> None:
        """Lose every message of type ``cls``."""
        self._ignored.add(cls)

    def recover(self) -> None:
        self._blocked.clear()
        self._ignored.clear()

    # nodes
    def crash(self, id: int) -> None:
        """Throw the core away, keeping what it persisted; messages to it are lost."""
        self.down.add(id)

    def restart(self, id: int) -> RaftCore:
        self.down.discard(id)
        self.nodes[id] = make_core(id, self.peers, self.storages[id], **self.config)
        self.applied[id] = []
        self.read_states[id] = []
        return self.nodes[id]

    def live(self) -> list[int]:
        return [id for id in self.peers if id not in self.down]

    def leaders(self) -> list[int]:
        return [id for id in self.live() if self.nodes[id].role is Role.LEADER]

    # running
    def _collect(self, id: int, out: Output) -> None:
        self.in_flight.extend(out.messages)
        self.applied[id].extend(out.applied)
        self.read_states[id].extend(out.read_states)

    def ready(self, id: int) -> Ready:
        """Handle exactly one Ready of node ``id`` (queueing, not delivering, its
        messages) and return it for inspection."""
        core = self.nodes[id]
        out = Output([], [], [])
        rd = core.ready()
        handle_ready(self.storages[id], core, rd, out)
        self._collect(id, out)
        return rd

    def drive_all(self) -> None:
        for id in self.live():
            self._collect(id, drive(self.nodes[id], self.storages[id]))

    def deliver(self, m: Message) -> bool:
        if m.to in self.down or (m.frm, m.to) in self._blocked or type(m) in self._ignored:
            return False
        self.delivered.append(m)
        self.nodes[m.to].step(m)
        return True

    def stabilize(self, max_rounds: int = 10_000) -> None:
        for _ in range(max_rounds):
            self.drive_all()
            if not self.in_flight:
                return
            batch = list(self.in_flight)
            self.in_flight.clear()
            for m in batch:
                self.deliver(m)
        raise AssertionError("network did not settle")

    def send(self, *messages: Message) -> None:
        self.in_flight.extend(messages)
        self.stabilize()

    def tick(self, n: int = 1, ids: Iterable[int] | None = None) -> None:
        """``n`` rounds of: tick the nodes (default: all live ones), then stabilize."""
        for _ in range(n):
            for id in ids if ids is not None else self.live():
                self.nodes[id].tick()
            self.stabilize()

    def tick_until(
        self, done: Callable[[], bool], max_ticks: int, ids: Iterable[int] | None = None
    ) -> int:
        """Tick until ``done()``; returns the number of ticks it took."""
        ids = list(ids) if ids is not None else None
        for n in range(max_ticks + 1):
            if done():
                return n
            self.tick(1, ids)
        raise AssertionError(f"condition not reached within {max_ticks} ticks")

    def campaign(self, id: int) -> None:
        self.nodes[id].campaign()
        self.stabilize()

    def propose(self, id: int, data: bytes) -> int | None:
        index = self.nodes[id].propose(data)
        self.stabilize()
        return index
