"""Lock workload: a fenced log written under a lock never shows two holders.

Each worker keeps a :class:`~kvstore.concurrency.Session` (a short TTL, so
that faults make leases expire and the lock change hands) and loops: take the
:class:`~kvstore.concurrency.Mutex` (``acquire``, result: the fencing token),
append a ``begin`` entry, hold for a moment, append an ``end`` entry, release
(``release``).  An append (``append``, value ``[client, token, kind]``) is a
txn that succeeds only if the token is at least the highest one used so far::

    if value(fence) < pad(token + 1):  put fence = pad(token); put log/<entry>
    else: nothing          (succeeded = False: fenced out)

``pad`` zero-pads to 20 digits, so the byte-wise comparison of values is the
numeric one.  Log entries are separate keys, put once; their create
revisions order the log.

Every ``stall_every``-th section of each worker *stalls*, as a process pause
(GC, SIGSTOP) would: after its ``begin`` the worker stops its session's
keep-alives (:meth:`~kvstore.concurrency.Session.orphan`) and sleeps for
the TTL plus a second, then appends its ``end`` as if nothing happened.  By
then its lease has expired and another worker holds the lock, so the
unfenced sections overlap and the stale ``end`` must be fenced out: this is
what makes the fenced check mean something (``stall`` operations count them).

Checks:

* ``lock`` -- :func:`~jepsen_like.checkers.check_fenced_log` on the final log
  (no overlapping fenced sections, increasing tokens), and the log agrees with
  the appends: every append acknowledged as succeeded is in it, and every entry
  in it comes from an append that did not definitely fail or get fenced out.
* ``lock-unfenced`` -- always valid; counts how often two clients *believed*
  they held the lock at once (from ``acquire`` ok to ``release`` invoked), by
  :func:`~jepsen_like.checkers.unfenced_overlaps`: a lock alone cannot
  prevent that, which is why the log is fenced.
"""

from __future__ import annotations

from collections import Counter
from functools import partial
from typing import ClassVar

import trio

from jepsen_like.checkers import (
    FencedEntry,
    HeldInterval,
    check_fenced_log,
    unfenced_overlaps,
)
from jepsen_like.checkers.linearizable import freeze
from jepsen_like.history import Operation, complete_operations
from jepsen_like.workload import CheckerReport, RunContext
from jepsen_like.workloads._util import STORE_ERRORS, attempt
from kvstore.api import SortOrder, SortTarget
from kvstore.client import Client, Compare, KvError, Op
from kvstore.concurrency import LockLost, Mutex, Session

TOKEN_DIGITS = 20


def pad(token: int) -> str:
    """``token`` as a fixed-width decimal, so that values compare like numbers."""
    return f"{token:0{TOKEN_DIGITS}d}"


