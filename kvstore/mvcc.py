"""The multi-version key-value store: etcd's data model, in memory, sans-I/O.

One cluster-wide **revision** counts the changes: the empty store is at
revision 1 and every write request that changes something takes the next one.
A txn with many writes is one revision; its changes are ordered by their
position (the *sub-revision*).  A delete that deletes nothing, a read-only txn
and a compaction do not advance the revision.

Every key carries ``create_revision`` (the revision that created it since it
last did not exist), ``mod_revision`` (its last change), ``version`` (changes
since creation, 1 for a new key) and ``lease``.  Deleting a key writes a
*tombstone*: a :class:`~kvstore.api.KeyValue` with ``version == 0``,
``create_revision == 0`` and ``mod_revision`` = the deleting revision -- the same
value a DELETE :class:`~kvstore.api.Event` carries as ``kv``.

History is kept until :meth:`MVCCStore.compact`: ``compact(C)`` keeps, for
every key, the latest version at or below ``C`` unless it is a tombstone, and
everything above ``C``.  Reads at any revision ``>= C`` are therefore exact;
reads below answer ``COMPACTED``.  Change events are complete only for
revisions ``> C`` (a delete at ``C`` itself leaves no trace).

Layout (all per-operation costs are ``O(log n)`` in the number of keys):

* ``_hist``: key -> list of its retained versions, oldest first (tombstones
  included).  Each :class:`KeyValue` is stored once and shared by responses and
  events (it is immutable).
* ``_hist_keys``: sorted list of every key with retained history, for
  historical range reads.
* ``_live_keys``: sorted list of the keys that exist now, for latest reads:
  ranges are ``O(log n + k)`` and a count without filters is ``O(log n)``.
* ``_changelog``: every version written since the last compaction, in
  (revision, sub-revision) order (the same objects as in ``_hist``).  It orders
  replays of history (:meth:`MVCCStore.events_since`), lets compaction visit
  only the keys that changed since the previous one, and is most of a
  snapshot: :meth:`MVCCStore.dump` copies it whole.

Errors are values (:class:`~kvstore.api.Error`, always ``definite``): a write
that fails changes nothing (a txn is rolled back as a whole).
"""

from __future__ import annotations

import operator
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterable, Iterator
from typing import Any, NamedTuple

import msgspec
from sortedcontainers import SortedList

from kvstore.api import (
    CompactionResponse,
    Compare,
    CompareResult,
    CompareTarget,
    DeleteRangeRequest,
    DeleteRangeResponse,
    Error,
    ErrorCode,
    Event,
    EventType,
    KeyValue,
    PutRequest,
    PutResponse,
    RangeRequest,
    RangeResponse,
    RequestOp,
    ResponseHeader,
    ResponseOp,
    SortOrder,
    SortTarget,
    TxnRequest,
    TxnResponse,
)

__all__ = [
    "MVCCStore",
    "StoreDump",
    "WriteResponse",
    "WriteResult",
    "compacted_error",
    "future_revision_error",
    "key_range",
]

WriteResponse = PutResponse | DeleteRangeResponse | TxnResponse
"""What a successful write answers."""


class WriteResult(NamedTuple):
    """The outcome of one write request.

    ``events`` lists the changes in the order they were applied (empty when
    ``response`` is an :class:`Error` or nothing changed).
    """

    response: WriteResponse | Error
    events: list[Event]


class StoreDump(msgspec.Struct, array_like=True, frozen=True):
    """The whole store as plain data, for snapshots (see :meth:`MVCCStore.dump`).

    ``entries`` holds every retained version exactly once: first the versions
    at or below ``compact_revision`` (at most one per key, never a tombstone),
    then every version above it in (revision, sub-revision) order.  Two
    stores with the same history give equal dumps.
    """

    revision: int
    compact_revision: int
    entries: list[KeyValue]


def compacted_error(compact_revision: int) -> Error:
    return Error(
        code=ErrorCode.COMPACTED,
        message="mvcc: required revision has been compacted",
        definite=True,
        compact_revision=compact_revision,
    )


def future_revision_error() -> Error:
    return Error(
        code=ErrorCode.FUTURE_REVISION,
        message="mvcc: required revision is a future revision",
        definite=True,
    )


