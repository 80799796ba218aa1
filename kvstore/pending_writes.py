"""Writes a member proposed, until each is answered.

Writes are proposed in groups (the writes a connection received together) and
a group is answered once, when every write in it is *settled*: applied (the
state machine's response), refused by Raft (the outcome says why), or given
up on (the leader changed, the member stopped), or when its deadline passes.
Answering is a callback run wherever the last write settles, usually in the
Raft node's task right after applying, so an answer goes out without waking
a task per group; one task (:meth:`PendingWrites.expire`) times out the groups
that outlive their deadline.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

import trio

from kvstore.api import Error, Response
from raft.node import ProposalOutcome


class PendingWrite:
    """One proposed write."""

    __slots__ = ("group", "outcome", "response", "settled", "term")

    def __init__(self, group: WriteGroup, term: int) -> None:
        self.group = group
        self.term = term
        """The Raft term when it was proposed."""
        self.outcome: ProposalOutcome = None
        """Its index, ``None`` (forwarded, or not handed to Raft yet), or why Raft refused it."""
        self.response: Response | Error | None = None
        self.settled = False

    def settle(self, response: Response | Error | None = None) -> None:
        """Applied with ``response``, or (``None``) given up on; idempotent."""
        if not self.settled:
            self.settled, self.response = True, response
            self.group.one_settled()


class WriteGroup:
    """Writes proposed together, answered together by ``on_finished``."""

    __slots__ = ("_on_finished", "deadline", "finished", "remaining", "seqs", "timed_out", "writes")

    def __init__(
        self, seqs: list[int], term: int, deadline: float, on_finished: Callable[[WriteGroup], None]
    ) -> None:
        self.seqs = seqs
        self.writes = [PendingWrite(self, term) for _ in seqs]
        self.deadline = deadline
        self.remaining = len(seqs)
        self.finished = False
        self.timed_out = False
        self._on_finished = on_finished

    def one_settled(self) -> None:
        self.remaining -= 1
        if self.remaining == 0:
            self.finish()

    def finish(self) -> None:
        """Answer the group now (once), settled or not."""
        if not self.finished:
            self.finished = True
            self._on_finished(self)


class PendingWrites:
    """Every group of writes not yet answered, by sequence number."""

    def __init__(self) -> None:
        self._by_seq: dict[int, PendingWrite] = {}
        self._groups: deque[WriteGroup] = deque()
        """In order of their deadlines (they are all ``now + timeout``)."""
        self._group_added = trio.Event()

    def __len__(self) -> int:
        return len(self._by_seq)

    def open_group(
        self,
        seqs: list[int],
        term: int,
        deadline: float,
        on_finished: Callable[[WriteGroup], None],
    ) -> WriteGroup:
        """A group for the writes numbered ``seqs``; ``on_finished`` is called
        once, after they are forgotten here."""

        def finished(group: WriteGroup) -> None:
            for seq in group.seqs:
                self._by_seq.pop(seq, None)
            on_finished(group)

        group = WriteGroup(seqs, term, deadline, finished)
        self._by_seq.update(zip(seqs, group.writes, strict=True))
        while self._groups and self._groups[0].finished:
            self._groups.popleft()  # keeps the queue as short as what is in flight
        self._groups.append(group)
        self._group_added.set()
        if not seqs:
            group.finish()
        return group

    def settle(self, seq: int, response: Response | Error) -> None:
        """Write ``seq`` was applied with ``response`` (if it is still waited for)."""
        write = self._by_seq.get(seq)
        if write is not None:
            write.settle(response)

    def give_up_older_than(self, term: int) -> None:
        """Settle, unapplied, every write proposed before ``term``."""
        for write in list(self._by_seq.values()):
            if write.term < term:
                write.settle()

    def give_up_all(self) -> None:
        for write in list(self._by_seq.values()):
            write.settle()

    async def expire(self) -> None:
        """Answer every group still unanswered at its deadline; runs forever."""
        groups = self._groups
        while True:
            while groups and groups[0].finished:
                groups.popleft()
            if not groups:
                self._group_added = trio.Event()
                await self._group_added.wait()
                continue
            oldest = groups[0]
            await trio.sleep_until(oldest.deadline)
            if not oldest.finished:
                oldest.timed_out = True
                oldest.finish()
