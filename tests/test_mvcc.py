"""Unit tests of the multi-version store (kvstore/mvcc.py): one test per semantic."""

from __future__ import annotations

import pytest

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
    ResponseHeader,
    SortOrder,
    SortTarget,
    TxnRequest,
    TxnResponse,
    prefix_range_end,
)
from kvstore.mvcc import MVCCStore, StoreDump, WriteResult

# -- Helpers ------------------------------------------------------------------------------


def put(store: MVCCStore, key: bytes, value: bytes = b"", **kwargs: object) -> WriteResult:
    return store.put(PutRequest(key=key, value=value, **kwargs))  # type: ignore[arg-type]


def delete(store: MVCCStore, key: bytes, range_end: bytes = b"", **kw: object) -> WriteResult:
    return store.delete_range(DeleteRangeRequest(key=key, range_end=range_end, **kw))  # type: ignore[arg-type]


def rng(store: MVCCStore, key: bytes, range_end: bytes = b"", **kwargs: object) -> RangeResponse:
    response = store.range(RangeRequest(key=key, range_end=range_end, **kwargs))  # type: ignore[arg-type]
    assert isinstance(response, RangeResponse), response
    return response


def keys(response: RangeResponse) -> list[bytes]:
    return [kv.key for kv in response.kvs]


def value_of(store: MVCCStore, key: bytes, revision: int = 0) -> bytes | None:
    kvs = rng(store, key, revision=revision).kvs
    return kvs[0].value if kvs else None


def error_of(result: object) -> Error:
    response = result.response if isinstance(result, WriteResult) else result
    assert isinstance(response, Error), response
    assert response.definite
    return response


def txn(store: MVCCStore, compare=(), success=(), failure=()) -> WriteResult:  # type: ignore[no-untyped-def]
    return store.txn(
        TxnRequest(compare=list(compare), success=list(success), failure=list(failure))
    )


def cmp(key: bytes, target: CompareTarget, result: CompareResult, value: int | bytes) -> Compare:
    return Compare(key=key, target=target, result=result, value=value)


@pytest.fixture
def store() -> MVCCStore:
    return MVCCStore()


@pytest.fixture
def abc(store: MVCCStore) -> MVCCStore:
    """a=1 (rev 2), b=2 (rev 3), c=3 (rev 4)."""
    put(store, b"a", b"1")
    put(store, b"b", b"2")
    put(store, b"c", b"3")
    return store


# -- Revisions ----------------------------------------------------------------------------


def test_empty_store_is_at_revision_one(store: MVCCStore) -> None:
    assert store.revision == 1
    assert store.compact_revision == 0
    assert len(store) == 0
    response = rng(store, b"a", b"\0")
    assert response.header.revision == 1
    assert response.kvs == [] and response.count == 0 and not response.more


def test_each_changing_write_takes_one_revision(store: MVCCStore) -> None:
    assert put(store, b"a").response.header.revision == 2  # type: ignore[union-attr]
    assert put(store, b"a").response.header.revision == 3  # type: ignore[union-attr]
    assert delete(store, b"a").response.header.revision == 4  # type: ignore[union-attr]
    assert store.revision == 4


def test_delete_of_nothing_does_not_bump_the_revision(abc: MVCCStore) -> None:
    result = delete(abc, b"x")
    assert result.response == DeleteRangeResponse(header=ResponseHeader(revision=4), deleted=0)
    assert result.events == []
    result = delete(abc, b"d", b"z")
    assert abc.revision == 4 and result.events == []


def test_txn_with_many_writes_is_one_revision(abc: MVCCStore) -> None:
    result = txn(
        abc,
        success=[
            PutRequest(key=b"x", value=b"9"),
            DeleteRangeRequest(key=b"a"),
            PutRequest(key=b"y"),
        ],
    )
    assert abc.revision == 5
    assert result.response.header.revision == 5  # type: ignore[union-attr]
    assert [e.kv.mod_revision for e in result.events] == [5, 5, 5]