class LockWorkload:
    """See the module docstring."""

    name: ClassVar[str] = "lock"

    def __init__(
        self,
        *,
        ttl: int = 2,
        prefix: str = "jepsen-lock/",
        max_hold: float = 0.05,
        stall_every: int = 25,
        final_timeout: float = 30.0,
    ) -> None:
        if ttl < 1 or stall_every < 0:
            raise ValueError("ttl must be at least 1 and stall_every not negative")
        self.ttl = ttl
        self.stall_every = stall_every
        self._sections: Counter[int] = Counter()
        self.prefix = prefix
        self.max_hold = max_hold
        self.final_timeout = final_timeout
        self.log: list[FencedEntry] | None = None
        self.final_error = ""

    @property
    def lock_name(self) -> str:
        return f"{self.prefix}mutex/"

    @property
    def fence_key(self) -> str:
        return f"{self.prefix}fence"

    @property
    def log_prefix(self) -> str:
        return f"{self.prefix}log/"

    # -- Contract ---------------------------------------------------------------------

    async def setup(self, ctx: RunContext) -> None:
        async with ctx.new_client() as client:
            await client.delete(self.prefix, prefix=True)
            await client.put(self.fence_key, pad(0))

    async def worker(self, ctx: RunContext, process: int) -> None:
        async with ctx.new_client() as client:
            session: Session | None = None
            try:
                with trio.move_on_at(ctx.stop_at):
                    while True:
                        if session is None or session.is_lost:
                            if session is not None:
                                await session.close()
                            session = await self._new_session(client)
                            if session is None:
                                await trio.sleep(0.1)
                                continue
                        await self._critical_section(ctx, client, session, process)
            finally:
                if session is not None:
                    with trio.CancelScope(shield=True), trio.move_on_after(ctx.request_timeout):
                        await session.close()

    async def final(self, ctx: RunContext) -> None:
        with trio.move_on_after(self.final_timeout) as scope:
            async with ctx.new_client() as client:
                while True:
                    try:
                        response = await client.get(
                            self.log_prefix,
                            prefix=True,
                            sort_target=SortTarget.CREATE,
                            sort_order=SortOrder.ASCEND,
                        )
                        break
                    except KvError as exc:
                        self.final_error = f"final read: {type(exc).__name__}: {exc}"
                        await trio.sleep(0.25)
        if scope.cancelled_caught:
            return
        self.final_error = ""
        self.log = []
        for kv in response.kvs:
            client_id, token, kind = kv.value.decode().split(" ")
            self.log.append(FencedEntry(client_id, int(token), kind))

    def check(self, history: list[Operation]) -> dict[str, CheckerReport]:
        ops = complete_operations(history, include_failed=True)
        unfenced = unfenced_overlaps(self._held_intervals(history))
        overlap_report = CheckerReport(
            valid=True,
            counts={"sections": unfenced.intervals, "overlapping_pairs": unfenced.overlaps},
            details="reported, never a failure: a lock alone cannot guarantee exclusion",
        )
        if self.log is None:
            failed = CheckerReport(False, anomalies=[f"no final read: {self.final_error}"])
            return {"lock": failed, "lock-unfenced": overlap_report}
        result = check_fenced_log(self.log)
        anomalies = [f"{a.kind} at #{a.index}: {a.detail}" for a in result.anomalies]
        logged = Counter(freeze([e.client, e.token, e.kind]) for e in self.log)
        possible: set[object] = set()
        counts: Counter[str] = Counter()
        for op in ops:
            counts[f"{op.f}_{op.outcome}"] += 1
            if op.f != "append":
                continue
            entry = freeze(op.value)
            if op.outcome == "ok" and not op.succeeded:
                counts["fenced_out"] += 1
            if op.outcome == "ok" and op.succeeded:
                possible.add(entry)
                if entry not in logged:
                    anomalies.append(f"lost: {op.describe()} succeeded but is not in the log")
            elif op.outcome == "info":
                possible.add(entry)
        for entry, n in logged.items():
            if entry not in possible:
                anomalies.append(f"unexpected: log entry {entry} from no successful append")
            if n > 1:
                anomalies.append(f"duplicated: log entry {entry} appears {n} times")
        counts.update(result.counts())
        counts["sections"] = result.sections
        counts["abandoned"] = result.abandoned
        counts["log_entries"] = len(self.log)
        lock_report = CheckerReport(
            valid=not anomalies, counts=dict(counts), anomalies=anomalies, details=result.describe()
        )
        return {"lock": lock_report, "lock-unfenced": overlap_report}

    # -- Workers ----------------------------------------------------------------------

    async def _new_session(self, client: Client) -> Session | None:
        session = Session(client, ttl=self.ttl)
        try:
            await session.start()
        except STORE_ERRORS:
            return None
        return session

    async def _critical_section(
        self, ctx: RunContext, client: Client, session: Session, process: int
    ) -> None:
        mutex = Mutex(session, self.lock_name)
        op = ctx.recorder.invoke(process, "acquire", key=self.lock_name)
        try:
            with trio.fail_after(max(0.0, ctx.stop_at - trio.current_time()) + 0.01):
                await mutex.lock()
        except LockLost as exc:  # definitely not acquired
            ctx.recorder.failed(op, KvError(f"lock lost: {exc}", definite=True))
            return
        except STORE_ERRORS as exc:
            ctx.recorder.failed(op, exc)
            return
        except BaseException as exc:
            ctx.recorder.failed(op, exc)
            raise
        token = mutex.fencing_token
        ctx.recorder.ok(op, result=token)
        client_id = f"p{process}"
        try:
            if await self._append(ctx, client, process, client_id, token, "begin"):
                self._sections[process] += 1
                if self.stall_every and self._sections[process] % self.stall_every == 0:
                    await self._stall(ctx, session, process)
                else:
                    await trio.sleep(ctx.rng.uniform(0, self.max_hold))
                await self._append(ctx, client, process, client_id, token, "end")
        finally:
            op = ctx.recorder.invoke(process, "release", key=self.lock_name, value=token)

            async def unlock() -> bool:
                await mutex.unlock()
                return True

            with trio.CancelScope(shield=True):
                if await attempt(ctx, op, unlock):
                    ctx.recorder.ok(op)

    async def _stall(self, ctx: RunContext, session: Session, process: int) -> None:
        """Pause like a stopped process: no keep-alives until the lease is gone."""
        op = ctx.recorder.invoke(process, "stall", value=session.ttl + 1.0)
        session.orphan()
        try:
            await trio.sleep(session.ttl + 1.0)
        except BaseException as exc:
            ctx.recorder.failed(op, exc)
            raise
        ctx.recorder.ok(op)

    async def _append(
        self, ctx: RunContext, client: Client, process: int, client_id: str, token: int, kind: str
    ) -> bool:
        """Append a fenced log entry; whether it succeeded."""
        op = ctx.recorder.invoke(
            process, "append", key=self.log_prefix, value=[client_id, token, kind]
        )
        compare = [Compare.value(self.fence_key) < pad(token + 1)]
        success = [
            Op.put(self.fence_key, pad(token)),
            Op.put(f"{self.log_prefix}{client_id}-{token}-{kind}", f"{client_id} {token} {kind}"),
        ]
        response = await attempt(ctx, op, partial(client.txn, compare, success))
        if response is None:
            return False
        ctx.recorder.ok(op, succeeded=response.succeeded, revision=response.header.revision)
        return response.succeeded

    @staticmethod
    def _held_intervals(history: list[Operation]) -> list[HeldInterval]:
        """From each ``acquire`` ok to the next ``release`` invoked by the same process."""
        held: dict[int, int] = {}
        intervals: list[HeldInterval] = []
        for ev in history:
            if ev.f == "acquire" and ev.type == "ok":
                held[ev.process] = ev.time_ns
            elif ev.f == "release" and ev.type == "invoke" and ev.process in held:
                start = held.pop(ev.process)
                intervals.append(HeldInterval(f"p{ev.process}", start, ev.time_ns))
        return intervals
