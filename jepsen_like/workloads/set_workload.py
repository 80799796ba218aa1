"""The set workload: clients add unique elements; a final read must hold every acknowledged one.

An ``add`` of element ``e`` (``"<process>-<n>"``, never repeated) is a ``put``
of key ``jepsen/set/<e>`` with value ``e``.  After the cluster healed,
:meth:`SetWorkload.final` reads the whole prefix (linearizably, in pages at one
revision, retried until it succeeds or ``final_timeout`` passes) and records it
as a ``read`` whose result is the list of values.
:func:`jepsen_like.checkers.set_checker.check_set` then requires: every ``ok``
add present (lost = 0), nothing present that was never attempted or that
definitely failed, no duplicates.  Adds with unknown outcome may be either.
"""

from __future__ import annotations

from typing import ClassVar

import trio

from jepsen_like.checkers.set_checker import check_set
from jepsen_like.history import Operation
from jepsen_like.workload import CheckerReport, RunContext
from kvstore.client import Client, KvError
from kvstore.txn import key_range

__all__ = ["SetWorkload"]

PREFIX = "jepsen/set/"
PAGE = 5000
"""Keys per page of the final read (one response stays far below the frame limit)."""
FINAL_PROCESS = 1_000_000
"""Process id of the final read (distinct from every worker's)."""


class SetWorkload:
    """See the module docstring."""

    name: ClassVar[str] = "set"

    def __init__(self, final_timeout: float = 30.0) -> None:
        self.final_timeout = final_timeout
        self._added = 0

    async def setup(self, ctx: RunContext) -> None:
        return None

    async def worker(self, ctx: RunContext, process: int) -> None:
        async with ctx.new_client() as client:
            with trio.move_on_at(ctx.stop_at):
                while True:
                    self._added += 1
                    element = f"{process}-{self._added}"
                    op = ctx.recorder.invoke(process, "add", value=element, node=client.endpoint)
                    try:
                        await client.put(PREFIX + element, element)
                    except (KvError, trio.Cancelled) as exc:
                        event = ctx.recorder.failed(op, exc)
                        if isinstance(exc, trio.Cancelled):
                            raise
                        if event.type == "info":
                            process += ctx.concurrency
                    else:
                        ctx.recorder.ok(op, node=client.endpoint)

    async def final(self, ctx: RunContext) -> None:
        """Read the whole set once, retrying failed reads up to ``final_timeout`` seconds."""
        async with ctx.new_client() as client:
            with trio.move_on_after(self.final_timeout):
                while True:
                    op = ctx.recorder.invoke(FINAL_PROCESS, "read", node=client.endpoint)
                    try:
                        values, revision = await self._read_all(client)
                    except (KvError, trio.Cancelled) as exc:
                        ctx.recorder.failed(op, exc)
                        if isinstance(exc, trio.Cancelled):
                            raise
                        await trio.sleep(0.5)
                        continue
                    ctx.recorder.ok(op, result=values, revision=revision, node=client.endpoint)
                    return

    async def _read_all(self, client: Client) -> tuple[list[str], int]:
        """Every element, in pages of ``PAGE`` keys: the first page is a linearizable
        read, the others read the same revision, so together they are one snapshot."""
        key, end = key_range(PREFIX, None, prefix=True, from_key=False)
        values: list[str] = []
        revision = 0
        while True:
            resp = await client.get(key, end, limit=PAGE, revision=revision)
            revision = revision or resp.header.revision
            values += [kv.value.decode() for kv in resp.kvs]
            if not resp.more or not resp.kvs:
                return values, revision
            key = resp.kvs[-1].key + b"\0"

    def check(self, history: list[Operation]) -> dict[str, CheckerReport]:
        result = check_set(history)
        anomalies = [] if result.valid else result.describe().splitlines()[1:]
        if result.verdict.value == "unknown":
            anomalies = ["no successful final read of the set"]
        return {
            "set": CheckerReport(
                valid=result.valid,
                counts=result.counts(),
                anomalies=anomalies,
                details=result.describe().splitlines()[0],
            )
        }
