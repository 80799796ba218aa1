"""Watch workload: every watcher sees exactly the committed events, in order.

Each worker runs a *writer* and ``watchers_per_worker`` *watchers* on its own
client.  Writers change a few keys under one prefix: puts of unique values
(``write``), deletes (``delete``) and two-key txns (``txn``, both keys in one
revision, which exercises atomic delivery); every write is a history
operation with its revision.  Watchers watch the prefix with
:meth:`kvstore.client.Client.watch`, which resumes from the revision after the
last one received when its member fails; half of them start at the run's
first revision (replaying history), half "from now".  Every response a
watcher receives is kept.

After the heal, :meth:`WatchWorkload.final`

1. reads the final revision ``F`` and state of the prefix (linearizable);
2. reads the *committed sequence*: a fresh watch from the run's first
   revision up to ``F`` on the healed cluster (compaction must be off: the
   harness never compacts, and this workload reports a compaction as an
   anomaly);
3. lets each watcher catch up: it resumes, on a fresh client, from its next
   revision to ``F`` (one more resumption, as after a fault at the end).

:meth:`WatchWorkload.check` then checks the committed sequence itself
(``watch-reference``: every acknowledged write is in it at its revision,
every value in it was written by some write that did not definitely fail,
and replaying it gives the final state) and every watcher against it with
:func:`~jepsen_like.checkers.check_watches` (``watch``: same events, in
order, no gap, no duplicate, each revision in one response).  A watcher whose
watch raised :class:`~kvstore.client.CompactedError` is an anomaly
(``compacted``), never silently skipped.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from functools import partial
from typing import Any, ClassVar

import trio

from jepsen_like.checkers import Event, WatcherLog, check_watches
from jepsen_like.checkers.linearizable import freeze
from jepsen_like.history import Operation, complete_operations
from jepsen_like.workload import CheckerReport, RunContext
from jepsen_like.workloads._util import STORE_ERRORS, attempt
from kvstore import api
from kvstore.client import Client, CompactedError, KvError, Op, Watch


@dataclass
class _Watcher:
    log: WatcherLog
    next_revision: int = 0
    """The first revision not yet received (0: the watch was never created)."""
    resumes: int = 0
    compacted: str = ""
    """The :class:`CompactedError` message, if the watch ended with one."""
    error: str = ""
    """Any other error that ended the watch after it was created."""


@dataclass
class _Final:
    revision: int = 0
    state: dict[str, str] = field(default_factory=dict)
    committed: list[Event] | None = None
    error: str = ""


def received_through(response: api.WatchResponse, before: int) -> int:
    """The revision through which every event has been received, once
    ``response`` has been (``before``: that revision until then).

    Not :attr:`Watch.next_revision`, which counts responses still buffered.
    """
    if response.events:
        return max(before, response.events[-1].kv.mod_revision)
    return max(before, response.header.revision)  # a progress notification


def to_event(event: api.Event) -> Event:
    """The checker's view of a store event."""
    kv = event.kv
    if event.type is api.EventType.PUT:
        return Event(kv.mod_revision, kv.key.decode(), "put", kv.value.decode())
    return Event(kv.mod_revision, kv.key.decode(), "delete")


