"""Automatic compaction policies, sans-I/O (etcd's ``--auto-compaction-mode``).

A policy is fed observations -- ``next_compaction(now, revision)``, with
``now`` from a monotonic clock in seconds and ``revision`` the store's current
revision -- and answers the revision to compact to, or None.  The server calls
it periodically on the leader and proposes a
:class:`~kvstore.api.CompactionRequest` for the answer.

A policy remembers what it answered and never answers a revision at or below
it again (nor at or below ``compact_revision`` when the caller passes the
store's).  If a proposal is lost, a later call answers a newer target.  A new
leader starts with a fresh policy; the worst that does is one proposal that
fails with ``COMPACTED``.
"""

from __future__ import annotations

import math
from collections import deque

__all__ = ["Compactor", "PeriodicCompactor", "RevisionCompactor"]

_HOUR = 3600.0


class Compactor:
    """The interface: :meth:`next_compaction`."""

    def next_compaction(self, now: float, revision: int, compact_revision: int = 0) -> int | None:
        raise NotImplementedError


class RevisionCompactor(Compactor):
    """Keep the last ``retain`` revisions: every ``interval`` seconds, compact
    to ``revision - retain`` if that is above what was compacted.

    The first observation may compact at once; then at most one compaction
    per ``interval`` (default five minutes, as etcd).
    """

    def __init__(self, retain: int, interval: float = 300.0) -> None:
        if retain < 0:
            raise ValueError("retain must not be negative")
        if interval <= 0:
            raise ValueError("interval must be positive")
        self.retain = retain
        self.interval = interval
        self._next_check = -math.inf
        self._last = 0

    def next_compaction(self, now: float, revision: int, compact_revision: int = 0) -> int | None:
        """The revision to compact to now, or None."""
        if now < self._next_check:
            return None
        self._next_check = now + self.interval
        target = revision - self.retain
        if target <= max(self._last, compact_revision):
            return None
        self._last = target
        return target


class PeriodicCompactor(Compactor):
    """Keep ``period_seconds`` of history: compact to the revision that was
    current ``period_seconds`` ago.

    The policy samples ``(now, revision)`` at most once per ``interval``
    (default a tenth of the period, capped at an hour) and answers at most once
    per ``interval``; so history is kept for between ``period`` and
    ``period + interval`` seconds.  It keeps about ``period / interval + 1``
    samples.  Observations with a clock that went backwards are ignored.
    """

    def __init__(self, period_seconds: float, interval: float | None = None) -> None:
        if period_seconds <= 0:
            raise ValueError("period_seconds must be positive")
        if interval is None:
            interval = min(period_seconds / 10, _HOUR)
        if interval <= 0:
            raise ValueError("interval must be positive")
        self.period = period_seconds
        self.interval = interval
        self._samples: deque[tuple[float, int]] = deque()
        self._next_check = -math.inf
        self._last = 0

    def next_compaction(self, now: float, revision: int, compact_revision: int = 0) -> int | None:
        """The revision to compact to now, or None."""
        samples = self._samples
        if samples and now < samples[-1][0]:
            return None  # the clock went backwards
        if not samples or now - samples[-1][0] >= self.interval:
            samples.append((now, revision))
        if now < self._next_check:
            return None
        # The newest sample at least `period` old; older ones are no longer needed.
        horizon = now - self.period
        while len(samples) > 1 and samples[1][0] <= horizon:
            samples.popleft()
        if samples[0][0] > horizon:
            return None
        target = samples[0][1]
        self._next_check = now + self.interval
        if target <= max(self._last, compact_revision):
            return None
        self._last = target
        return target
