"""Builders for requests and txn compares, so a txn reads like what it does::

    await client.txn(
        [Compare.value("k") == "v", Compare.version("lock") == 0],
        [Op.put("k", "w"), Op.put("lock", "me")],
        [Op.get("k")],
    )

:class:`Op` builds the :mod:`kvstore.api` request structs (the client's own
``get``/``put``/``delete`` use it too); :class:`Compare` builds
:class:`kvstore.api.Compare` values with ``==``, ``!=``, ``<`` and ``>``.  Keys
and values may be ``bytes`` or ``str`` (encoded as UTF-8).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Generic, TypeVar

from kvstore import api
from kvstore.api import CompareResult, CompareTarget, SortOrder, SortTarget

Data = bytes | str
"""A key or value: ``str`` is encoded as UTF-8."""


def to_bytes(data: Data) -> bytes:
    return data.encode() if isinstance(data, str) else bytes(data)


def key_range(
    key: Data, range_end: Data | None, *, prefix: bool, from_key: bool
) -> tuple[bytes, bytes]:
    """``(key, range_end)`` on the wire for one key, ``[key, range_end)``, every
    key starting with ``key`` (``prefix``) or every key ``>= key`` (``from_key``).

    As in etcd, an empty ``key`` with ``prefix`` or ``from_key`` means every key.
    """
    if (range_end is not None) + prefix + from_key > 1:
        raise ValueError("give at most one of range_end, prefix=True, from_key=True")
    start = to_bytes(key)
    if prefix or from_key:
        if not start:
            return b"\0", b"\0"
        return start, api.prefix_range_end(start) if prefix else b"\0"
    return start, b"" if range_end is None else to_bytes(range_end)


class Op:
    """Request builders; each result is also an operation a txn may contain."""

    @staticmethod
    def get(
        key: Data,
        range_end: Data | None = None,
        *,
        prefix: bool = False,
        from_key: bool = False,
        limit: int = 0,
        revision: int = 0,
        sort_order: SortOrder = SortOrder.NONE,
        sort_target: SortTarget = SortTarget.KEY,
        serializable: bool = False,
        keys_only: bool = False,
        count_only: bool = False,
        min_mod_revision: int = 0,
        max_mod_revision: int = 0,
        min_create_revision: int = 0,
        max_create_revision: int = 0,
    ) -> api.RangeRequest:
        start, end = key_range(key, range_end, prefix=prefix, from_key=from_key)
        return api.RangeRequest(
            key=start,
            range_end=end,
            limit=limit,
            revision=revision,
            sort_order=sort_order,
            sort_target=sort_target,
            serializable=serializable,
            keys_only=keys_only,
            count_only=count_only,
            min_mod_revision=min_mod_revision,
            max_mod_revision=max_mod_revision,
            min_create_revision=min_create_revision,
            max_create_revision=max_create_revision,
        )

    @staticmethod
    def put(
        key: Data,
        value: Data = b"",
        *,
        lease: int = 0,
        prev_kv: bool = False,
        ignore_value: bool = False,
        ignore_lease: bool = False,
    ) -> api.PutRequest:
        return api.PutRequest(
            key=to_bytes(key),
            value=to_bytes(value),
            lease=lease,
            prev_kv=prev_kv,
            ignore_value=ignore_value,
            ignore_lease=ignore_lease,
        )

    @staticmethod
    def delete(
        key: Data,
        range_end: Data | None = None,
        *,
        prefix: bool = False,
        from_key: bool = False,
        prev_kv: bool = False,
    ) -> api.DeleteRangeRequest:
        start, end = key_range(key, range_end, prefix=prefix, from_key=from_key)
        return api.DeleteRangeRequest(key=start, range_end=end, prev_kv=prev_kv)

    @staticmethod
    def txn(
        compare: Iterable[api.Compare],
        success: Iterable[api.RequestOp] = (),
        failure: Iterable[api.RequestOp] = (),
    ) -> api.TxnRequest:
        return api.TxnRequest(compare=list(compare), success=list(success), failure=list(failure))


V = TypeVar("V", Data, int)


class CompareOperand(Generic[V]):
    """One side of a compare: a target (value, version, ...) of a key or range.

    Compare it with ``==``, ``!=``, ``<`` or ``>`` to get a :class:`kvstore.api.Compare`.
    """

    __slots__ = ("_key", "_range_end", "_target")

    def __init__(self, target: CompareTarget, key: bytes, range_end: bytes) -> None:
        self._target = target
        self._key = key
        self._range_end = range_end

    def _compare(self, result: CompareResult, operand: V) -> api.Compare:
        wants_bytes = self._target is CompareTarget.VALUE
        if wants_bytes:
            ok = isinstance(operand, bytes | str)
        else:
            ok = isinstance(operand, int) and not isinstance(operand, bool)
        if not ok:
            expected = "bytes or str" if wants_bytes else "an int"
            raise TypeError(f"a {self._target.name.lower()} compare needs {expected}")
        value = to_bytes(operand) if isinstance(operand, bytes | str) else operand
        return api.Compare(
            key=self._key,
            target=self._target,
            result=result,
            value=value,
            range_end=self._range_end,
        )

    def __eq__(self, operand: V) -> api.Compare:  # type: ignore[override]
        return self._compare(CompareResult.EQUAL, operand)

    def __ne__(self, operand: V) -> api.Compare:  # type: ignore[override]
        return self._compare(CompareResult.NOT_EQUAL, operand)

    def __lt__(self, operand: V) -> api.Compare:
        return self._compare(CompareResult.LESS, operand)

    def __gt__(self, operand: V) -> api.Compare:
        return self._compare(CompareResult.GREATER, operand)

    __hash__ = None  # type: ignore[assignment]


def _operand(
    target: CompareTarget, key: Data, range_end: Data | None, prefix: bool
) -> tuple[CompareTarget, bytes, bytes]:
    start, end = key_range(key, range_end, prefix=prefix, from_key=False)
    return target, start, end


class Compare:
    """Compare builders: ``Compare.version("k") > 0``, ``Compare.value("k") == "v"``.

    With ``range_end`` or ``prefix=True`` the compare holds only if it holds
    for every key in the range.  A missing key has version, create and mod
    revision 0, so ``Compare.create_revision(k) == 0`` means "k does not exist".
    """

    @staticmethod
    def value(
        key: Data, range_end: Data | None = None, *, prefix: bool = False
    ) -> CompareOperand[Data]:
        return CompareOperand(*_operand(CompareTarget.VALUE, key, range_end, prefix))

    @staticmethod
    def version(
        key: Data, range_end: Data | None = None, *, prefix: bool = False
    ) -> CompareOperand[int]:
        return CompareOperand(*_operand(CompareTarget.VERSION, key, range_end, prefix))

    @staticmethod
    def create_revision(
        key: Data, range_end: Data | None = None, *, prefix: bool = False
    ) -> CompareOperand[int]:
        return CompareOperand(*_operand(CompareTarget.CREATE, key, range_end, prefix))

    @staticmethod
    def mod_revision(
        key: Data, range_end: Data | None = None, *, prefix: bool = False
    ) -> CompareOperand[int]:
        return CompareOperand(*_operand(CompareTarget.MOD, key, range_end, prefix))

    @staticmethod
    def lease(
        key: Data, range_end: Data | None = None, *, prefix: bool = False
    ) -> CompareOperand[int]:
        return CompareOperand(*_operand(CompareTarget.LEASE, key, range_end, prefix))
