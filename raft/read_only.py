"""ReadIndex bookkeeping on the leader (Raft thesis §6.4).

A read request is recorded with the commit index at the moment it arrives.  It
may be served once the leader has confirmed, with a heartbeat round answered by
a quorum, that it was still leader *after* the request arrived.  Requests that
arrive before a round's heartbeats leave the node share that round; and a
quorum for a later round also confirms every earlier one, so rounds may finish
out of order without delaying anything.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field

from raft import quorum


@dataclass(frozen=True)
class ReadRequest:
    index: int
    """The leader's commit index when the request arrived."""
    requester: int
    """The node that asked (the leader itself for a local read)."""
    context: bytes


@dataclass
class ReadRound:
    id: int
    requests: list[ReadRequest] = field(default_factory=list)
    acks: set[int] = field(default_factory=set)


class ReadOnly:
    def __init__(self) -> None:
        self._rounds: dict[int, ReadRound] = {}
        self._next_id = 1
        self._open: ReadRound | None = None

    def add(self, request: ReadRequest, self_id: int) -> None:
        """Record ``request``, joining the round whose heartbeats are not yet sent."""
        if self._open is None:
            self._open = ReadRound(self._next_id, acks={self_id})
            self._rounds[self._open.id] = self._open
            self._next_id += 1
        self._open.requests.append(request)

    def take_open_round(self) -> int:
        """Close the open round for joining and return its id (0 if none).

        The caller broadcasts heartbeats carrying this id right away.
        """
        if self._open is None:
            return 0
        round_id = self._open.id
        self._open = None
        return round_id

    def has_open_round(self) -> bool:
        return self._open is not None

    def latest_round(self) -> int:
        """The newest round already broadcast and still waiting (0 if none)."""
        for round_id in reversed(self._rounds):
            if self._open is None or round_id != self._open.id:
                return round_id
        return 0

    def ack(self, round_id: int, voter: int, voters: Collection[int]) -> list[ReadRequest]:
        """Record ``voter``'s answer to round ``round_id``; return the requests
        it releases (those of every round up to the first one with a quorum)."""
        target = self._rounds.get(round_id)
        if target is None or (self._open is not None and round_id == self._open.id):
            return []
        target.acks.add(voter)
        if not quorum.has_quorum(voters, target.acks):
            return []
        released: list[ReadRequest] = []
        for pending_id in list(self._rounds):
            if pending_id > round_id:
                break
            released.extend(self._rounds.pop(pending_id).requests)
        return released

    def release_all_local(self) -> list[ReadRequest]:
        """Single-voter cluster: everything is confirmed by the leader alone."""
        released = [request for round_ in self._rounds.values() for request in round_.requests]
        self.reset()
        return released

    def pending_count(self) -> int:
        return sum(len(round_.requests) for round_ in self._rounds.values())

    def reset(self) -> None:
        """Forget every pending read (leadership was lost)."""
        self._rounds.clear()
        self._open = None