def test_read_only_txn_does_not_bump_the_revision(abc: MVCCStore) -> None:
    result = txn(abc, success=[RangeRequest(key=b"a"), DeleteRangeRequest(key=b"zz")])
    assert abc.revision == 4
    assert result.response.header.revision == 4  # type: ignore[union-attr]
    assert result.events == []


def test_failed_txn_with_empty_failure_changes_nothing(abc: MVCCStore) -> None:
    result = txn(
        abc,
        compare=[cmp(b"a", CompareTarget.VALUE, CompareResult.EQUAL, b"nope")],
        success=[PutRequest(key=b"a", value=b"x")],
    )
    assert isinstance(result.response, TxnResponse)
    assert not result.response.succeeded and result.response.responses == []
    assert abc.revision == 4 and value_of(abc, b"a") == b"1"


def test_compaction_does_not_bump_the_revision(abc: MVCCStore) -> None:
    assert abc.compact(3) == CompactionResponse(header=ResponseHeader(revision=4))
    assert abc.revision == 4


# -- Per-key metadata -----------------------------------------------------------------------


def test_create_mod_and_version(store: MVCCStore) -> None:
    put(store, b"k", b"1")
    put(store, b"other")
    put(store, b"k", b"2")
    assert rng(store, b"k").kvs == [KeyValue(b"k", 2, 4, 2, b"2")]


def test_delete_resets_version_and_recreate_starts_over(store: MVCCStore) -> None:
    put(store, b"k", b"1")
    put(store, b"k", b"2")
    delete(store, b"k")
    assert rng(store, b"k").kvs == []
    put(store, b"k", b"3")
    assert rng(store, b"k").kvs == [KeyValue(b"k", 5, 5, 1, b"3")]


def test_lease_is_stored(store: MVCCStore) -> None:
    put(store, b"k", b"v", lease=7)
    assert rng(store, b"k").kvs[0].lease == 7


# -- Put ----------------------------------------------------------------------------------


def test_put_returns_prev_kv_only_when_asked(store: MVCCStore) -> None:
    assert put(store, b"k", b"1", prev_kv=True).response.prev_kv is None  # type: ignore[union-attr]
    assert put(store, b"k", b"2").response.prev_kv is None  # type: ignore[union-attr]
    response = put(store, b"k", b"3", prev_kv=True).response
    assert response == PutResponse(
        header=ResponseHeader(revision=4), prev_kv=KeyValue(b"k", 2, 3, 2, b"2")
    )


def test_ignore_value_keeps_the_value(store: MVCCStore) -> None:
    put(store, b"k", b"v", lease=3)
    put(store, b"k", ignore_value=True, lease=4)
    assert rng(store, b"k").kvs == [KeyValue(b"k", 2, 3, 2, b"v", 4)]


def test_ignore_lease_keeps_the_lease(store: MVCCStore) -> None:
    put(store, b"k", b"v", lease=3)
    put(store, b"k", b"w", ignore_lease=True)
    assert rng(store, b"k").kvs == [KeyValue(b"k", 2, 3, 2, b"w", 3)]


@pytest.mark.parametrize("flag", ["ignore_value", "ignore_lease"])
def test_ignore_flags_need_an_existing_key(store: MVCCStore, flag: str) -> None:
    put(store, b"k")
    delete(store, b"k")
    result = store.put(
        PutRequest(
            key=b"k", ignore_value=flag == "ignore_value", ignore_lease=flag == "ignore_lease"
        )
    )
    assert error_of(result).code == ErrorCode.KEY_NOT_FOUND
    assert result.events == [] and store.revision == 3


# -- Range --------------------------------------------------------------------------------


def test_range_single_key_and_half_open_interval(abc: MVCCStore) -> None:
    assert keys(rng(abc, b"b")) == [b"b"]
    assert keys(rng(abc, b"bb")) == []
    assert keys(rng(abc, b"a", b"c")) == [b"a", b"b"]
    assert keys(rng(abc, b"a", b"c\0")) == [b"a", b"b", b"c"]
    assert keys(rng(abc, b"b", b"b")) == []
    assert keys(rng(abc, b"c", b"a")) == []


