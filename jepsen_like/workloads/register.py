"""The register workload: linearizable reads, writes and compare-and-set on a few keys.

Each worker repeatedly picks one of ``keys`` active keys and does one of

* ``read``  -- a linearizable ``get``; ``result`` is the value (None: absent);
* ``write`` -- a ``put`` of a value never written before (``"<process>-<n>"``);
* ``cas``   -- a txn that puts a new unique value if the key still holds an
  expected one; ``value = [expected, new]``, ``succeeded`` says whether it
  swapped.  The compare is on the value (``Compare.value == expected``, or
  ``Compare.version == 0`` for "absent"), or on ``mod_revision``: since every
  value is written once, "mod_revision is the revision at which ``v`` was
  written" holds exactly when the key holds ``v``, so both are recorded as the
  same register operation.

Every key takes at most ``ops_per_key`` operations, then a fresh key replaces
it: short per-key histories keep the linearizability search small (as
Jepsen's independent keys do).  Operations whose outcome is unknown are
``info`` (possibly applied, at any time after their invocation), and the
process continues under a new id, as in Jepsen.

Checked with :func:`jepsen_like.checkers.linearizable.check_linearizable` and
:class:`~jepsen_like.checkers.linearizable.RegisterModel`.
"""

from __future__ import annotations

from typing import Any, ClassVar

import trio

from jepsen_like.checkers.linearizable import RegisterModel, Verdict, check_linearizable
from jepsen_like.history import Operation
from jepsen_like.workload import CheckerReport, RunContext
from kvstore.client import Client, Compare, KvError, Op

__all__ = ["RegisterWorkload"]

PREFIX = "jepsen/register/"


class RegisterWorkload:
    """See the module docstring.  ``budget``: linearizability search steps per key."""

    name: ClassVar[str] = "register"

    def __init__(self, keys: int = 4, ops_per_key: int = 150, budget: int = 2_000_000) -> None:
        if keys < 1 or ops_per_key < 1:
            raise ValueError("register workload: keys and ops_per_key must be positive")
        self.ops_per_key = ops_per_key
        self.budget = budget
        self._next_key = keys
        self._active = list(range(keys))
        self._invoked: dict[int, int] = {}
        self._written = 0
        # key -> (value, mod_revision) last seen by any client (a good cas guess).
        self._seen: dict[int, tuple[str | None, int]] = {}

    async def setup(self, ctx: RunContext) -> None:
        return None

    def _pick_key(self, ctx: RunContext) -> int:
        slot = ctx.rng.randrange(len(self._active))
        key = self._active[slot]
        self._invoked[key] = self._invoked.get(key, 0) + 1
        if self._invoked[key] >= self.ops_per_key:
            self._active[slot] = self._next_key
            self._next_key += 1
        return key

    def _new_value(self, process: int) -> str:
        self._written += 1
        return f"{process}-{self._written}"

    async def worker(self, ctx: RunContext, process: int) -> None:
        async with ctx.new_client() as client:
            with trio.move_on_at(ctx.stop_at):
                while True:
                    key = self._pick_key(ctx)
                    roll = ctx.rng.random()
                    if roll < 0.5:
                        outcome = await self._read(ctx, client, process, key)
                    elif roll < 0.75:
                        outcome = await self._write(ctx, client, process, key)
                    else:
                        outcome = await self._cas(ctx, client, process, key)
                    if outcome == "info":
                        process += ctx.concurrency  # a new process: the old one may still act

    async def _read(self, ctx: RunContext, client: Client, process: int, key: int) -> str:
        op = ctx.recorder.invoke(process, "read", key=f"{PREFIX}{key}", node=client.endpoint)
        try:
            resp = await client.get(f"{PREFIX}{key}")
        except (KvError, trio.Cancelled) as exc:
            return self._failed(ctx, op, exc)
        if resp.kvs:
            kv = resp.kvs[0]
            value: str | None = kv.value.decode()
            self._seen[key] = (value, kv.mod_revision)
        else:
            value = None
            self._seen[key] = (None, 0)
        ctx.recorder.ok(op, result=value, revision=resp.header.revision, node=client.endpoint)
        return "ok"

    async def _write(self, ctx: RunContext, client: Client, process: int, key: int) -> str:
        value = self._new_value(process)
        op = ctx.recorder.invoke(
            process, "write", key=f"{PREFIX}{key}", value=value, node=client.endpoint
        )
        try:
            resp = await client.put(f"{PREFIX}{key}", value)
        except (KvError, trio.Cancelled) as exc:
            return self._failed(ctx, op, exc)
        self._seen[key] = (value, resp.header.revision)
        ctx.recorder.ok(op, revision=resp.header.revision, node=client.endpoint)
        return "ok"

    async def _cas(self, ctx: RunContext, client: Client, process: int, key: int) -> str:
        expected, mod_revision = self._seen.get(key, (None, 0))
        new = self._new_value(process)
        name = f"{PREFIX}{key}"
        if expected is None:
            compare = Compare.version(name) == 0
        elif ctx.rng.random() < 0.5:
            compare = Compare.mod_revision(name) == mod_revision
        else:
            compare = Compare.value(name) == expected
        op = ctx.recorder.invoke(
            process, "cas", key=name, value=[expected, new], node=client.endpoint
        )
        try:
            resp = await client.txn([compare], [Op.put(name, new)])
        except (KvError, trio.Cancelled) as exc:
            return self._failed(ctx, op, exc)
        if resp.succeeded:
            self._seen[key] = (new, resp.header.revision)
        ctx.recorder.ok(
            op, succeeded=resp.succeeded, revision=resp.header.revision, node=client.endpoint
        )
        return "ok"

    @staticmethod
    def _failed(ctx: RunContext, op: Operation, exc: BaseException) -> str:
        event = ctx.recorder.failed(op, exc)
        if isinstance(exc, trio.Cancelled):
            raise exc
        return event.type

    async def final(self, ctx: RunContext) -> None:
        return None

    def check(self, history: list[Operation]) -> dict[str, CheckerReport]:
        ops = [op for op in history if op.f in ("read", "write", "cas")]
        result = check_linearizable(ops, RegisterModel(), budget=self.budget)
        verdicts: dict[str, int] = {}
        for key_result in result.keys.values():
            verdicts[key_result.verdict.value] = verdicts.get(key_result.verdict.value, 0) + 1
        counts: dict[str, Any] = {
            "keys": len(result.keys),
            "operations": sum(k.operations for k in result.keys.values()),
            "search_steps": sum(k.steps for k in result.keys.values()),
            **{f"keys_{v}": n for v, n in sorted(verdicts.items())},
        }
        anomalies = [k.describe() for k in result.keys.values() if k.verdict is not Verdict.VALID]
        return {
            "linearizable": CheckerReport(
                valid=result.valid,
                counts=counts,
                anomalies=anomalies,
                details=f"linearizable: {result.verdict} over {len(result.keys)} keys",
            )
        }