def _key_not_found() -> Error:
    return Error(code=ErrorCode.KEY_NOT_FOUND, message="key not found", definite=True)


def key_range(key: bytes, range_end: bytes) -> tuple[bytes, bytes | None]:
    """``(low, high)`` of the keys a request selects: ``low <= k < high``,
    ``high is None`` meaning unbounded.

    An empty ``range_end`` selects ``key`` alone (``key + b"\\0"`` is its
    successor), ``b"\\0"`` selects every key ``>= key``.  A ``range_end <= key``
    selects nothing (``high <= low``).
    """
    if not range_end:
        return key, key + b"\0"
    if range_end == b"\0":
        return key, None
    return key, range_end


class _Abort(Exception):
    """Raised inside a write to abandon it (rolled back) with ``error``."""

    def __init__(self, error: Error) -> None:
        super().__init__(error.message)
        self.error = error


_MOD: Callable[[KeyValue], int] = operator.attrgetter("mod_revision")
_PENDING_HEADER = ResponseHeader()
"""Placeholder header of responses built inside a write, replaced on commit."""

_SORT_KEYS: dict[SortTarget, Callable[[KeyValue], Any]] = {
    SortTarget.KEY: operator.attrgetter("key"),
    SortTarget.VERSION: operator.attrgetter("version"),
    SortTarget.CREATE: operator.attrgetter("create_revision"),
    SortTarget.MOD: operator.attrgetter("mod_revision"),
    SortTarget.VALUE: operator.attrgetter("value"),
}

_COMPARE_FIELDS: dict[CompareTarget, Callable[[KeyValue], int | bytes]] = {
    CompareTarget.VERSION: operator.attrgetter("version"),
    CompareTarget.CREATE: operator.attrgetter("create_revision"),
    CompareTarget.MOD: operator.attrgetter("mod_revision"),
    CompareTarget.VALUE: operator.attrgetter("value"),
    CompareTarget.LEASE: operator.attrgetter("lease"),
}

_ABSENT = KeyValue(b"", 0, 0, 0)
"""What a compare on a missing key sees (version, revisions and lease 0)."""


def _compare_holds(actual: int | bytes, result: CompareResult, expected: int | bytes) -> bool:
    if isinstance(actual, bytes) != isinstance(expected, bytes):
        return False  # a VALUE compare with an int (or vice versa); validation rejects it
    if result == CompareResult.EQUAL:
        return actual == expected
    if result == CompareResult.NOT_EQUAL:
        return actual != expected
    if result == CompareResult.GREATER:
        return actual > expected  # type: ignore[operator]
    if result == CompareResult.LESS:
        return actual < expected  # type: ignore[operator]
    return False


def _at(history: list[KeyValue], revision: int) -> KeyValue | None:
    """The version of a key visible at ``revision`` (maybe a tombstone), if any."""
    last = history[-1]
    if last.mod_revision <= revision:
        return last
    i = bisect_right(history, revision, key=_MOD)
    return history[i - 1] if i else None


def _strip_value(kv: KeyValue) -> KeyValue:
    return KeyValue(kv.key, kv.create_revision, kv.mod_revision, kv.version, b"", kv.lease)