def test_range_end_nul_means_every_key_from_key(abc: MVCCStore) -> None:
    assert keys(rng(abc, b"b", b"\0")) == [b"b", b"c"]
    put(abc, b"\0")
    put(abc, b"\xff\xff")
    assert keys(rng(abc, b"\0", b"\0")) == [b"\0", b"a", b"b", b"c", b"\xff\xff"]


def test_prefix_range(store: MVCCStore) -> None:
    for key in [b"foo", b"foo/a", b"foo/b", b"foo0", b"fop", b"fo"]:
        put(store, key)
    assert keys(rng(store, b"foo/", prefix_range_end(b"foo/"))) == [b"foo/a", b"foo/b"]
    assert keys(rng(store, b"foo", prefix_range_end(b"foo"))) == [
        b"foo",
        b"foo/a",
        b"foo/b",
        b"foo0",
    ]


def test_limit_more_and_count(abc: MVCCStore) -> None:
    response = rng(abc, b"a", b"\0", limit=2)
    assert keys(response) == [b"a", b"b"] and response.more and response.count == 3
    response = rng(abc, b"a", b"\0", limit=3)
    assert keys(response) == [b"a", b"b", b"c"] and not response.more and response.count == 3
    response = rng(abc, b"b", limit=1)
    assert keys(response) == [b"b"] and not response.more and response.count == 1


def test_count_only_and_keys_only(abc: MVCCStore) -> None:
    response = rng(abc, b"a", b"\0", count_only=True)
    assert response.kvs == [] and response.count == 3 and not response.more
    response = rng(abc, b"a", b"\0", keys_only=True, limit=1)
    assert response.kvs == [KeyValue(b"a", 2, 2, 1, b"")] and response.more
    assert rng(abc, b"a").kvs[0].value == b"1"  # stored value untouched


def test_sort_by_each_target(store: MVCCStore) -> None:
    put(store, b"a", b"3")  # rev 2
    put(store, b"b", b"1")  # rev 3
    put(store, b"c", b"2")  # rev 4
    put(store, b"b", b"4")  # rev 5: b has version 2
    put(store, b"a", b"5")  # rev 6: a has version 2, mod 6

    def order(target: SortTarget, direction: SortOrder) -> list[bytes]:
        return keys(rng(store, b"a", b"\0", sort_target=target, sort_order=direction))

    assert order(SortTarget.KEY, SortOrder.NONE) == [b"a", b"b", b"c"]
    assert order(SortTarget.KEY, SortOrder.ASCEND) == [b"a", b"b", b"c"]
    assert order(SortTarget.KEY, SortOrder.DESCEND) == [b"c", b"b", b"a"]
    assert order(SortTarget.VALUE, SortOrder.ASCEND) == [b"c", b"b", b"a"]
    assert order(SortTarget.VALUE, SortOrder.NONE) == [b"c", b"b", b"a"]  # NONE -> ascending
    assert order(SortTarget.VALUE, SortOrder.DESCEND) == [b"a", b"b", b"c"]
    assert order(SortTarget.MOD, SortOrder.ASCEND) == [b"c", b"b", b"a"]
    assert order(SortTarget.MOD, SortOrder.DESCEND) == [b"a", b"b", b"c"]
    assert order(SortTarget.CREATE, SortOrder.DESCEND) == [b"c", b"b", b"a"]
    # Ties keep key order, both ways: versions are a=2, b=2, c=1.
    assert order(SortTarget.VERSION, SortOrder.ASCEND) == [b"c", b"a", b"b"]
    assert order(SortTarget.VERSION, SortOrder.DESCEND) == [b"a", b"b", b"c"]


def test_sort_then_limit(abc: MVCCStore) -> None:
    response = rng(abc, b"a", b"\0", sort_order=SortOrder.DESCEND, limit=2)
    assert keys(response) == [b"c", b"b"] and response.more and response.count == 3
    response = rng(
        abc, b"a", b"\0", sort_target=SortTarget.MOD, sort_order=SortOrder.DESCEND, limit=1
    )
    assert keys(response) == [b"c"] and response.more


