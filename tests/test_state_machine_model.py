"""The KV state machine against a plain-dict model, plus its unit tests.

A Hypothesis ``RuleBasedStateMachine`` applies random puts, deletes, delete
ranges, (nested) txns, compactions, no-op / replayed / garbage entries and
snapshot + restore cycles to a :class:`KVStateMachine` through encoded
commands, as Raft would, and the same requests to a model that keeps one
``dict`` (key -> KeyValue) per revision.  Every response, every event list,
every range answer (latest and historical, with random limit / sort / filters)
and every history replay must equal the model's.

Sizing: ``KVSTORE_MVCC_EXAMPLES`` (default 60) runs of up to
``KVSTORE_MVCC_STEPS`` (default 50) steps.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import msgspec
import pytest
from hypothesis import event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from kvstore.api import (
    CompactionRequest,
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
    SortOrder,
    SortTarget,
    TxnRequest,
    TxnResponse,
)
from kvstore.commands import Command, WriteRequest, encode_command
from kvstore.state_machine import SNAPSHOT_FORMAT, KVStateMachine, KVStatus
from kvstore.validation import validate_request

EXAMPLES = int(os.environ.get("KVSTORE_MVCC_EXAMPLES", "60"))
STEPS = int(os.environ.get("KVSTORE_MVCC_STEPS", "50"))

KEYS = [b"a", b"a\0", b"ab", b"b", b"c", b"\xff"]
ENDS = [b"", b"", b"\0", b"a", b"ab", b"b", b"c", b"d", b"\xff\xff"]
VALUES = [b"", b"x", b"y", b"zz"]

keys = st.sampled_from(KEYS)
ends = st.sampled_from(ENDS)
values = st.sampled_from(VALUES)


# -- The model -------------------------------------------------------------------------------


class Failed(Exception):
    def __init__(self, code: ErrorCode) -> None:
        super().__init__(code)
        self.code = code


def in_range(key: bytes, start: bytes, end: bytes) -> bool:
    if not end:
        return key == start
    if end == b"\0":
        return key >= start
    return start <= key < end


# Two tables: SortTarget and CompareTarget are IntEnums whose members compare equal.
SORT_FIELDS: dict[SortTarget, str] = {
    SortTarget.KEY: "key",
    SortTarget.VERSION: "version",
    SortTarget.CREATE: "create_revision",
    SortTarget.MOD: "mod_revision",
    SortTarget.VALUE: "value",
}
COMPARE_FIELDS: dict[CompareTarget, str] = {
    CompareTarget.VERSION: "version",
    CompareTarget.CREATE: "create_revision",
    CompareTarget.MOD: "mod_revision",
    CompareTarget.VALUE: "value",
    CompareTarget.LEASE: "lease",
}
NO_HEADER = ResponseHeader(cluster_id=-1)


def model_range(state: dict[bytes, KeyValue], request: RangeRequest) -> RangeResponse:
    """etcd's Range over one revision's dict, written plainly."""
    kvs = [state[k] for k in sorted(state) if in_range(k, request.key, request.range_end)]
    if request.min_mod_revision:
        kvs = [kv for kv in kvs if kv.mod_revision >= request.min_mod_revision]
    if request.max_mod_revision:
        kvs = [kv for kv in kvs if kv.mod_revision <= request.max_mod_revision]
    if request.min_create_revision:
        kvs = [kv for kv in kvs if kv.create_revision >= request.min_create_revision]
    if request.max_create_revision:
        kvs = [kv for kv in kvs if kv.create_revision <= request.max_create_revision]
    count = len(kvs)
    if request.count_only:
        return RangeResponse(header=NO_HEADER, count=count)
    field = SORT_FIELDS[request.sort_target]
    descending = request.sort_order == SortOrder.DESCEND
    if request.sort_target != SortTarget.KEY or descending:
        # Key order first, then a stable sort on the target: ties stay in key order.
        kvs.sort(key=lambda kv: kv.key)
        if request.sort_target == SortTarget.KEY:
            kvs.reverse()
        else:
            kvs.sort(key=lambda kv: getattr(kv, field), reverse=descending)
    more = False
    if request.limit > 0 and len(kvs) > request.limit:
        kvs = kvs[: request.limit]
        more = True
    if request.keys_only:
        kvs = [msgspec.structs.replace(kv, value=b"") for kv in kvs]
    return RangeResponse(header=NO_HEADER, kvs=kvs, more=more, count=count)


def model_compare(state: dict[bytes, KeyValue], compare: Compare) -> bool:
    end = compare.range_end
    kvs = [state[k] for k in sorted(state) if in_range(k, compare.key, end)]
    if not kvs:
        if compare.target == CompareTarget.VALUE:
            return False
        kvs = [KeyValue(compare.key, 0, 0, 0)]
    field = COMPARE_FIELDS[compare.target]
    checks: dict[CompareResult, Callable[[Any, Any], bool]] = {
        CompareResult.EQUAL: lambda a, b: a == b,
        CompareResult.NOT_EQUAL: lambda a, b: a != b,
        CompareResult.LESS: lambda a, b: a < b,
        CompareResult.GREATER: lambda a, b: a > b,
    }
    return all(checks[compare.result](getattr(kv, field), compare.value) for kv in kvs)


class Model:
    """One dict per retained revision; the event log of every change."""

    def __init__(self) -> None:
        self.revision = 1
        self.compacted = 0
        self.states: dict[int, dict[bytes, KeyValue]] = {1: {}}
        self.log: list[tuple[int, Event]] = []

    @property
    def latest(self) -> dict[bytes, KeyValue]:
        return self.states[self.revision]

    def state_at(self, revision: int, current: int) -> dict[bytes, KeyValue]:
        if revision > current:
            raise Failed(ErrorCode.FUTURE_REVISION)
        if revision < self.compacted:
            raise Failed(ErrorCode.COMPACTED)
        return self.states[revision]

    def read(self, request: RangeRequest) -> RangeResponse:
        revision = request.revision if request.revision > 0 else self.revision
        response = model_range(self.state_at(revision, self.revision), request)
        response.header = ResponseHeader(revision=self.revision)
        return response

    def write(self, request: WriteRequest) -> tuple[Any, list[Event]]:
        """The expected response (or failing ErrorCode) and events."""
        if isinstance(request, CompactionRequest):
            return self.compact(request.revision), []
        writer = _ModelWrite(self)
        try:
            response = writer.op(request)
        except Failed as failed:
            return failed.code, []
        if writer.events:
            self.revision = writer.revision
            self.states[self.revision] = writer.state
            self.log += [(self.revision, event) for event in writer.events]
        header = ResponseHeader(revision=self.revision)

        def fill(response: Any) -> None:
            response.header = header
            if isinstance(response, TxnResponse):
                for nested in response.responses:
                    fill(nested)

        fill(response)
        return response, writer.events

    def compact(self, revision: int) -> Any:
        if revision <= self.compacted:
            return ErrorCode.COMPACTED
        if revision > self.revision:
            return ErrorCode.FUTURE_REVISION
        self.compacted = revision
        self.states = {r: s for r, s in self.states.items() if r >= revision}
        self.log = [(r, e) for r, e in self.log if r > revision]
        return CompactionResponse(header=ResponseHeader(revision=self.revision))

    def events_since(self, start: int) -> Any:
        if self.compacted and start <= self.compacted:
            return ErrorCode.COMPACTED
        return [event for revision, event in self.log if revision >= start]


class _ModelWrite:
    def __init__(self, model: Model) -> None:
        self.model = model
        self.state = dict(model.latest)
        self.revision = model.revision + 1
        self.events: list[Event] = []

    def op(self, op: RequestOp) -> Any:
        if isinstance(op, PutRequest):
            return self.put(op)
        if isinstance(op, DeleteRangeRequest):
            return self.delete(op)
        if isinstance(op, RangeRequest):
            current = self.revision if self.events else self.model.revision
            revision = op.revision if op.revision > 0 else current
            state = self.state if revision == current else self.model.state_at(revision, current)
            return model_range(state, op)
        succeeded = all(model_compare(self.state, c) for c in op.compare)
        responses = [self.op(o) for o in (op.success if succeeded else op.failure)]
        return TxnResponse(header=NO_HEADER, succeeded=succeeded, responses=responses)

    def put(self, op: PutRequest) -> PutResponse:
        if op.lease and op.lease not in LEASES:
            raise Failed(ErrorCode.LEASE_NOT_FOUND)  # checked as the put runs
        prev = self.state.get(op.key)
        if prev is None:
            if op.ignore_value or op.ignore_lease:
                raise Failed(ErrorCode.KEY_NOT_FOUND)
            kv = KeyValue(op.key, self.revision, self.revision, 1, op.value, op.lease)
        else:
            kv = KeyValue(
                op.key,
                prev.create_revision,
                self.revision,
                prev.version + 1,
                prev.value if op.ignore_value else op.value,
                prev.lease if op.ignore_lease else op.lease,
            )
        self.state[op.key] = kv
        self.events.append(Event(EventType.PUT, kv, prev))
        return PutResponse(header=NO_HEADER, prev_kv=prev if op.prev_kv else None)

    def delete(self, op: DeleteRangeRequest) -> DeleteRangeResponse:
        doomed = sorted(k for k in self.state if in_range(k, op.key, op.range_end))
        prev_kvs = []
        for key in doomed:
            prev = self.state.pop(key)
            self.events.append(Event(EventType.DELETE, KeyValue(key, 0, self.revision, 0), prev))
            prev_kvs.append(prev)
        return DeleteRangeResponse(
            header=NO_HEADER, deleted=len(doomed), prev_kvs=prev_kvs if op.prev_kv else []
        )


# -- Strategies ------------------------------------------------------------------------------

LEASES = (5, 6)
"""Leases that exist in this test (see :class:`LeasedKV`); 7 does not."""


@st.composite
def compares(draw: st.DrawFn) -> Compare:
    target = draw(st.sampled_from(CompareTarget))
    value: int | bytes
    if target == CompareTarget.VALUE:
        value = draw(values)
    elif target == CompareTarget.LEASE:
        value = draw(st.sampled_from([0, *LEASES]))
    else:
        value = draw(st.integers(0, 9))
    return Compare(
        key=draw(keys),
        range_end=draw(st.sampled_from([b"", b"", b"\0", b"c"])),
        target=target,
        result=draw(st.sampled_from(CompareResult)),
        value=value,
    )


@st.composite
def range_requests(draw: st.DrawFn, revisions: st.SearchStrategy[int]) -> RangeRequest:
    limit = draw(st.sampled_from([0, 0, 1, 2, 3]))
    sort_order = draw(st.sampled_from(SortOrder))
    sort_target = draw(st.sampled_from(SortTarget))
    filters = draw(st.lists(st.integers(0, 8), min_size=4, max_size=4))
    if draw(st.booleans()):
        filters = [0, 0, 0, 0]
    return RangeRequest(
        key=draw(st.one_of(keys, st.just(b"\0"))),
        range_end=draw(st.one_of(ends, st.sampled_from([b"\0", b"\xff\xff", b"c"]))),
        limit=limit,
        revision=draw(revisions),
        sort_order=sort_order,
        sort_target=sort_target,
        keys_only=draw(st.booleans()),
        count_only=draw(st.integers(0, 5)) == 0,
        min_mod_revision=filters[0],
        max_mod_revision=filters[1],
        min_create_revision=filters[2],
        max_create_revision=filters[3],
    )


@st.composite
def put_requests(draw: st.DrawFn, odd: int = 8) -> PutRequest:
    """Puts; about one in ``odd`` sets an ignore flag (failing on a missing key)
    and one in ``odd`` names a lease that does not exist."""
    ignore = draw(st.sampled_from(["value", "lease"] + [""] * (odd - 2)))
    lease = 0
    if ignore != "lease":
        lease = draw(st.sampled_from([7] + [0] * (odd - 1) + [*LEASES] * (odd // 2)))
    return PutRequest(
        key=draw(keys),
        value=b"" if ignore == "value" else draw(values),
        lease=lease,
        prev_kv=draw(st.booleans()),
        ignore_value=ignore == "value",
        ignore_lease=ignore == "lease",
    )


delete_requests = st.builds(DeleteRangeRequest, key=keys, range_end=ends, prev_kv=st.booleans())


def txn_requests(revisions: st.SearchStrategy[int]) -> st.SearchStrategy[TxnRequest]:
    """Txns whose range operations read at ``revisions``; one level of nesting."""
    leaf_ops = st.one_of(
        put_requests(odd=10),
        put_requests(odd=10),
        delete_requests,
        range_requests(revisions),
    )
    ops = st.one_of(
        leaf_ops,
        leaf_ops,
        st.builds(
            TxnRequest,
            compare=st.lists(compares(), max_size=2),
            success=st.lists(leaf_ops, max_size=2),
            failure=st.lists(leaf_ops, max_size=2),
        ),
    )
    return st.builds(
        TxnRequest,
        compare=st.lists(compares(), max_size=2),
        success=st.lists(ops, min_size=1, max_size=3),
        failure=st.lists(ops, max_size=3),
    )


def interesting_revisions(model: Model) -> st.SearchStrategy[int]:
    """Latest (0), the boundaries around the current and compacted revisions,
    or anything retained."""
    current, compacted = model.revision, model.compacted
    edges = [current - 1, current, current + 1, current + 2, compacted, compacted - 1]
    return st.one_of(
        st.just(0),
        st.sampled_from([r for r in edges if r >= 0]),
        st.integers(0, current + 2),
    )


# -- The state machine test ---------------------------------------------------------------------


def same(actual: Any, expected: Any) -> None:
    """``expected`` is a response, or an ErrorCode for an expected error."""
    if isinstance(expected, ErrorCode):
        assert isinstance(actual, Error), actual
        assert actual.code == expected and actual.definite
    else:
        assert actual == expected


class LeasedKV(KVStateMachine):
    """The state machine with leases 5 and 6 existing, through its one lease hook."""

    def _lease_exists(self, lease: int) -> bool:
        return lease in LEASES


class KVModelMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.sm: KVStateMachine = LeasedKV()
        self.model = Model()
        self.index = 0
        self.seq = 0

    def propose(self, request: WriteRequest) -> None:
        self.index += 1
        self.seq += 1
        command = Command(origin=7, seq=self.seq, request=request)
        result = self.sm.apply(self.index, encode_command(command))
        assert result is not None and result.command == command
        kind = type(request).__name__
        error = validate_request(request, lease_exists=lambda lease: True)
        if error is not None:
            event(f"{kind}: invalid ({error.code})")
            assert result.response == error and result.events == []
            return
        revision = self.model.revision
        expected, events = self.model.write(request)
        same(result.response, expected)
        assert result.events == events
        if isinstance(expected, ErrorCode):
            event(f"{kind}: {expected}")
        else:
            event(f"{kind}: {'changed' if self.model.revision > revision else 'unchanged'}")

    # -- Writes

    @initialize(requests=st.lists(put_requests(odd=40), min_size=3, max_size=12))
    def populate(self, requests: list[PutRequest]) -> None:
        """Start every run with a few keys and versions, so reads have work."""
        for request in requests:
            self.propose(request)

    @rule(request=put_requests())
    def put(self, request: PutRequest) -> None:
        self.propose(request)

    @rule(request=delete_requests)
    def delete(self, request: DeleteRangeRequest) -> None:
        self.propose(request)

    @rule(data=st.data())
    def txn(self, data: st.DataObject) -> None:
        self.propose(data.draw(txn_requests(interesting_revisions(self.model))))

    @rule(data=st.data())
    def txn_reads_its_own_writes(self, data: st.DataObject) -> None:
        """Writes and reads (at the boundary revisions) interleaved in one txn."""
        writes = st.one_of(put_requests(odd=40), delete_requests)
        current = self.model.revision
        around = st.sampled_from([0, current - 1, current, current + 1])
        ops: list[RequestOp] = [
            *data.draw(st.lists(writes, min_size=1, max_size=3)),
            *data.draw(st.lists(range_requests(around), min_size=1, max_size=3)),
        ]
        self.propose(TxnRequest(success=data.draw(st.permutations(ops))))

    @rule(data=st.data())
    def txn_fails_after_writing(self, data: st.DataObject) -> None:
        """Writes, then an operation that may fail: all or nothing."""
        writes = data.draw(st.lists(st.one_of(put_requests(odd=40), delete_requests), max_size=4))
        future = self.model.revision + 2
        candidates: list[RequestOp] = [
            RangeRequest(key=b"a", revision=future),
            RangeRequest(key=b"a", revision=max(self.model.compacted - 1, 1)),
            PutRequest(key=data.draw(keys), ignore_value=True),
            PutRequest(key=data.draw(keys), ignore_lease=True),
        ]
        failing = data.draw(st.sampled_from(candidates))
        self.propose(TxnRequest(success=[*writes, failing]))

    @rule(data=st.data(), count=st.integers(1, 8))
    def several_writes(self, data: st.DataObject, count: int) -> None:
        for _ in range(count):
            revisions = interesting_revisions(self.model)
            writes = st.one_of(
                put_requests(), put_requests(), delete_requests, txn_requests(revisions)
            )
            self.propose(data.draw(writes))

    @rule(data=st.data())
    def compact(self, data: st.DataObject) -> None:
        revision = data.draw(st.integers(0, self.model.revision + 1), label="revision")
        self.propose(CompactionRequest(revision=revision))

    # -- Log entries that are not commands

    @rule()
    def noop(self) -> None:
        self.index += 1
        assert self.sm.apply(self.index, b"") is None
        assert self.sm.applied_index == self.index

    @precondition(lambda self: self.index > 0)
    @rule(data=st.data())
    def replayed_entry(self, data: st.DataObject) -> None:
        index = data.draw(st.integers(1, self.index), label="index")
        junk = encode_command(Command(origin=7, seq=0, request=PutRequest(key=b"a", value=b"!")))
        assert self.sm.apply(index, junk) is None
        assert self.sm.applied_index == self.index

    @rule(garbage=st.binary(max_size=20))
    def garbage(self, garbage: bytes) -> None:
        self.index += 1
        result = self.sm.apply(self.index, b"\xc1" + garbage)  # 0xc1: never valid msgpack
        assert result is not None and result.command is None
        same(result.response, ErrorCode.MALFORMED)

    # -- Reads

    @rule(data=st.data())
    def ranges(self, data: st.DataObject) -> None:
        revisions = st.integers(0, self.model.revision + 1)
        event(f"ranges: store has {min(len(self.model.latest), 4)} keys")
        for request in data.draw(st.lists(range_requests(revisions), min_size=1, max_size=5)):
            try:
                expected: Any = self.model.read(request)
            except Failed as failed:
                expected = failed.code
                event(f"range: {failed.code}")
            else:
                event(f"range: {'more' if expected.more else len(expected.kvs)} kvs")
            same(self.sm.read(request), expected)

    @rule()
    def every_retained_revision(self) -> None:
        for revision in range(max(self.model.compacted, 1), self.model.revision + 1):
            request = RangeRequest(key=b"\0", range_end=b"\0", revision=revision)
            same(self.sm.read(request), self.model.read(request))
        if self.model.compacted > 1:
            request = RangeRequest(key=b"a", revision=self.model.compacted - 1)
            same(self.sm.read(request), ErrorCode.COMPACTED)

    @rule(data=st.data())
    def events_since(self, data: st.DataObject) -> None:
        start = data.draw(st.integers(0, self.model.revision + 1), label="start")
        same(self.sm.store.events_since(start), self.model.events_since(start))

    # -- Snapshots

    @rule()
    def snapshot_and_restore(self) -> None:
        snapshot = self.sm.snapshot()
        restored = LeasedKV.from_snapshot(snapshot)
        assert restored.status() == self.sm.status()
        assert restored.snapshot() == snapshot
        self.sm = restored

    # -- Invariants

    def teardown(self) -> None:
        event(f"final revision >= {self.model.revision // 10 * 10}")

    @invariant()
    def latest_state_matches(self) -> None:
        status = self.sm.status()
        assert status == KVStatus(
            applied_index=self.index,
            revision=self.model.revision,
            compact_revision=self.model.compacted,
            keys=len(self.model.latest),
        )
        request = RangeRequest(key=b"\0", range_end=b"\0")
        same(self.sm.read(request), self.model.read(request))


KVModelMachine.TestCase.settings = settings(max_examples=EXAMPLES, stateful_step_count=STEPS)
TestKVModel = KVModelMachine.TestCase


# -- Unit tests of the state machine -------------------------------------------------------------


def _command(request: WriteRequest, seq: int = 1) -> bytes:
    return encode_command(Command(origin=3, seq=seq, request=request))


def test_apply_answers_with_command_response_and_events() -> None:
    sm = KVStateMachine()
    result = sm.apply(1, _command(PutRequest(key=b"k", value=b"v"), seq=9))
    assert result is not None
    assert result.command == Command(3, 9, PutRequest(key=b"k", value=b"v"))
    assert result.response == PutResponse(header=ResponseHeader(revision=2))
    assert result.events == [Event(EventType.PUT, KeyValue(b"k", 2, 2, 1, b"v"))]
    assert sm.status() == KVStatus(applied_index=1, revision=2, compact_revision=0, keys=1)


def test_apply_is_idempotent_by_index() -> None:
    sm = KVStateMachine()
    data = _command(PutRequest(key=b"k"))
    assert sm.apply(5, data) is not None
    assert sm.apply(5, data) is None
    assert sm.apply(3, data) is None
    assert sm.status().revision == 2
    assert sm.apply(6, b"") is None  # Raft's no-op entry
    assert sm.applied_index == 6 and sm.status().revision == 2
    assert sm.apply(9, data) is not None  # gaps (e.g. config entries) are fine
    assert sm.status() == KVStatus(applied_index=9, revision=3, compact_revision=0, keys=1)


@pytest.mark.parametrize("data", [b"\x00", b"garbage", b"\x93\x01\x02\x03", b"\x94" + b"\x00" * 9])
def test_undecodable_entries_answer_malformed(data: bytes) -> None:
    sm = KVStateMachine()
    result = sm.apply(1, data)
    assert result is not None and result.command is None and result.events == []
    assert isinstance(result.response, Error)
    assert result.response.code == ErrorCode.MALFORMED and result.response.definite
    assert sm.applied_index == 1


def test_apply_revalidates_commands() -> None:
    sm = KVStateMachine()
    result = sm.apply(1, _command(PutRequest(key=b"k", lease=42)))
    assert result is not None and isinstance(result.response, Error)
    assert result.response.code == ErrorCode.LEASE_NOT_FOUND
    result = sm.apply(2, _command(PutRequest(key=b"")))
    assert result is not None and isinstance(result.response, Error)
    assert result.response.code == ErrorCode.EMPTY_KEY
    assert sm.status().revision == 1


def test_apply_compaction() -> None:
    sm = KVStateMachine()
    sm.apply(1, _command(PutRequest(key=b"k")))
    sm.apply(2, _command(PutRequest(key=b"k")))
    result = sm.apply(3, _command(CompactionRequest(revision=2)))
    assert result is not None and result.events == []
    assert result.response == CompactionResponse(header=ResponseHeader(revision=3))
    result = sm.apply(4, _command(CompactionRequest(revision=2)))
    assert result is not None and isinstance(result.response, Error)
    assert result.response.code == ErrorCode.COMPACTED and result.response.compact_revision == 2
    assert sm.status().compact_revision == 2


def test_unexpected_failure_is_a_definite_internal_error(monkeypatch: pytest.MonkeyPatch) -> None:
    sm = KVStateMachine()

    def boom(request: object) -> None:
        raise RuntimeError("bug")

    monkeypatch.setattr(sm.store, "put", boom)
    result = sm.apply(1, _command(PutRequest(key=b"k")))
    assert result is not None and isinstance(result.response, Error)
    assert result.response.code == ErrorCode.INTERNAL and result.response.definite
    assert sm.applied_index == 1


def test_read() -> None:
    sm = KVStateMachine()
    sm.apply(1, _command(PutRequest(key=b"k", value=b"v")))
    response = sm.read(RangeRequest(key=b"k"))
    assert response == RangeResponse(
        header=ResponseHeader(revision=2), kvs=[KeyValue(b"k", 2, 2, 1, b"v")], count=1
    )


def _busy_machine() -> KVStateMachine:
    sm = KVStateMachine()
    requests: list[WriteRequest] = [
        PutRequest(key=b"a", value=b"1"),
        PutRequest(key=b"b", value=b"2"),
        TxnRequest(success=[PutRequest(key=b"a", value=b"3"), DeleteRangeRequest(key=b"b")]),
        CompactionRequest(revision=3),
        PutRequest(key=b"c", value=b"4"),
    ]
    for index, request in enumerate(requests, 1):
        sm.apply(index, _command(request, seq=index))
    return sm


def test_snapshot_round_trip() -> None:
    sm = _busy_machine()
    restored = KVStateMachine.from_snapshot(sm.snapshot())
    assert restored.status() == sm.status() == KVStatus(5, 5, 3, 2)
    assert restored.snapshot() == sm.snapshot()
    request = RangeRequest(key=b"\0", range_end=b"\0", revision=3)
    assert restored.read(request) == sm.read(request)
    assert restored.apply(5, _command(PutRequest(key=b"x"))) is None
    assert restored.apply(6, _command(PutRequest(key=b"x"))) is not None


def test_restore_replaces_everything() -> None:
    sm = _busy_machine()
    empty = KVStateMachine().snapshot()
    sm.restore(empty)
    assert sm.status() == KVStatus(0, 1, 0, 0)


def test_corrupt_snapshots_are_rejected_and_change_nothing() -> None:
    sm = _busy_machine()
    good = sm.snapshot()
    before = sm.status()
    flipped = bytearray(good)
    flipped[len(good) // 2] ^= 0x40
    wrong_version = good[:4] + (SNAPSHOT_FORMAT + 1).to_bytes(2, "big") + good[6:]
    for bad in [b"", b"KVSM", b"nonsense-nonsense", bytes(flipped), good[:-3], wrong_version]:
        with pytest.raises(ValueError, match="snapshot"):
            sm.restore(bad)
        assert sm.status() == before
    with pytest.raises(ValueError):
        KVStateMachine.from_snapshot(b"\x00" * 64)


def test_snapshot_with_valid_checksum_but_inconsistent_store_is_rejected() -> None:
    import struct
    import zlib

    from kvstore.mvcc import StoreDump
    from kvstore.state_machine import _Snapshot

    body = msgspec.msgpack.encode(_Snapshot(1, StoreDump(5, 0, [KeyValue(b"a", 2, 2, 1)])))
    data = struct.pack(">4sHI", b"KVSM", SNAPSHOT_FORMAT, zlib.crc32(body)) + body
    with pytest.raises(ValueError, match="corrupt KV snapshot"):
        KVStateMachine.from_snapshot(data)
