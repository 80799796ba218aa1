"""Hooks through which an application measures the driver and the transport.

``raft/`` knows no metrics library: :class:`~raft.node.RaftNode` and
:class:`~raft.transport.TcpTransport` call a :class:`RaftObserver` with plain
numbers, and the application turns them into whatever it exports (kvstore
makes Prometheus metrics of them).  The base class does nothing, so passing
none costs one no-op call per event.

Contract for implementations: every method is called on the trio thread that
runs the node, must return quickly (it sits on the write path) and must not
raise.

What the driver keeps as plain attributes instead (read them when you
export): :attr:`RaftNode.leader_changes`, :attr:`RaftNode.leader`, the core's
term and commit index, and the transport's :class:`~raft.transport.PeerStats`
(bytes sent and received, messages dropped, per peer).
"""

from __future__ import annotations

import time
from collections.abc import Callable


class RaftObserver:
    """Receives timings from the driver and the transport; ignores them by default."""

    def wal_synced(self, seconds: float) -> None:
        """One batch of entries and hard state was written and fsynced
        (group commit: one call per batch, not per entry), taking ``seconds``."""

    def peer_round_trip(self, peer: int, seconds: float) -> None:
        """A heartbeat to ``peer`` was answered ``seconds`` after it was sent."""


class RoundTripTimer:
    """Times heartbeat round trips, per peer, for :meth:`RaftObserver.peer_round_trip`.

    Only the leader sends heartbeats, so only the leader measures.  At most one
    heartbeat per peer is timed at a time: the first one sent while none is
    outstanding, answered by the peer's next heartbeat response.  Messages on
    one connection arrive in order and a follower answers heartbeats in
    order, so that response answers the timed heartbeat, unless it was lost:
    a timing outstanding for longer than ``give_up`` seconds is dropped
    unmeasured and the next heartbeat is timed instead (a loss just before
    that can overstate one sample by at most ``give_up``).
    """

    __slots__ = ("_clock", "_give_up", "_observe", "_outstanding")

    def __init__(
        self,
        observe: Callable[[int, float], None],
        give_up: float = 2.0,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self._observe = observe
        self._give_up = give_up
        self._clock = clock
        self._outstanding: dict[int, float] = {}

    def sent(self, peer: int) -> None:
        """A heartbeat is leaving for ``peer``."""
        now = self._clock()
        started = self._outstanding.get(peer)
        if started is None or now - started > self._give_up:
            self._outstanding[peer] = now

    def lost(self, peer: int) -> None:
        """A message to ``peer`` was dropped: the timed heartbeat may be among them."""
        self._outstanding.pop(peer, None)

    def answered(self, peer: int) -> None:
        """A heartbeat response arrived from ``peer``."""
        started = self._outstanding.pop(peer, None)
        if started is not None:
            self._observe(peer, self._clock() - started)