def test_revision_filters_apply_before_limit_and_count(store: MVCCStore) -> None:
    for key in [b"a", b"b", b"c", b"d"]:
        put(store, key)  # revs 2..5
    put(store, b"a")  # a: create 2, mod 6
    response = rng(store, b"a", b"\0", min_mod_revision=4)
    assert keys(response) == [b"a", b"c", b"d"] and response.count == 3
    response = rng(store, b"a", b"\0", max_mod_revision=4)
    assert keys(response) == [b"b", b"c"]
    response = rng(store, b"a", b"\0", min_create_revision=3, max_create_revision=4)
    assert keys(response) == [b"b", b"c"]
    response = rng(store, b"a", b"\0", min_mod_revision=4, limit=1)
    assert keys(response) == [b"a"] and response.more and response.count == 3
    response = rng(store, b"a", b"\0", min_mod_revision=5, count_only=True)
    assert response.count == 2


def test_historical_reads(store: MVCCStore) -> None:
    put(store, b"a", b"1")  # 2
    put(store, b"b", b"1")  # 3
    put(store, b"a", b"2")  # 4
    delete(store, b"a")  # 5
    put(store, b"a", b"3")  # 6
    assert [value_of(store, b"a", r) for r in range(1, 7)] == [None, b"1", b"1", b"2", None, b"3"]
    assert keys(rng(store, b"a", b"\0", revision=3)) == [b"a", b"b"]
    assert keys(rng(store, b"a", b"\0", revision=5)) == [b"b"]
    assert rng(store, b"a", b"\0", revision=4, count_only=True).count == 2
    assert rng(store, b"a", revision=4).kvs == [KeyValue(b"a", 2, 4, 2, b"2")]
    assert rng(store, b"a", revision=4).header.revision == 6  # header: current revision
    response = rng(store, b"a", b"\0", revision=4, sort_order=SortOrder.DESCEND, limit=1)
    assert keys(response) == [b"b"] and response.more


def test_future_revision_is_an_error(abc: MVCCStore) -> None:
    assert value_of(abc, b"a", 4) == b"1"
    assert error_of(abc.range(RangeRequest(key=b"a", revision=5))).code == (
        ErrorCode.FUTURE_REVISION
    )


def test_negative_limit_and_revision_are_lenient_here(abc: MVCCStore) -> None:
    """Validation rejects them; the store itself treats them as 0."""
    response = rng(abc, b"a", b"\0", limit=-1, revision=-3)
    assert response.count == 3 and len(response.kvs) == 3


# -- Delete -------------------------------------------------------------------------------


def test_delete_range_counts_returns_prev_kvs_and_tombstones(abc: MVCCStore) -> None:
    result = delete(abc, b"a", b"c", prev_kv=True)
    assert result.response == DeleteRangeResponse(
        header=ResponseHeader(revision=5),
        deleted=2,
        prev_kvs=[KeyValue(b"a", 2, 2, 1, b"1"), KeyValue(b"b", 3, 3, 1, b"2")],
    )
    assert result.events == [
        Event(EventType.DELETE, KeyValue(b"a", 0, 5, 0), KeyValue(b"a", 2, 2, 1, b"1")),
        Event(EventType.DELETE, KeyValue(b"b", 0, 5, 0), KeyValue(b"b", 3, 3, 1, b"2")),
    ]
    assert keys(rng(abc, b"a", b"\0")) == [b"c"] and len(abc) == 1


def test_delete_without_prev_kv(abc: MVCCStore) -> None:
    result = delete(abc, b"a", b"\0")
    assert result.response == DeleteRangeResponse(header=ResponseHeader(revision=5), deleted=3)


# -- Events -------------------------------------------------------------------------------


def test_put_events_carry_prev_kv(store: MVCCStore) -> None:
    first = put(store, b"k", b"1").events
    second = put(store, b"k", b"2").events
    assert first == [Event(EventType.PUT, KeyValue(b"k", 2, 2, 1, b"1"), None)]
    assert second == [
        Event(EventType.PUT, KeyValue(b"k", 2, 3, 2, b"2"), KeyValue(b"k", 2, 2, 1, b"1"))
    ]


