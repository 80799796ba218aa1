"""Request validation: the checks a member runs before proposing a request.

:func:`validate_request` is pure: it looks at the request alone, plus the
``lease_exists`` predicate it is given.  Every error it returns is
``definite=True`` (the request was rejected before anything happened).  The
state machine runs it again when a command is applied (without the size check),
so a command that should have been rejected never changes the store, and a
lease that vanished between proposal and commit is caught there.

Rules (etcd's, ``server/etcdserver/api/v3rpc/key.go``):

* Every key (ranges, puts, deletes, compares) must be non-empty: ``EMPTY_KEY``.
* The encoded request may be at most :data:`~kvstore.api.MAX_REQUEST_BYTES`:
  ``REQUEST_TOO_LARGE``.  There is no separate key-size limit (as in etcd): a key
  is bounded by the request limit.
* Range: ``limit``, ``revision`` and the min/max revision filters must not be
  negative: ``INVALID_ARGUMENT``.
* Put: ``ignore_value`` with a value, or ``ignore_lease`` with a lease:
  ``INVALID_ARGUMENT``; a lease that does not exist: ``LEASE_NOT_FOUND``.
* Txn: at each level, ``max(len(compare), len(success), len(failure))`` may be
  at most :data:`~kvstore.api.MAX_TXN_OPS` and a nested txn has what its parent
  left (``MAX_TXN_OPS`` minus the parent's count), as etcd: ``TOO_MANY_OPS``.
  A compare's value must be ``bytes`` for VALUE and ``int`` otherwise:
  ``INVALID_ARGUMENT``.  Two writes that may both run must not touch the same
  key -- two puts of one key, or a put of a key inside a deleted range, at any
  nesting depth; the two branches of a nested txn exclude each other and may
  overlap; deletes may overlap each other: ``DUPLICATE_KEY``.
* Compaction: ``revision`` must be positive: ``INVALID_ARGUMENT``.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable, Sequence

from kvstore.api import (
    MAX_REQUEST_BYTES,
    MAX_TXN_OPS,
    CompactionRequest,
    Compare,
    CompareTarget,
    DeleteRangeRequest,
    Error,
    ErrorCode,
    LeaseGrantRequest,
    LeaseKeepAliveRequest,
    LeaseRevokeRequest,
    LeaseTimeToLiveRequest,
    PutRequest,
    RangeRequest,
    Request,
    RequestOp,
    TxnRequest,
    WatchCreateRequest,
    encode,
)
from kvstore.commands import WriteRequest

__all__ = ["LeaseCheck", "no_leases", "validate_request"]

LeaseCheck = Callable[[int], bool]
"""Tells whether a lease id exists."""


def no_leases(lease: int) -> bool:
    """The lease check until leases exist: none does.  (Lease 0 means "no
    lease" and is never looked up.)"""
    return False


class _Invalid(Exception):
    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.error = Error(code=code, message=message, definite=True)


def validate_request(
    request: Request | WriteRequest,
    *,
    lease_exists: LeaseCheck = no_leases,
    max_request_bytes: int | None = MAX_REQUEST_BYTES,
    max_txn_ops: int = MAX_TXN_OPS,
) -> Error | None:
    """The first reason to reject ``request``, or None if it is well-formed.

    ``lease_exists`` answers whether a (non-zero) lease id exists: the one
    place where leases plug in.  ``max_request_bytes=None`` skips the size check
    (the state machine does: the command is already in the log).
    """
    try:
        if max_request_bytes is not None and len(encode(request)) > max_request_bytes:
            raise _Invalid(ErrorCode.REQUEST_TOO_LARGE, "request is too large")
        if isinstance(request, TxnRequest):
            _check_txn(request, max_txn_ops, lease_exists)
            _side_writes(request.success)
            _side_writes(request.failure)
        elif isinstance(request, CompactionRequest):
            if request.revision <= 0:
                raise _Invalid(ErrorCode.INVALID_ARGUMENT, "compaction revision must be positive")
        elif isinstance(request, WatchCreateRequest):
            _check_key(request.key)
            if request.start_revision < 0:
                raise _Invalid(ErrorCode.INVALID_ARGUMENT, "start revision must not be negative")
        elif isinstance(
            request,
            (LeaseGrantRequest, LeaseRevokeRequest, LeaseKeepAliveRequest, LeaseTimeToLiveRequest),
        ):
            if isinstance(request, LeaseGrantRequest) and (request.ttl <= 0 or request.id < 0):
                raise _Invalid(ErrorCode.INVALID_ARGUMENT, "a lease needs a positive TTL")
            if not isinstance(request, LeaseGrantRequest) and request.id <= 0:
                raise _Invalid(ErrorCode.LEASE_NOT_FOUND, "lease ids are positive")
        elif isinstance(request, (RangeRequest, PutRequest, DeleteRangeRequest)):
            _check_op(request, max_txn_ops, lease_exists)
    except _Invalid as invalid:
        return invalid.error
    return None


def _check_key(key: bytes) -> None:
    if not key:
        raise _Invalid(ErrorCode.EMPTY_KEY, "key is not provided")


def _check_op(op: RequestOp, budget: int, lease_exists: LeaseCheck) -> None:
    if isinstance(op, PutRequest):
        _check_key(op.key)
        if op.ignore_value and op.value:
            raise _Invalid(ErrorCode.INVALID_ARGUMENT, "value is provided with ignore_value")
        if op.ignore_lease and op.lease:
            raise _Invalid(ErrorCode.INVALID_ARGUMENT, "lease is provided with ignore_lease")
        if op.lease and not lease_exists(op.lease):
            raise _Invalid(ErrorCode.LEASE_NOT_FOUND, "requested lease not found")
    elif isinstance(op, RangeRequest):
        _check_key(op.key)
        if op.limit < 0:
            raise _Invalid(ErrorCode.INVALID_ARGUMENT, "limit must not be negative")
        if op.revision < 0:
            raise _Invalid(ErrorCode.INVALID_ARGUMENT, "revision must not be negative")
        if (
            min(
                op.min_mod_revision,
                op.max_mod_revision,
                op.min_create_revision,
                op.max_create_revision,
            )
            < 0
        ):
            raise _Invalid(ErrorCode.INVALID_ARGUMENT, "revision filters must not be negative")
    elif isinstance(op, DeleteRangeRequest):
        _check_key(op.key)
    else:
        _check_txn(op, budget, lease_exists)


def _check_txn(txn: TxnRequest, budget: int, lease_exists: LeaseCheck) -> None:
    count = max(len(txn.compare), len(txn.success), len(txn.failure))
    if count > budget:
        raise _Invalid(ErrorCode.TOO_MANY_OPS, "too many operations in txn request")
    for compare in txn.compare:
        _check_compare(compare)
    for op in txn.success:
        _check_op(op, budget - count, lease_exists)
    for op in txn.failure:
        _check_op(op, budget - count, lease_exists)


def _check_compare(compare: Compare) -> None:
    _check_key(compare.key)
    wants_bytes = compare.target == CompareTarget.VALUE
    value = compare.value
    if isinstance(value, bytes) != wants_bytes or isinstance(value, bool):
        kind = "bytes" if wants_bytes else "an integer"
        raise _Invalid(
            ErrorCode.INVALID_ARGUMENT, f"compare on {compare.target.name} needs {kind} value"
        )


# -- Duplicate writes --------------------------------------------------------------------

_Interval = tuple[bytes, bytes | None]
"""``[low, high)`` of deleted keys; ``high is None``: unbounded."""
_Reach = tuple[bytes | None, int] | None
"""``(high, group)`` of a deleted range, or nothing."""


def _interval(key: bytes, range_end: bytes) -> _Interval:
    if not range_end:
        return key, key + b"\0"
    return key, None if range_end == b"\0" else range_end


def _side_writes(ops: Sequence[RequestOp]) -> tuple[set[bytes], list[_Interval]]:
    """The keys put and the ranges deleted by one side of a txn (nested txns
    included, both their branches).  Raises ``DUPLICATE_KEY`` if two of these
    writes that may both run touch one key."""
    groups: list[tuple[set[bytes], list[_Interval]]] = []
    for op in ops:
        if isinstance(op, PutRequest):
            groups.append(({op.key}, []))
        elif isinstance(op, DeleteRangeRequest):
            groups.append((set(), [_interval(op.key, op.range_end)]))
        elif isinstance(op, TxnRequest):
            then_puts, then_dels = _side_writes(op.success)
            else_puts, else_dels = _side_writes(op.failure)
            groups.append((then_puts | else_puts, then_dels + else_dels))
    puts: set[bytes] = set()
    for group_puts, _ in groups:
        if not puts.isdisjoint(group_puts):
            raise _Invalid(ErrorCode.DUPLICATE_KEY, "duplicate key given in txn request")
        puts |= group_puts
    _check_puts_outside_dels(groups)
    return puts, [interval for _, dels in groups for interval in dels]


def _check_puts_outside_dels(groups: list[tuple[set[bytes], list[_Interval]]]) -> None:
    """No key put by one group lies in a range deleted by *another* group.

    ``O((puts + dels) log dels)``: the deleted ranges sorted by low end, with,
    for each prefix of them, the highest-reaching range and the
    highest-reaching one from a different group; a key is covered by another
    group's range iff the best of those two not from its own group reaches
    above it.
    """
    dels = sorted(
        (
            (low, high, g)
            for g, (_, intervals) in enumerate(groups)
            for low, high in intervals
            if high is None or low < high
        ),
        key=lambda item: item[0],
    )
    if not dels:
        return
    lows = [low for low, _, _ in dels]
    # reach[i] = (best, second) over dels[: i + 1]; each is (high, group) or None.
    reach: list[tuple[_Reach, _Reach]] = []
    best: _Reach = None
    second: _Reach = None
    for _, high, group in dels:
        if best is None or _further(high, best[0]):
            if best is not None and best[1] != group:
                second = best
            best = (high, group)
        elif best[1] != group and (second is None or _further(high, second[0])):
            second = (high, group)
        reach.append((best, second))
    for g, (group_puts, _) in enumerate(groups):
        for key in group_puts:
            i = bisect_right(lows, key) - 1
            if i < 0:
                continue
            best, second = reach[i]
            other = best if best is not None and best[1] != g else second
            if other is not None and (other[0] is None or other[0] > key):
                raise _Invalid(ErrorCode.DUPLICATE_KEY, "duplicate key given in txn request")


def _further(high: bytes | None, than: bytes | None) -> bool:
    """``high`` reaches beyond ``than`` (None is unbounded)."""
    if than is None:
        return False
    return high is None or high > than
