"""Leases: the replicated table, and the leader's expiry clock.

Two halves, as in etcd, both sans-I/O:

* :class:`LeaseTable` is part of the replicated state (inside the state
  machine, in snapshots): which leases exist, their granted TTL, and which keys
  are attached.  Grant and revoke change it only through the Raft log.
* :class:`Lessor` runs on the leader only and holds *when* each lease expires,
  on the leader's monotonic clock (passed in; the lessor reads none).
  Keep-alives renew it there without touching the log.  A new leader calls
  :meth:`Lessor.promote`, which gives every lease its full TTL plus one
  election timeout, so a lease never expires early because leadership moved;
  the cost, documented for users, is that after a leader change a lease may
  live until TTL plus one election timeout after that change, however little of
  its TTL was left (no checkpoints, as etcd without lease checkpointing).  An
  expired lease is not deleted here: the server proposes a revoke through
  Raft, after confirming it is still the leader (etcd#15247: a stalled leader
  must not revoke every lease on waking).
"""

from __future__ import annotations

import heapq
import math

import msgspec

from kvstore.api import Event, EventType


class LeaseRecord(msgspec.Struct, array_like=True, frozen=True):
    id: int
    ttl: int
    """The TTL granted, in seconds."""


class LeaseTable:
    """The replicated lease state: deterministic, driven by applied commands."""

    def __init__(self) -> None:
        self._leases: dict[int, LeaseRecord] = {}
        self._keys: dict[int, set[bytes]] = {}

    def __contains__(self, lease_id: int) -> bool:
        return lease_id in self._leases

    def __len__(self) -> int:
        return len(self._leases)

    def get(self, lease_id: int) -> LeaseRecord | None:
        return self._leases.get(lease_id)

    def ids(self) -> list[int]:
        return sorted(self._leases)

    def records(self) -> list[LeaseRecord]:
        return [self._leases[lease_id] for lease_id in sorted(self._leases)]

    def keys(self, lease_id: int) -> list[bytes]:
        return sorted(self._keys.get(lease_id, ()))

    def grant(self, lease_id: int, ttl: int) -> None:
        self._leases[lease_id] = LeaseRecord(lease_id, ttl)
        self._keys.setdefault(lease_id, set())

    def revoke(self, lease_id: int) -> list[bytes]:
        """Forget the lease; returns the keys still attached (the caller deletes them)."""
        del self._leases[lease_id]
        return sorted(self._keys.pop(lease_id, ()))

    def track(self, events: list[Event]) -> None:
        """Keep key attachments in step with applied changes."""
        for event in events:
            previous = event.prev_kv.lease if event.prev_kv is not None else 0
            current = event.kv.lease if event.type is EventType.PUT else 0
            if previous == current:
                continue
            if previous:
                attached = self._keys.get(previous)
                if attached is not None:
                    attached.discard(event.kv.key)
            if current:
                self._keys.setdefault(current, set()).add(event.kv.key)

    def restore(self, records: list[LeaseRecord], attached: dict[bytes, int]) -> None:
        """Replace the table: ``attached`` maps each live key with a lease to it."""
        self._leases = {record.id: record for record in records}
        self._keys = {record.id: set() for record in records}
        for key, lease_id in attached.items():
            self._keys.setdefault(lease_id, set()).add(key)


class Lessor:
    """The leader's expiry clock.  Times are seconds on a monotonic clock."""

    def __init__(self) -> None:
        self.primary = False
        self._deadline: dict[int, float] = {}
        self._ttl: dict[int, int] = {}
        self._heap: list[tuple[float, int]] = []
        self._expiring: set[int] = set()
        """Leases :meth:`expired` reported: their revoke is on its way."""

    def promote(self, leases: list[LeaseRecord], now: float, extend: float) -> None:
        """This member became leader: every lease gets its full TTL plus ``extend``."""
        self.primary = True
        self._deadline.clear()
        self._ttl.clear()
        self._heap.clear()
        self._expiring.clear()
        for record in leases:
            self._set(record.id, record.ttl, now + record.ttl + extend)

    def demote(self) -> None:
        """Leadership lost: expiry is the next leader's business."""
        self.primary = False
        self._deadline.clear()
        self._ttl.clear()
        self._heap.clear()
        self._expiring.clear()

    def granted(self, lease_id: int, ttl: int, now: float) -> None:
        if self.primary:
            self._set(lease_id, ttl, now + ttl)

    def revoked(self, lease_id: int) -> None:
        self._deadline.pop(lease_id, None)
        self._ttl.pop(lease_id, None)
        self._expiring.discard(lease_id)

    def renew(self, lease_id: int, now: float) -> int | None:
        """A keep-alive: the lease's TTL, or None if this lessor does not know it
        or already reported it expired.  An expired lease's revoke may be on its
        way through Raft: answering "renewed" would promise a TTL the lease will
        not get (a keep-alive that waited in a paused leader's socket while the
        lease expired got exactly that; etcd's lessor refuses it too)."""
        ttl = self._ttl.get(lease_id)
        if ttl is None or lease_id in self._expiring:
            return None
        self._set(lease_id, ttl, now + ttl)
        return ttl

    def remaining(self, lease_id: int, now: float) -> int | None:
        """Whole seconds left (rounded up), or None if unknown."""
        deadline = self._deadline.get(lease_id)
        if deadline is None:
            return None
        return max(0, math.ceil(deadline - now))

    def expired(self, now: float, limit: int = 1000) -> list[int]:
        """Leases past their deadline (at most ``limit``), oldest first.

        They stay known until :meth:`revoked`, so a revoke that fails (lost
        leadership, timeout) is retried by the next call.
        """
        result: list[int] = []
        while self._heap and self._heap[0][0] <= now and len(result) < limit:
            deadline, lease_id = heapq.heappop(self._heap)
            # Renewals leave stale heap entries behind: only the current one counts.
            if self._deadline.get(lease_id) == deadline and lease_id not in result:
                result.append(lease_id)
        for lease_id in result:  # re-arm: retried unless the revoke lands
            heapq.heappush(self._heap, (now + 1.0, lease_id))
            self._deadline[lease_id] = now + 1.0
            self._expiring.add(lease_id)
        return result

    def _set(self, lease_id: int, ttl: int, deadline: float) -> None:
        self._ttl[lease_id] = ttl
        self._deadline[lease_id] = deadline
        heapq.heappush(self._heap, (deadline, lease_id))


def minimum_ttl(election_timeout: float) -> int:
    """The shortest TTL granted: 1.5 election timeouts, in whole seconds (etcd)."""
    return max(1, math.ceil(1.5 * election_timeout))