def test_txn_events_follow_operation_order(abc: MVCCStore) -> None:
    result = txn(
        abc,
        success=[
            PutRequest(key=b"z"),
            DeleteRangeRequest(key=b"a", range_end=b"c"),
            PutRequest(key=b"m"),
        ],
    )
    assert [(e.type, e.kv.key) for e in result.events] == [
        (EventType.PUT, b"z"),
        (EventType.DELETE, b"a"),
        (EventType.DELETE, b"b"),
        (EventType.PUT, b"m"),
    ]


def test_events_since_replays_history_in_sub_revision_order(abc: MVCCStore) -> None:
    applied = []
    applied += txn(
        abc, success=[PutRequest(key=b"z"), DeleteRangeRequest(key=b"a"), PutRequest(key=b"b")]
    ).events
    applied += put(abc, b"a", b"again").events
    assert abc.events_since(5) == applied
    assert abc.events_since(5, b"a", b"b") == [applied[1], applied[3]]
    assert abc.events_since(5, b"z") == [applied[0]]
    assert abc.events_since(5, end_revision=5) == applied[:3]
    assert abc.events_since(7) == []
    everything = abc.events_since(0)
    assert isinstance(everything, list)
    assert [e.kv.key for e in everything] == [b"a", b"b", b"c", b"z", b"a", b"b", b"a"]


def test_events_since_at_or_below_compaction_is_compacted(abc: MVCCStore) -> None:
    delete(abc, b"a")  # 5
    put(abc, b"b", b"x")  # 6
    abc.compact(5)
    error = error_of(abc.events_since(5))
    assert error.code == ErrorCode.COMPACTED and error.compact_revision == 5
    [event] = abc.events_since(6)  # type: ignore[misc]
    assert event.prev_kv == KeyValue(b"b", 3, 3, 1, b"2")  # prev of the first kept change


# -- Txn ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "value", "equal", "less", "greater"),
    [
        # b: value b"2", version 1, create 3, mod 3, lease 0
        (CompareTarget.VALUE, b"2", b"2", b"3", b"1"),
        (CompareTarget.VERSION, 1, 1, 2, 0),
        (CompareTarget.CREATE, 3, 3, 4, 2),
        (CompareTarget.MOD, 3, 3, 4, 2),
        (CompareTarget.LEASE, 0, 0, 1, -1),
    ],
)
def test_compare_targets_and_results(
    abc: MVCCStore,
    target: CompareTarget,
    value: int | bytes,
    equal: int | bytes,
    less: int | bytes,
    greater: int | bytes,
) -> None:
    def holds(result: CompareResult, operand: int | bytes) -> bool:
        response = txn(abc, compare=[cmp(b"b", target, result, operand)]).response
        assert isinstance(response, TxnResponse)
        return response.succeeded

    assert holds(CompareResult.EQUAL, equal)
    assert not holds(CompareResult.EQUAL, less)
    assert holds(CompareResult.NOT_EQUAL, less)
    assert not holds(CompareResult.NOT_EQUAL, equal)
    assert holds(CompareResult.LESS, less)  # actual < operand
    assert not holds(CompareResult.LESS, equal)
    assert holds(CompareResult.GREATER, greater)
    assert not holds(CompareResult.GREATER, equal)


def test_compare_on_missing_key(abc: MVCCStore) -> None:
    def holds(compare: Compare) -> bool:
        response = txn(abc, compare=[compare]).response
        assert isinstance(response, TxnResponse)
        return response.succeeded

    assert holds(cmp(b"nope", CompareTarget.VERSION, CompareResult.EQUAL, 0))
    assert holds(cmp(b"nope", CompareTarget.CREATE, CompareResult.EQUAL, 0))
    assert holds(cmp(b"nope", CompareTarget.MOD, CompareResult.LESS, 1))
    assert holds(cmp(b"nope", CompareTarget.LEASE, CompareResult.EQUAL, 0))
    # A VALUE compare on a missing key is false, whatever the operator (as etcd).
    assert not holds(cmp(b"nope", CompareTarget.VALUE, CompareResult.EQUAL, b""))
    assert not holds(cmp(b"nope", CompareTarget.VALUE, CompareResult.NOT_EQUAL, b"x"))


