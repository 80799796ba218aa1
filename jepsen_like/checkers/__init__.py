"""Sans-I/O checkers for jepsen_like histories.

Each checker takes plain data (a history of :class:`~jepsen_like.history.Operation`
or a few records read back from the store) and returns a result with a
:class:`Verdict` (``valid`` / ``invalid`` / ``unknown``), counts for
``results.json`` and a readable ``describe()``.
"""

from jepsen_like.checkers.lease_checker import LeaseBounds, LeaseResult, check_leases
from jepsen_like.checkers.linearizable import (
    KeyResult,
    LinearizabilityResult,
    Model,
    RegisterModel,
    Verdict,
    check_key,
    check_linearizable,
)
from jepsen_like.checkers.lock_checker import (
    FencedEntry,
    HeldInterval,
    LockResult,
    UnfencedReport,
    check_fenced_log,
    unfenced_overlaps,
)
from jepsen_like.checkers.set_checker import SetResult, check_set
from jepsen_like.checkers.watch_checker import Event, WatcherLog, WatchResult, check_watches

__all__ = [
    "Event",
    "FencedEntry",
    "HeldInterval",
    "KeyResult",
    "LeaseBounds",
    "LeaseResult",
    "LinearizabilityResult",
    "LockResult",
    "Model",
    "RegisterModel",
    "SetResult",
    "UnfencedReport",
    "Verdict",
    "WatchResult",
    "WatcherLog",
    "check_fenced_log",
    "check_key",
    "check_leases",
    "check_linearizable",
    "check_set",
    "check_watches",
    "unfenced_overlaps",
]