class WatchWorkload:
    """See the module docstring."""

    name: ClassVar[str] = "watch"

    def __init__(
        self,
        *,
        prefix: str = "jepsen-watch/",
        keys: int = 5,
        watchers_per_worker: int = 1,
        write_interval: float = 0.02,
        final_timeout: float = 30.0,
    ) -> None:
        if keys < 2 or watchers_per_worker < 0:
            raise ValueError("need at least 2 keys and no negative watcher count")
        self.prefix = prefix
        self.keys = keys
        self.watchers_per_worker = watchers_per_worker
        self.write_interval = write_interval
        self.final_timeout = final_timeout
        self.first_revision = 0
        self.watchers: list[_Watcher] = []
        self.final_read = _Final()

    # -- Contract ---------------------------------------------------------------------

    async def setup(self, ctx: RunContext) -> None:
        """Clear the prefix; the run's events begin after the current revision."""
        async with ctx.new_client() as client:
            await client.delete(self.prefix, prefix=True)
            response = await client.get(self.prefix, prefix=True)
            self.first_revision = response.header.revision + 1

    async def worker(self, ctx: RunContext, process: int) -> None:
        async with ctx.new_client() as client, trio.open_nursery() as nursery:
            for index in range(self.watchers_per_worker):
                from_start = (process + index) % 2 == 0
                start = self.first_revision if from_start else 0  # 0: from now
                log = WatcherLog(
                    watcher=f"w{process}.{index}",
                    start_revision=start,
                    responses=[],
                    prefix=self.prefix,
                )
                watcher = _Watcher(log)
                self.watchers.append(watcher)
                nursery.start_soon(self._watch, ctx, client, watcher)
            nursery.start_soon(self._write, ctx, client, process)

    async def final(self, ctx: RunContext) -> None:
        with trio.move_on_after(self.final_timeout) as scope:
            async with ctx.new_client() as client:
                final = await self._read_final(client)
                if final.error:
                    self.final_read = final
                    return
                try:
                    responses = await _collect(
                        client, self.prefix, self.first_revision, final.revision
                    )
                    final.committed = [e for response in responses for e in response]
                except (KvError, trio.ClosedResourceError) as exc:
                    final.error = f"committed sequence: {type(exc).__name__}: {exc}"
                self.final_read = final
                for watcher in self.watchers:
                    await self._catch_up(client, watcher, final.revision)
        if scope.cancelled_caught and not self.final_read.error:
            self.final_read.error = f"final reads took longer than {self.final_timeout:g}s"

    def check(self, history: list[Operation]) -> dict[str, CheckerReport]:
        final = self.final_read
        if final.committed is None:
            report = CheckerReport(False, anomalies=[f"no final read: {final.error}"])
            return {"watch": report, "watch-reference": report}
        reference = self._check_reference(history, final.committed, final.state)
        logs: list[WatcherLog] = []
        anomalies: list[str] = []
        counts: Counter[str] = Counter()
        for w in self.watchers:
            if not w.next_revision:
                counts["never_created"] += 1  # a fault lasted from the start to the end
                continue
            counts["resumes"] += w.resumes
            if w.error:
                anomalies.append(f"watch_failed watcher={w.log.watcher}: {w.error}")
                counts["watch_failed"] += 1
                w.log.end_revision = max(w.next_revision - 1, w.log.start_revision - 1)
            if w.compacted:
                anomalies.append(f"compacted watcher={w.log.watcher}: {w.compacted}")
                counts["compacted"] += 1
                # What it received before the compaction is still checked.
                w.log.end_revision = max(w.next_revision - 1, w.log.start_revision - 1)
            logs.append(w.log)
        result = check_watches(final.committed, logs)
        anomalies += [
            f"{a.kind} watcher={a.watcher} rev={a.revision} {a.detail}" for a in result.anomalies
        ]
        counts.update(result.counts())
        counts["watchers"] = len(logs)
        counts["events_delivered"] = result.events_checked
        counts["committed_events"] = len(final.committed)
        if final.error:
            anomalies.append(final.error)
        return {
            "watch": CheckerReport(
                valid=not anomalies,
                counts=dict(counts),
                anomalies=anomalies,
                details=result.describe(),
            ),
            "watch-reference": reference,
        }

    # -- Writers ----------------------------------------------------------------------

    async def _write(self, ctx: RunContext, client: Client, process: int) -> None:
        serial = 0
        with trio.move_on_at(ctx.stop_at):
            while True:
                serial += 1
                value = f"{process}-{serial}"
                key = f"{self.prefix}k{ctx.rng.randrange(self.keys)}"
                roll = ctx.rng.random()
                if roll < 0.1:
                    op = ctx.recorder.invoke(process, "delete", key=key)
                    deleted = await attempt(ctx, op, partial(client.delete, key))
                    if deleted is not None:
                        ctx.recorder.ok(
                            op, result=deleted.deleted, revision=deleted.header.revision
                        )
                elif roll < 0.25:
                    other = f"{self.prefix}k{ctx.rng.randrange(self.keys)}"
                    pair = sorted({key, other})
                    op = ctx.recorder.invoke(process, "txn", value=[[k, value] for k in pair])
                    puts = [Op.put(k, value) for k in pair]
                    done = await attempt(ctx, op, partial(client.txn, [], puts))
                    if done is not None:
                        ctx.recorder.ok(op, revision=done.header.revision)
                else:
                    op = ctx.recorder.invoke(process, "write", key=key, value=value)
                    put = await attempt(ctx, op, partial(client.put, key, value))
                    if put is not None:
                        ctx.recorder.ok(op, revision=put.header.revision)
                await trio.sleep(ctx.rng.uniform(0, 2 * self.write_interval))

    # -- Watchers ---------------------------------------------------------------------

    async def _watch(self, ctx: RunContext, client: Client, w: _Watcher) -> None:
        """Watch until ``stop_at``; creating the watch is retried through faults.

        A watcher "from now" reads the current revision first and starts after
        it: with ``start_revision=0`` the exact start would only be known from
        the member's ``created`` answer, which the client keeps to itself."""
        with trio.move_on_at(ctx.stop_at):
            while not w.next_revision:
                try:
                    if w.log.start_revision == 0:
                        now = await client.get(self.prefix, prefix=True, count_only=True)
                        w.log.start_revision = now.header.revision + 1
                    watch = client.watch(
                        self.prefix, prefix=True, start_revision=w.log.start_revision
                    )
                    async with watch:
                        w.next_revision = w.log.start_revision
                        await self._consume(watch, w)
                except CompactedError as exc:
                    w.compacted = str(exc)
                    return
                except STORE_ERRORS as exc:
                    if w.next_revision:  # a created watch must never give up
                        w.error = f"{type(exc).__name__}: {exc}"
                        return
                    await trio.sleep(0.1)

    @staticmethod
    async def _consume(watch: Watch, w: _Watcher) -> None:
        try:
            async for response in watch:
                if response.events:
                    w.log.responses.append([to_event(e) for e in response.events])
                w.next_revision = received_through(response, w.next_revision - 1) + 1
        finally:
            w.resumes += watch.resumes

    async def _catch_up(self, client: Client, w: _Watcher, final_revision: int) -> None:
        """Resume ``w`` from its next revision up to ``final_revision``."""
        if w.compacted or w.error or not w.next_revision or w.next_revision > final_revision:
            return
        try:
            responses = await _collect(client, self.prefix, w.next_revision, final_revision)
        except CompactedError as exc:
            w.compacted = str(exc)
            return
        except (KvError, trio.ClosedResourceError) as exc:
            w.error = f"catching up: {type(exc).__name__}: {exc}"
            return
        w.log.responses.extend(responses)
        w.resumes += 1
        w.next_revision = final_revision + 1

    # -- Final reads and the reference -------------------------------------------------

    async def _read_final(self, client: Client) -> _Final:
        error = ""
        for _ in range(20):
            try:
                response = await client.get(self.prefix, prefix=True)
            except KvError as exc:
                error = f"final read: {type(exc).__name__}: {exc}"
                await trio.sleep(0.25)
                continue
            state = {kv.key.decode(): kv.value.decode() for kv in response.kvs}
            return _Final(response.header.revision, state)
        return _Final(error=error)

    def _check_reference(
        self, history: list[Operation], committed: list[Event], state: dict[str, str]
    ) -> CheckerReport:
        """The committed sequence agrees with the writes and with the final state."""
        anomalies: list[str] = []
        by_revision: dict[int, set[Any]] = {}
        for e in committed:
            by_revision.setdefault(e.revision, set()).add((e.key, e.type, e.value))
        attempted: set[Any] = set()
        failed: set[Any] = set()
        counts: Counter[str] = Counter()
        for op in complete_operations(history, include_failed=True):
            counts[f"{op.f}_{op.outcome}"] += 1
            changes: list[tuple[str, str, Any]] = []
            if op.f == "write" and op.key is not None:
                changes = [(op.key, "put", op.value)]
            elif op.f == "txn":
                changes = [(k, "put", v) for k, v in op.value]
            elif op.f == "delete" and op.key is not None and op.result:
                changes = [(op.key, "delete", None)]
            values = {freeze(c) for c in changes if c[1] == "put"}
            (failed if op.outcome == "fail" else attempted).update(values)
            if op.outcome != "ok" or op.revision is None:
                continue
            at = by_revision.get(op.revision, set())
            for change in changes:
                if change not in at:
                    anomalies.append(f"lost: {op.describe()} not committed at its revision")
        replay: dict[str, str] = {}
        for e in committed:
            if e.type == "put":
                if freeze((e.key, "put", e.value)) not in attempted:
                    what = "a failed write" if freeze((e.key, "put", e.value)) in failed else None
                    anomalies.append(
                        f"phantom: put {e.key!r}={e.value!r} at {e.revision} "
                        f"from {what or 'no write'}"
                    )
                replay[e.key] = e.value
            else:
                replay.pop(e.key, None)
        if replay != state:
            keys = replay.keys() | state.keys()
            differ = sorted(k for k in keys if replay.get(k) != state.get(k))
            anomalies.append(f"final state differs from the replayed events at keys {differ[:10]}")
        counts["committed_events"] = len(committed)
        return CheckerReport(not anomalies, dict(counts), anomalies)


async def _collect(client: Client, prefix: str, start: int, end: int) -> list[list[Event]]:
    """The responses (their events up to ``end``) of a watch on ``prefix``
    from ``start`` until every event up to ``end`` was received."""
    responses: list[list[Event]] = []
    if start > end:
        return responses
    through = start - 1
    async with client.watch(prefix, prefix=True, start_revision=start) as watch:
        await watch.request_progress()
        async for response in watch:
            events = [to_event(e) for e in response.events if e.kv.mod_revision <= end]
            if events:
                responses.append(events)
            through = received_through(response, through)
            if through >= end:
                break
            # The last revisions may be outside the prefix: a progress
            # notification tells when everything up to ``end`` was sent.
            await watch.request_progress()
    return responses