def test_compare_over_a_range_must_hold_for_every_key(abc: MVCCStore) -> None:
    def holds(compare: Compare) -> bool:
        response = txn(abc, compare=[compare]).response
        assert isinstance(response, TxnResponse)
        return response.succeeded

    def ranged(result: CompareResult, value: int, end: bytes) -> Compare:
        return Compare(
            key=b"a", range_end=end, target=CompareTarget.MOD, result=result, value=value
        )

    assert holds(ranged(CompareResult.LESS, 5, b"\0"))  # mods 2, 3, 4
    assert not holds(ranged(CompareResult.LESS, 4, b"\0"))
    assert holds(ranged(CompareResult.LESS, 4, b"c"))  # a and b only
    assert holds(ranged(CompareResult.GREATER, 1, b"\0"))
    # An empty range compares against a zero key; VALUE is then false.
    empty = Compare(key=b"x", range_end=b"y", target=CompareTarget.VERSION, value=0)
    assert holds(empty)
    empty_value = Compare(key=b"x", range_end=b"y", target=CompareTarget.VALUE, value=b"")
    assert not holds(empty_value)


def test_all_compares_must_hold(abc: MVCCStore) -> None:
    result = txn(
        abc,
        compare=[
            cmp(b"a", CompareTarget.VALUE, CompareResult.EQUAL, b"1"),
            cmp(b"b", CompareTarget.VALUE, CompareResult.EQUAL, b"wrong"),
        ],
        success=[PutRequest(key=b"s")],
        failure=[PutRequest(key=b"f"), RangeRequest(key=b"a")],
    )
    response = result.response
    assert isinstance(response, TxnResponse) and not response.succeeded
    header = ResponseHeader(revision=5)
    assert response == TxnResponse(
        header=header,
        succeeded=False,
        responses=[
            PutResponse(header=header),
            RangeResponse(header=header, kvs=[KeyValue(b"a", 2, 2, 1, b"1")], count=1),
        ],
    )
    assert value_of(abc, b"f") == b"" and value_of(abc, b"s") is None


def test_txn_reads_see_earlier_writes(abc: MVCCStore) -> None:
    result = txn(
        abc,
        success=[
            RangeRequest(key=b"a", range_end=b"\0", count_only=True),
            PutRequest(key=b"a", value=b"new", prev_kv=True),
            DeleteRangeRequest(key=b"b"),
            RangeRequest(key=b"a", range_end=b"\0"),
            RangeRequest(key=b"a", revision=5),  # the revision being written
            RangeRequest(key=b"a", revision=4),  # before the txn
        ],
    )
    response = result.response
    assert isinstance(response, TxnResponse)
    first, put_response, _, after, at5, at4 = response.responses
    assert isinstance(first, RangeResponse) and first.count == 3
    assert isinstance(put_response, PutResponse)
    assert put_response.prev_kv == KeyValue(b"a", 2, 2, 1, b"1")
    assert isinstance(after, RangeResponse)
    assert after.kvs == [KeyValue(b"a", 2, 5, 2, b"new"), KeyValue(b"c", 4, 4, 1, b"3")]
    assert isinstance(at5, RangeResponse) and at5.kvs[0].value == b"new"
    assert isinstance(at4, RangeResponse) and at4.kvs[0].value == b"1"
    assert all(r.header.revision == 5 for r in response.responses)


def test_nested_txn_compares_see_outer_writes(abc: MVCCStore) -> None:
    inner = TxnRequest(
        compare=[cmp(b"a", CompareTarget.VALUE, CompareResult.EQUAL, b"changed")],
        success=[PutRequest(key=b"inner-success")],
        failure=[PutRequest(key=b"inner-failure")],
    )
    result = txn(abc, success=[PutRequest(key=b"a", value=b"changed"), inner])
    response = result.response
    assert isinstance(response, TxnResponse)
    nested = response.responses[1]
    assert isinstance(nested, TxnResponse) and nested.succeeded
    assert nested.header.revision == 5 and nested.responses[0].header.revision == 5
    assert value_of(abc, b"inner-success") == b"" and value_of(abc, b"inner-failure") is None


