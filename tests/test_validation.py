"""Tests of request validation (kvstore/validation.py)."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvstore.api import (
    MAX_REQUEST_BYTES,
    MAX_TXN_OPS,
    CompactionRequest,
    Compare,
    CompareTarget,
    DeleteRangeRequest,
    ErrorCode,
    PutRequest,
    RangeRequest,
    RequestOp,
    StatusRequest,
    TxnRequest,
)
from kvstore.validation import validate_request

EXAMPLES = int(os.environ.get("KVSTORE_VALIDATION_EXAMPLES", "150"))


def code_of(request: object, **kwargs: object) -> ErrorCode | None:
    error = validate_request(request, **kwargs)  # type: ignore[arg-type]
    if error is None:
        return None
    assert error.definite
    return error.code


def put(key: bytes, **kwargs: object) -> PutRequest:
    return PutRequest(key=key, **kwargs)  # type: ignore[arg-type]


def delete(key: bytes, range_end: bytes = b"") -> DeleteRangeRequest:
    return DeleteRangeRequest(key=key, range_end=range_end)


def txn(*success: RequestOp, failure: tuple[RequestOp, ...] = (), compare=()) -> TxnRequest:  # type: ignore[no-untyped-def]
    return TxnRequest(compare=list(compare), success=list(success), failure=list(failure))


# -- Well-formed requests -------------------------------------------------------------------


@pytest.mark.parametrize(
    "request_",
    [
        put(b"k", value=b"v"),
        put(b"k", ignore_value=True),
        put(b"k", ignore_lease=True),
        RangeRequest(key=b"k", range_end=b"\0", limit=5, revision=3),
        delete(b"a", b"z"),
        CompactionRequest(revision=1),
        StatusRequest(),
        txn(),
        txn(
            put(b"a"),
            RangeRequest(key=b"a"),
            delete(b"b", b"c"),
            compare=[
                Compare(key=b"a", target=CompareTarget.VALUE, value=b"x"),
                Compare(key=b"a", target=CompareTarget.VERSION, value=3),
            ],
        ),
    ],
)
def test_well_formed_requests_pass(request_: object) -> None:
    assert code_of(request_) is None


# -- Keys -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "request_",
    [
        put(b""),
        RangeRequest(key=b""),
        RangeRequest(key=b"", range_end=b"\0"),
        delete(b""),
        txn(compare=[Compare(key=b"", target=CompareTarget.VERSION)]),
        txn(put(b"")),
        txn(failure=(RangeRequest(key=b""),)),
        txn(txn(delete(b""))),
    ],
)
def test_empty_key(request_: object) -> None:
    assert code_of(request_) == ErrorCode.EMPTY_KEY


# -- Size -----------------------------------------------------------------------------------


def test_request_size_limit() -> None:
    assert code_of(put(b"k", value=b"x" * (MAX_REQUEST_BYTES - 100))) is None
    too_big = put(b"k", value=b"x" * MAX_REQUEST_BYTES)
    assert code_of(too_big) == ErrorCode.REQUEST_TOO_LARGE
    assert code_of(put(b"k" * MAX_REQUEST_BYTES)) == ErrorCode.REQUEST_TOO_LARGE
    assert code_of(too_big, max_request_bytes=None) is None
    assert code_of(put(b"k", value=b"x" * 100), max_request_bytes=50) == (
        ErrorCode.REQUEST_TOO_LARGE
    )


# -- Txn operation counts ---------------------------------------------------------------------


def test_too_many_ops_per_side() -> None:
    ops = [put(b"k%d" % i) for i in range(MAX_TXN_OPS)]
    assert code_of(txn(*ops)) is None
    assert code_of(txn(*ops, failure=tuple(ops))) is None  # sides count separately
    assert code_of(txn(*ops, put(b"one-more"))) == ErrorCode.TOO_MANY_OPS
    assert code_of(txn(failure=(*ops, put(b"x")))) == ErrorCode.TOO_MANY_OPS
    compares = [Compare(key=b"k", target=CompareTarget.VERSION)] * (MAX_TXN_OPS + 1)
    assert code_of(txn(compare=compares)) == ErrorCode.TOO_MANY_OPS
    assert code_of(txn(*ops[:3]), max_txn_ops=2) == ErrorCode.TOO_MANY_OPS


def test_nested_txn_gets_what_its_parent_left() -> None:
    outer = [put(b"o%d" % i) for i in range(99)]  # with the nested txn: 100 ops
    fits = txn(*[put(b"n%d" % i) for i in range(MAX_TXN_OPS - 100)])
    too_many = txn(*[put(b"n%d" % i) for i in range(MAX_TXN_OPS - 99)])
    assert code_of(txn(*outer, fits)) is None
    assert code_of(txn(*outer, too_many)) == ErrorCode.TOO_MANY_OPS
    # Nesting is bounded: each level eats at least one op of the budget.
    deep: TxnRequest = txn()
    for _ in range(MAX_TXN_OPS):
        deep = txn(deep)
    assert code_of(deep) is None  # 128 levels of one op each fit exactly
    assert code_of(txn(deep)) == ErrorCode.TOO_MANY_OPS


# -- Duplicate keys ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("request_", "duplicate"),
    [
        (txn(put(b"a"), put(b"a")), True),
        (txn(put(b"a"), put(b"b")), False),
        (txn(put(b"a"), failure=(put(b"a"),)), False),  # branches exclude each other
        (txn(delete(b"a"), put(b"a")), True),
        (txn(put(b"a"), delete(b"a")), True),
        (txn(put(b"b"), delete(b"a", b"c")), True),
        (txn(put(b"c"), delete(b"a", b"c")), False),
        (txn(put(b"zzz"), delete(b"a", b"\0")), True),
        (txn(put(b"a"), delete(b"b", b"\0")), False),
        (txn(put(b"a"), delete(b"c", b"a")), False),  # empty range deletes nothing
        (txn(delete(b"a", b"c"), delete(b"b", b"d")), False),  # deletes may overlap
        (txn(put(b"a"), RangeRequest(key=b"a")), False),
        (txn(put(b"a"), txn(put(b"a"))), True),
        (txn(put(b"a"), txn(failure=(put(b"a"),))), True),
        (txn(txn(put(b"a")), txn(put(b"a"))), True),
        (txn(txn(put(b"a"), failure=(put(b"a"),))), False),
        (txn(txn(put(b"a"), failure=(delete(b"a"),))), False),
        (txn(txn(put(b"a"), delete(b"a"))), True),
        (txn(delete(b"a", b"b"), txn(put(b"a"))), True),
        (txn(txn(put(b"a")), txn(delete(b"a"))), True),  # etcd misses this one
        (txn(txn(txn(put(b"k"))), txn(failure=(txn(delete(b"j", b"l")),))), True),
        # A put beside its own group's far-reaching delete, inside another group's delete:
        (txn(delete(b"a", b"d"), txn(delete(b"b", b"\0"), failure=(put(b"c"),))), True),
        (txn(txn(delete(b"a", b"\0"), failure=(put(b"c"),)), delete(b"b", b"d")), True),
        (txn(txn(delete(b"a", b"\0"), failure=(put(b"c"),)), delete(b"b", b"c")), False),
        (txn(txn(delete(b"a", b"\0"), failure=(put(b"c"),)), delete(b"d", b"e")), False),
    ],
)
def test_duplicate_keys(request_: TxnRequest, duplicate: bool) -> None:
    assert code_of(request_) == (ErrorCode.DUPLICATE_KEY if duplicate else None)
    mirrored = TxnRequest(failure=request_.success)
    assert code_of(mirrored) == (ErrorCode.DUPLICATE_KEY if duplicate else None)


_keys = st.sampled_from([b"a", b"a\0", b"b", b"c", b"d"])
_ends = st.sampled_from([b"", b"\0", b"a", b"b", b"b\0", b"c", b"e"])
_leaf_ops = st.one_of(
    st.builds(PutRequest, key=_keys),
    st.builds(DeleteRangeRequest, key=_keys, range_end=_ends),
    st.builds(RangeRequest, key=_keys),
)
_ops: st.SearchStrategy[RequestOp] = st.recursive(
    _leaf_ops,
    lambda children: st.builds(
        TxnRequest,
        success=st.lists(children, max_size=3),
        failure=st.lists(children, max_size=3),
    ),
    max_leaves=8,
)


def _reference_duplicate(request: TxnRequest) -> bool:
    """Brute force: two writes conflict if no nested txn puts them in
    different branches and they touch a common key."""
    counter = iter(range(1_000_000))
    writes: list[tuple[bytes, bytes | None, bool, dict[int, int]]] = []

    def collect(ops: list[RequestOp], path: dict[int, int]) -> None:
        for op in ops:
            if isinstance(op, PutRequest):
                writes.append((op.key, op.key + b"\0", True, path))
            elif isinstance(op, DeleteRangeRequest):
                end = op.range_end or op.key + b"\0"
                writes.append((op.key, None if end == b"\0" else end, False, path))
            elif isinstance(op, TxnRequest):
                node = next(counter)
                collect(op.success, {**path, node: 0})
                collect(op.failure, {**path, node: 1})

    collect(request.success, {-1: 0})
    collect(request.failure, {-1: 1})

    def together(a: dict[int, int], b: dict[int, int]) -> bool:
        return all(a[n] == b[n] for n in a.keys() & b.keys())

    def covers(low: bytes, high: bytes | None, key: bytes) -> bool:
        return low <= key and (high is None or key < high)

    for i, (key, _, is_put, path) in enumerate(writes):
        if not is_put:
            continue
        for j, (low, high, _, other_path) in enumerate(writes):
            if i != j and together(path, other_path) and covers(low, high, key):
                return True  # another put of the key, or a delete over it
    return False


@settings(max_examples=EXAMPLES)
@given(success=st.lists(_ops, max_size=4), failure=st.lists(_ops, max_size=4))
def test_duplicate_detection_matches_brute_force(
    success: list[RequestOp], failure: list[RequestOp]
) -> None:
    request = TxnRequest(success=success, failure=failure)
    expected = ErrorCode.DUPLICATE_KEY if _reference_duplicate(request) else None
    assert code_of(request) == expected


# -- Other fields -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "request_",
    [
        RangeRequest(key=b"k", limit=-1),
        RangeRequest(key=b"k", revision=-1),
        RangeRequest(key=b"k", min_mod_revision=-1),
        RangeRequest(key=b"k", max_create_revision=-2),
        put(b"k", value=b"v", ignore_value=True),
        put(b"k", lease=3, ignore_lease=True),
        CompactionRequest(revision=0),
        CompactionRequest(revision=-5),
        txn(RangeRequest(key=b"k", limit=-1)),
        txn(compare=[Compare(key=b"k", target=CompareTarget.VALUE, value=1)]),
        txn(compare=[Compare(key=b"k", target=CompareTarget.MOD, value=b"1")]),
        txn(compare=[Compare(key=b"k", target=CompareTarget.LEASE, value=True)]),
    ],
)
def test_invalid_arguments(request_: object) -> None:
    assert code_of(request_) == ErrorCode.INVALID_ARGUMENT


def test_leases_do_not_exist_yet() -> None:
    assert code_of(put(b"k", lease=5)) == ErrorCode.LEASE_NOT_FOUND
    assert code_of(txn(txn(put(b"k", lease=5)))) == ErrorCode.LEASE_NOT_FOUND
    assert code_of(put(b"k", lease=5), lease_exists=lambda lease: lease == 5) is None
    assert code_of(put(b"k", lease=6), lease_exists=lambda lease: lease == 5) == (
        ErrorCode.LEASE_NOT_FOUND
    )


def test_validation_is_pure() -> None:
    request = txn(put(b"a"), delete(b"b", b"\0"), txn(put(b"a\0")))
    before = repr(request)
    first = validate_request(request)
    assert validate_request(request) == first
    assert repr(request) == before
