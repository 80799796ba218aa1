"""What a leader knows about each follower's log, and how fast it may send.

Follows the flow-control design of etcd-io/raft (``tracker/``):

* **probe**: the leader does not know where the follower's log matches; it
  sends one AppendEntries and waits for the answer (or the next heartbeat)
  before sending another.
* **replicate**: the logs are known to match up to ``match``; the leader
  streams entries optimistically (``next`` runs ahead of ``match``), with at
  most ``max_inflight`` unacknowledged messages in flight.
* **snapshot**: the follower needs entries the leader has compacted; nothing is
  appended until the snapshot transfer ends.
"""

from __future__ import annotations

import enum
from collections import deque

from raft.snapshot_transfer import SnapshotSender


class ProgressState(enum.Enum):
    PROBE = "probe"
    REPLICATE = "replicate"
    SNAPSHOT = "snapshot"


class Inflights:
    """A bounded window of unacknowledged AppendEntries, by last index sent."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("in-flight capacity must be at least 1")
        self.capacity = capacity
        self._last_indexes: deque[int] = deque()

    def __len__(self) -> int:
        return len(self._last_indexes)

    def full(self) -> bool:
        return len(self._last_indexes) >= self.capacity

    def add(self, last_index: int) -> None:
        if self.full():
            raise OverflowError("in-flight window is full")
        self._last_indexes.append(last_index)

    def free_through(self, index: int) -> None:
        """Forget every message whose entries are acknowledged up to ``index``."""
        while self._last_indexes and self._last_indexes[0] <= index:
            self._last_indexes.popleft()

    def free_first(self) -> None:
        """Forget the oldest message (its acknowledgement may have been lost)."""
        if self._last_indexes:
            self._last_indexes.popleft()

    def reset(self) -> None:
        self._last_indexes.clear()


class Progress:
    """The leader's view of one peer (including itself)."""

    def __init__(self, next_index: int, max_inflight: int, is_learner: bool = False) -> None:
        self.match = 0
        self.next = next_index
        self.state = ProgressState.PROBE
        self.probe_sent = False
        """In probe state: an AppendEntries is outstanding, wait before sending more."""
        self.inflights = Inflights(max_inflight)
        self.recent_active = False
        """Heard from since the last CheckQuorum round."""
        self.pending_snapshot = 0
        self.snapshot_sender: SnapshotSender | None = None
        """In snapshot state: the transfer under way."""
        self.is_learner = is_learner
        self.commit_sent = 0
        """The highest commit index sent to this peer that it can act on (at
        most the last entry it was sent): whether it still needs to hear of
        the leader's commit index (see :meth:`RaftCore.commit_broadcast_due`)."""

    def __repr__(self) -> str:
        return (
            f"Progress(match={self.match}, next={self.next}, state={self.state.value}, "
            f"inflight={len(self.inflights)}, probe_sent={self.probe_sent})"
        )

    def become_probe(self) -> None:
        if self.state is ProgressState.SNAPSHOT:
            self.next = max(self.match + 1, self.pending_snapshot + 1)
        else:
            self.next = self.match + 1
        self.state = ProgressState.PROBE
        self.probe_sent = False
        self.pending_snapshot = 0
        self.snapshot_sender = None
        self.inflights.reset()

    def become_replicate(self) -> None:
        self.state = ProgressState.REPLICATE
        self.next = self.match + 1
        self.probe_sent = False
        self.pending_snapshot = 0
        self.snapshot_sender = None
        self.inflights.reset()

    def become_snapshot(self, sender: SnapshotSender) -> None:
        self.state = ProgressState.SNAPSHOT
        self.pending_snapshot = sender.index
        self.snapshot_sender = sender
        self.probe_sent = False
        self.inflights.reset()

    def is_paused(self) -> bool:
        """Must the leader hold back AppendEntries with entries to this peer?"""
        if self.state is ProgressState.PROBE:
            return self.probe_sent
        if self.state is ProgressState.REPLICATE:
            return self.inflights.full()
        return True

    def sent_entries(self, last_index: int | None) -> None:
        """Record an AppendEntries just sent; ``last_index`` of its entries, or None if empty."""
        if self.state is ProgressState.REPLICATE:
            if last_index is not None:
                self.next = last_index + 1
                self.inflights.add(last_index)
        elif self.state is ProgressState.PROBE:
            self.probe_sent = True

    def maybe_update(self, index: int) -> bool:
        """A successful append response up to ``index``; returns whether match advanced."""
        updated = index > self.match
        if updated:
            self.match = index
            self.probe_sent = False
        self.next = max(self.next, index + 1)
        return updated

    def maybe_decrease_to(self, rejected: int, hint_index: int) -> bool:
        """A rejection of the append after ``rejected``; False if it is stale.

        ``hint_index`` is the leader's estimate of the last index where the logs
        may match (already translated through the follower's conflict hint).
        """
        if self.state is ProgressState.REPLICATE:
            if rejected <= self.match:
                return False
            self.next = self.match + 1
            return True
        if self.next - 1 != rejected:
            return False
        self.next = max(min(rejected, hint_index + 1), self.match + 1)
        self.probe_sent = False
        return True