@pytest.mark.parametrize(
    "failing",
    [
        PutRequest(key=b"gone", ignore_value=True),
        RangeRequest(key=b"a", revision=2),  # compacted
        RangeRequest(key=b"a", revision=6),  # future, even with writes pending
        TxnRequest(success=[PutRequest(key=b"nested"), PutRequest(key=b"gone", ignore_lease=True)]),
    ],
)
def test_failing_operation_rolls_back_the_whole_txn(abc: MVCCStore, failing: object) -> None:
    abc.compact(3)
    before = abc.dump()
    history = abc.events_since(4)
    result = txn(
        abc,
        success=[
            PutRequest(key=b"a", value=b"x"),
            DeleteRangeRequest(key=b"b", range_end=b"\0"),
            PutRequest(key=b"new"),
            failing,
        ],
    )
    assert error_of(result).code in {
        ErrorCode.KEY_NOT_FOUND,
        ErrorCode.COMPACTED,
        ErrorCode.FUTURE_REVISION,
    }
    assert result.events == []
    assert abc.dump() == before
    assert abc.revision == 4 and len(abc) == 3
    assert keys(rng(abc, b"a", b"\0")) == [b"a", b"b", b"c"]
    assert abc.events_since(4) == history  # changelog intact
    put(abc, b"after")
    assert abc.revision == 5


def test_same_key_twice_in_one_txn_is_ordered_by_sub_revision(store: MVCCStore) -> None:
    """Validation forbids it; the store still gives it a defined meaning."""
    result = txn(
        store,
        success=[PutRequest(key=b"k", value=b"1"), PutRequest(key=b"k", value=b"2")],
    )
    assert [e.kv for e in result.events] == [
        KeyValue(b"k", 2, 2, 1, b"1"),
        KeyValue(b"k", 2, 2, 2, b"2"),
    ]
    assert rng(store, b"k").kvs == [KeyValue(b"k", 2, 2, 2, b"2")]
    assert rng(store, b"k", revision=2).kvs == [KeyValue(b"k", 2, 2, 2, b"2")]
    assert store.events_since(1) == result.events
    restored = MVCCStore.load(store.dump())
    assert restored.events_since(1) == result.events


# -- Compaction ---------------------------------------------------------------------------


def test_compact_bounds(abc: MVCCStore) -> None:
    assert error_of(abc.compact(5)).code == ErrorCode.FUTURE_REVISION
    assert isinstance(abc.compact(2), CompactionResponse)
    error = error_of(abc.compact(2))
    assert error.code == ErrorCode.COMPACTED and error.compact_revision == 2
    assert error_of(abc.compact(1)).code == ErrorCode.COMPACTED
    assert isinstance(abc.compact(4), CompactionResponse)  # the current revision
    assert abc.compact_revision == 4


def test_compact_on_fresh_store(store: MVCCStore) -> None:
    assert isinstance(store.compact(1), CompactionResponse)
    assert error_of(store.compact(1)).code == ErrorCode.COMPACTED


def test_reads_at_and_above_compaction_are_exact(store: MVCCStore) -> None:
    put(store, b"a", b"1")  # 2
    put(store, b"a", b"2")  # 3
    put(store, b"b", b"1")  # 4
    delete(store, b"b")  # 5
    put(store, b"a", b"3")  # 6
    put(store, b"c", b"1")  # 7
    delete(store, b"c")  # 8
    expected = {r: rng(store, b"a", b"\0", revision=r).kvs for r in range(4, 9)}
    store.compact(4)
    for revision, kvs in expected.items():
        assert rng(store, b"a", b"\0", revision=revision).kvs == kvs
    error = error_of(store.range(RangeRequest(key=b"a", revision=3)))
    assert error.code == ErrorCode.COMPACTED and error.compact_revision == 4
    store.compact(5)  # b's tombstone at 5 goes, and b with it
    assert [kv.key for kv in store.dump().entries] == [b"a", b"a", b"c", b"c"]
    store.compact(8)  # c deleted at 8: gone; a keeps its latest version only
    assert store.dump() == StoreDump(8, 8, [KeyValue(b"a", 2, 6, 3, b"3")])
    assert rng(store, b"a", b"\0", revision=8).kvs == [KeyValue(b"a", 2, 6, 3, b"3")]
    assert len(store) == 1