class MVCCStore:
    """The multi-version store.  Deterministic; no I/O, no clock, no threads.

    Writes (:meth:`put`, :meth:`delete_range`, :meth:`txn`) answer a
    :class:`WriteResult`; reads (:meth:`range`) and :meth:`compact` answer a
    response or an :class:`Error`.  Nothing here raises for a bad request.
    """

    def __init__(self) -> None:
        self.lease_exists: Callable[[int], bool] = lambda lease: True
        """Whether a lease id exists; the state machine plugs its lease table in."""
        self._revision = 1
        self._compact_revision = 0
        self._hist: dict[bytes, list[KeyValue]] = {}
        self._hist_keys: Any = SortedList()
        self._live_keys: Any = SortedList()
        self._changelog: list[KeyValue] = []
        # The write in progress: the versions it wrote (sub-revision order) and events.
        self._pending: list[KeyValue] = []
        self._events: list[Event] = []

    # -- Introspection ----------------------------------------------------------------

    @property
    def revision(self) -> int:
        """The revision of the last change (1 for an empty, never-written store)."""
        return self._revision

    @property
    def compact_revision(self) -> int:
        """The revision of the last compaction (0 if never compacted)."""
        return self._compact_revision

    def __len__(self) -> int:
        """The number of keys that exist at the current revision."""
        return len(self._live_keys)

    def live(self) -> Iterator[KeyValue]:
        """The current version of every key that exists, in key order."""
        hist = self._hist
        for key in self._live_keys:
            yield hist[key][-1]

    def get(self, key: bytes, revision: int = 0) -> KeyValue | None:
        """``key`` as of ``revision`` (``<= 0``: latest), or None if it did not
        exist then.  Does not check ``revision`` against compaction."""
        history = self._hist.get(key)
        if history is None:
            return None
        kv = history[-1] if revision <= 0 else _at(history, revision)
        return kv if kv is not None and kv.version else None

    # -- Reads --------------------------------------------------------------------------

    def range(self, request: RangeRequest) -> RangeResponse | Error:
        """Answer a :class:`RangeRequest` (see its docstring and etcd's Range).

        ``count`` is the number of keys that match the range *and* the
        min/max revision filters, before ``limit``; ``more`` says ``limit`` cut
        some off.  Sorting is stable: equal sort keys stay in key order.
        Errors: ``COMPACTED`` below the compacted revision, ``FUTURE_REVISION``
        above the current one.
        """
        try:
            response = self._range(request)
        except _Abort as abort:
            return abort.error
        response.header = ResponseHeader(revision=self._revision)
        return response

    def _current(self) -> int:
        """The revision reads see: inside a write with changes, the one being written."""
        return self._revision + 1 if self._pending else self._revision

    def _range(self, request: RangeRequest) -> RangeResponse:
        current = self._current()
        revision = request.revision
        latest = revision <= 0 or revision == current
        if not latest:
            if revision > current:
                raise _Abort(future_revision_error())
            if revision < self._compact_revision:
                raise _Abort(compacted_error(self._compact_revision))
        low, high = key_range(request.key, request.range_end)
        limit = request.limit if request.limit > 0 else 0
        order = request.sort_order
        target = request.sort_target
        # etcd's normalisation: a non-key target sorts ascending by default;
        # ascending by key is the natural order of the index.
        if target != SortTarget.KEY and order == SortOrder.NONE:
            order = SortOrder.ASCEND
        elif target == SortTarget.KEY and order == SortOrder.ASCEND:
            order = SortOrder.NONE
        filtered = bool(
            request.min_mod_revision
            or request.max_mod_revision
            or request.min_create_revision
            or request.max_create_revision
        )

        kvs: list[KeyValue]
        if latest and not filtered and target == SortTarget.KEY and request.range_end:
            # Fast path: positions in the live index give count and slice.
            live = self._live_keys
            start: int = live.bisect_left(low)
            stop: int = len(live) if high is None else live.bisect_left(high)
            count = max(0, stop - start)
            if request.count_only:
                return RangeResponse(header=_PENDING_HEADER, count=count)
            take = min(limit, count) if limit else count
            if order == SortOrder.DESCEND:
                keys = live.islice(stop - take, stop, reverse=True)
            else:
                keys = live.islice(start, start + take)
            hist = self._hist
            kvs = [hist[k][-1] for k in keys]
            more = take < count
        else:
            if not request.range_end:
                kv = self.get(request.key, 0 if latest else revision)
                kvs = [kv] if kv is not None else []
            else:
                kvs = list(self._scan(low, high, None if latest else revision))
            if filtered:
                kvs = [kv for kv in kvs if self._passes(kv, request)]
            count = len(kvs)
            if request.count_only:
                return RangeResponse(header=_PENDING_HEADER, count=count)
            if order != SortOrder.NONE:
                if target == SortTarget.KEY:
                    kvs.reverse()  # order is DESCEND
                else:
                    kvs.sort(key=_SORT_KEYS[target], reverse=order == SortOrder.DESCEND)
            more = bool(limit) and count > limit
            if more:
                del kvs[limit:]
        if request.keys_only:
            kvs = [_strip_value(kv) for kv in kvs]
        return RangeResponse(header=_PENDING_HEADER, kvs=kvs, more=more, count=count)

    @staticmethod
    def _passes(kv: KeyValue, request: RangeRequest) -> bool:
        if request.min_mod_revision and kv.mod_revision < request.min_mod_revision:
            return False
        if request.max_mod_revision and kv.mod_revision > request.max_mod_revision:
            return False
        if request.min_create_revision and kv.create_revision < request.min_create_revision:
            return False
        return not (
            request.max_create_revision and kv.create_revision > request.max_create_revision
        )

    def _scan(self, low: bytes, high: bytes | None, revision: int | None) -> Iterator[KeyValue]:
        """Existing keys in ``[low, high)`` in key order, as of ``revision``
        (None: latest, including the write in progress)."""
        if high is not None and high <= low:
            return
        hist = self._hist
        if revision is None:
            for key in self._live_keys.irange(low, high, inclusive=(True, False)):
                yield hist[key][-1]
            return
        for key in self._hist_keys.irange(low, high, inclusive=(True, False)):
            kv = _at(hist[key], revision)
            if kv is not None and kv.version:
                yield kv

    # -- Writes -------------------------------------------------------------------------

    def put(self, request: PutRequest) -> WriteResult:
        """Set ``key`` (one revision).  ``ignore_value`` / ``ignore_lease`` keep
        the current value / lease and need the key to exist (``KEY_NOT_FOUND``).
        The lease is stored as given: checking it exists is the caller's job."""
        return self._write(self._put, request)

    def delete_range(self, request: DeleteRangeRequest) -> WriteResult:
        """Delete ``key`` or ``[key, range_end)``: one revision if anything was
        deleted, none otherwise."""
        return self._write(self._delete_range, request)

    def txn(self, request: TxnRequest) -> WriteResult:
        """Run a txn atomically as one revision (none if it changed nothing).

        Compares see the state before the txn.  Then the ``success`` (all
        compares hold) or ``failure`` operations run in list order, each seeing
        the changes of the ones before it; a nested txn evaluates its compares
        when it is reached (so it sees the outer txn's earlier writes -- etcd
        evaluates every nested compare up front).  If any operation fails
        (``KEY_NOT_FOUND``, ``COMPACTED``, ``FUTURE_REVISION``) the whole txn
        is rolled back and answers that error.  Every response in the answer,
        nested ones included, carries the txn's resulting revision.
        """
        return self._write(self._txn, request)

    def _write(self, operation: Callable[[Any], WriteResponse], request: Any) -> WriteResult:
        self._pending = []
        self._events = []
        try:
            response = operation(request)
        except _Abort as abort:
            self._rollback()
            return WriteResult(abort.error, [])
        except BaseException:
            self._rollback()
            raise
        events = self._events
        if self._pending:
            self._changelog.extend(self._pending)
            self._revision += 1
            self._pending = []
            self._events = []
        header = ResponseHeader(revision=self._revision)
        response.header = header
        if isinstance(response, TxnResponse):
            _set_headers(response.responses, header)
        return WriteResult(response, events)

    def _rollback(self) -> None:
        """Undo the changes of the write in progress, newest first."""
        hist = self._hist
        for kv in reversed(self._pending):
            key = kv.key
            history = hist[key]
            was_live = history.pop().version > 0
            if history:
                now_live = history[-1].version > 0
            else:
                del hist[key]
                self._hist_keys.remove(key)
                now_live = False
            if was_live and not now_live:
                self._live_keys.remove(key)
            elif now_live and not was_live:
                self._live_keys.add(key)
        self._pending = []
        self._events = []

    def _put(self, request: PutRequest) -> PutResponse:
        revision = self._revision + 1
        key = request.key
        history = self._hist.get(key)
        prev: KeyValue | None = None
        if history is not None:
            key = history[0].key  # share one bytes object per key
            last = history[-1]
            if last.version:
                prev = last
        if request.lease and not self.lease_exists(request.lease):
            # Checked when the put runs, so a txn branch that does not run
            # cannot fail on a lease that is gone (as in etcd).
            raise _Abort(
                Error(
                    code=ErrorCode.LEASE_NOT_FOUND,
                    message="requested lease not found",
                    definite=True,
                )
            )
        if prev is None:
            if request.ignore_value or request.ignore_lease:
                raise _Abort(_key_not_found())
            kv = KeyValue(key, revision, revision, 1, request.value, request.lease)
            self._live_keys.add(key)
        else:
            kv = KeyValue(
                key,
                prev.create_revision,
                revision,
                prev.version + 1,
                prev.value if request.ignore_value else request.value,
                prev.lease if request.ignore_lease else request.lease,
            )
        if history is None:
            self._hist[key] = [kv]
            self._hist_keys.add(key)
        else:
            history.append(kv)
        self._pending.append(kv)
        self._events.append(Event(EventType.PUT, kv, prev))
        return PutResponse(header=_PENDING_HEADER, prev_kv=prev if request.prev_kv else None)

    def _delete_range(self, request: DeleteRangeRequest) -> DeleteRangeResponse:
        revision = self._revision + 1
        if request.range_end:
            low, high = key_range(request.key, request.range_end)
            keys: list[bytes] = (
                list(self._live_keys.irange(low, high, inclusive=(True, False)))
                if high is None or low < high
                else []
            )
        else:
            history = self._hist.get(request.key)
            keys = [history[0].key] if history is not None and history[-1].version else []
        prev_kvs: list[KeyValue] = []
        hist = self._hist
        for key in keys:
            history = hist[key]
            prev = history[-1]
            tombstone = KeyValue(key, 0, revision, 0)
            history.append(tombstone)
            self._live_keys.remove(key)
            self._pending.append(tombstone)
            self._events.append(Event(EventType.DELETE, tombstone, prev))
            if request.prev_kv:
                prev_kvs.append(prev)
        return DeleteRangeResponse(header=_PENDING_HEADER, deleted=len(keys), prev_kvs=prev_kvs)

    def _txn(self, request: TxnRequest) -> TxnResponse:
        succeeded = all(self._compare(compare) for compare in request.compare)
        operations = request.success if succeeded else request.failure
        responses = [self._operation(op) for op in operations]
        return TxnResponse(header=_PENDING_HEADER, succeeded=succeeded, responses=responses)

    def _operation(self, op: RequestOp) -> ResponseOp:
        if isinstance(op, PutRequest):
            return self._put(op)
        if isinstance(op, RangeRequest):
            return self._range(op)
        if isinstance(op, DeleteRangeRequest):
            return self._delete_range(op)
        return self._txn(op)

    def _compare(self, compare: Compare) -> bool:
        """etcd's rule: a compare over a range must hold for every existing key
        in it; with no key, it is made against a zero key (version, revisions
        and lease 0), except that a VALUE compare is then false."""
        if compare.range_end:
            low, high = key_range(compare.key, compare.range_end)
            kvs: Iterable[KeyValue] = list(self._scan(low, high, None))
        else:
            kv = self.get(compare.key)
            kvs = [kv] if kv is not None else []
        if not kvs:
            if compare.target == CompareTarget.VALUE:
                return False
            kvs = [_ABSENT]
        field = _COMPARE_FIELDS[compare.target]
        return all(_compare_holds(field(kv), compare.result, compare.value) for kv in kvs)

    # -- Compaction ---------------------------------------------------------------------

    def compact(self, revision: int) -> CompactionResponse | Error:
        """Discard history no read at ``revision`` or later can see.

        For every key, keep the latest version ``<= revision`` unless it is a
        tombstone, and every version above.  ``revision`` must be above the
        current compacted revision (else ``COMPACTED``) and at most the current
        revision (else ``FUTURE_REVISION``).  The revision does not change.
        Costs ``O(changes since the previous compaction)``.
        """
        if revision <= self._compact_revision:
            return compacted_error(self._compact_revision)
        if revision > self._revision:
            return future_revision_error()
        changelog = self._changelog
        cut = bisect_right(changelog, revision, key=_MOD)  # the versions at revisions <= revision
        candidates = {kv.key for kv in changelog[:cut]}
        hist = self._hist
        for key in candidates:
            history = hist.get(key)
            if history is None:
                continue
            i = bisect_right(history, revision, key=_MOD) - 1
            if i < 0:
                continue
            drop = i + 1 if history[i].version == 0 else i
            if drop:
                del history[:drop]
                if not history:
                    del hist[key]
                    self._hist_keys.remove(key)
        del changelog[:cut]
        self._compact_revision = revision
        return CompactionResponse(header=ResponseHeader(revision=self._revision))

    # -- History replay -----------------------------------------------------------------

    def events_since(
        self,
        start_revision: int,
        key: bytes = b"\0",
        range_end: bytes = b"\0",
        end_revision: int | None = None,
    ) -> list[Event] | Error:
        """Every change to ``key`` / ``[key, range_end)`` at revisions
        ``start_revision .. end_revision`` (default: current), in the order
        they were applied, with ``prev_kv`` -- the events a watcher from
        ``start_revision`` would have seen.

        ``COMPACTED`` (with the compacted revision) if ``start_revision`` is at
        or below the compacted revision: the history there is incomplete.
        ``start_revision < 1`` is taken as 1.  Defaults select every key.
        """
        start = max(start_revision, 1)
        if self._compact_revision and start <= self._compact_revision:
            return compacted_error(self._compact_revision)
        stop = self._revision if end_revision is None else min(end_revision, self._revision)
        low, high = key_range(key, range_end)
        hist = self._hist
        changelog = self._changelog
        events: list[Event] = []
        i = bisect_left(changelog, start, key=_MOD)
        while i < len(changelog) and (kv := changelog[i]).mod_revision <= stop:
            i += 1
            k = kv.key
            if k < low or (high is not None and k >= high):
                continue
            history = hist[k]
            j = bisect_left(history, kv.mod_revision, key=_MOD)
            while history[j] is not kv:  # the same key changed twice in one txn
                j += 1
            prev = history[j - 1] if j and history[j - 1].version else None
            events.append(Event(EventType.PUT if kv.version else EventType.DELETE, kv, prev))
        return events

    # -- Snapshots ----------------------------------------------------------------------

    def dump(self) -> StoreDump:
        """The whole store (every retained version) as a :class:`StoreDump`.

        Cheap enough for the event loop: a copy of the changelog, plus one
        look at each key when the store was ever compacted.  Its versions are
        immutable, so the dump can be encoded elsewhere (a worker thread) while
        the store goes on changing.
        """
        compact = self._compact_revision
        if compact:
            hist = self._hist
            # Key order: equal stores give equal dumps.
            entries = [
                history[0]
                for history in map(hist.__getitem__, self._hist_keys)
                if history[0].mod_revision <= compact
            ]
            entries += self._changelog
        else:
            entries = list(self._changelog)
        return StoreDump(self._revision, compact, entries)

    @classmethod
    def load(cls, dump: StoreDump) -> MVCCStore:
        """Rebuild a store from :meth:`dump` output.  Raises ``ValueError`` if
        the dump is inconsistent."""
        store = cls()
        revision, compact = dump.revision, dump.compact_revision
        if revision < 1 or compact < 0 or compact > revision:
            raise ValueError(f"bad revisions: revision {revision}, compacted {compact}")
        hist = store._hist
        changelog = store._changelog
        expected = max(compact + 1, 2)  # the revision the next change must have (or the one after)
        group = False
        for kv in dump.entries:
            key, mod = kv.key, kv.mod_revision
            history = hist.get(key)
            if mod <= compact:
                if history is not None or not kv.version or mod < 1:
                    raise ValueError(f"bad compacted entry for key {key!r} at {mod}")
                hist[key] = [kv]
                continue
            if group and mod == expected - 1:
                pass
            elif mod == expected:
                group = True
                expected += 1
            else:
                raise ValueError(f"entry for key {key!r} at revision {mod} out of order")
            changelog.append(kv)
            prev = history[-1] if history is not None and history[-1].version else None
            if kv.version:
                version, create = (
                    (1, mod) if prev is None else (prev.version + 1, prev.create_revision)
                )
                if kv.version != version or kv.create_revision != create:
                    raise ValueError(f"bad version of key {key!r} at revision {mod}")
            elif prev is None or kv.create_revision or kv.value or kv.lease:
                raise ValueError(f"bad tombstone of key {key!r} at revision {mod}")
            if history is None:
                hist[key] = [kv]
            else:
                history.append(kv)
        if expected - 1 != revision:
            raise ValueError(f"history ends at {expected - 1}, revision is {revision}")
        store._revision = revision
        store._compact_revision = compact
        store._hist_keys = SortedList(hist)
        store._live_keys = SortedList(k for k, h in hist.items() if h[-1].version)
        return store


def _set_headers(responses: list[ResponseOp], header: ResponseHeader) -> None:
    for response in responses:
        response.header = header
        if isinstance(response, TxnResponse):
            _set_headers(response.responses, header)