def test_compaction_keeps_what_is_visible_at_the_compacted_revision(store: MVCCStore) -> None:
    put(store, b"k", b"1")  # 2
    put(store, b"other")  # 3
    put(store, b"k", b"2")  # 4
    store.compact(3)
    assert value_of(store, b"k", 3) == b"1"
    assert value_of(store, b"k", 4) == b"2"
    assert [kv.mod_revision for kv in store.dump().entries] == [2, 3, 4]


def test_delete_after_compaction_point_survives_compaction(store: MVCCStore) -> None:
    put(store, b"k", b"1")  # 2
    delete(store, b"k")  # 3
    put(store, b"k", b"2")  # 4
    store.compact(2)
    assert value_of(store, b"k", 2) == b"1"
    assert value_of(store, b"k", 3) is None
    assert [e.type for e in store.events_since(3)] == [EventType.DELETE, EventType.PUT]  # type: ignore[union-attr]
    store.compact(3)
    assert value_of(store, b"k", 3) is None and value_of(store, b"k") == b"2"
    assert store.dump().entries == [KeyValue(b"k", 4, 4, 1, b"2")]


def test_compaction_only_visits_recent_changes_but_misses_nothing(store: MVCCStore) -> None:
    for i in range(20):
        put(store, b"k%02d" % i, b"v")
    for i in range(0, 20, 2):
        put(store, b"k%02d" % i, b"w")
    store.compact(store.revision)
    assert len(store.dump().entries) == 20
    delete(store, b"k00", b"k10")
    store.compact(store.revision)
    assert len(store.dump().entries) == 10 and len(store) == 10


# -- Dump / load --------------------------------------------------------------------------


def test_dump_load_round_trip(abc: MVCCStore) -> None:
    txn(abc, success=[PutRequest(key=b"a", value=b"t"), DeleteRangeRequest(key=b"b")])
    abc.compact(4)
    put(abc, b"b", b"back")
    restored = MVCCStore.load(abc.dump())
    assert restored.dump() == abc.dump()
    assert restored.revision == abc.revision == 6
    assert restored.compact_revision == 4
    assert restored.events_since(5) == abc.events_since(5)
    for revision in range(4, 7):
        assert rng(restored, b"a", b"\0", revision=revision) == rng(
            abc, b"a", b"\0", revision=revision
        )
    put(restored, b"c", b"more")
    assert restored.revision == 7


def test_load_of_empty_dump(store: MVCCStore) -> None:
    restored = MVCCStore.load(store.dump())
    assert restored.revision == 1 and len(restored) == 0


@pytest.mark.parametrize(
    "dump",
    [
        StoreDump(0, 0, []),
        StoreDump(3, 4, []),
        StoreDump(2, 0, []),  # revision 2 with no change
        StoreDump(2, 0, [KeyValue(b"a", 2, 2, 2)]),  # bad version
        StoreDump(2, 0, [KeyValue(b"a", 3, 2, 1)]),  # bad create revision
        StoreDump(3, 0, [KeyValue(b"a", 2, 2, 1), KeyValue(b"b", 4, 4, 1)]),  # gap
        StoreDump(2, 0, [KeyValue(b"a", 0, 2, 0)]),  # tombstone of nothing
        StoreDump(3, 2, [KeyValue(b"a", 2, 2, 1), KeyValue(b"a", 2, 2, 1)]),  # dup base
        StoreDump(3, 0, [KeyValue(b"a", 3, 3, 1), KeyValue(b"b", 2, 2, 1)]),  # out of order
    ],
)
def test_load_rejects_inconsistent_dumps(dump: StoreDump) -> None:
    with pytest.raises(ValueError):
        MVCCStore.load(dump)


def test_get_helper(abc: MVCCStore) -> None:
    delete(abc, b"a")
    assert abc.get(b"a") is None
    assert abc.get(b"a", 4) == KeyValue(b"a", 2, 2, 1, b"1")
    assert abc.get(b"a", 1) is None
    assert abc.get(b"zzz") is None
