"""Lease workload: keys on short leases, some kept alive, some let go.

Every *holder* worker keeps one lease alive for the whole run (``kept``) and,
now and then, grants a ``stopped`` lease whose keep-alives it stops after a
random part of its TTL; each lease has one key, ``<prefix><process>-<n>``.
*Observer* workers read the prefix in a loop, alternately linearizable and
serializable (``value`` ``"serializable"``; the checker uses those only to
catch a vanished key, once their member has applied its put).  Workers with
even numbers hold, odd ones observe (a single worker does both).  The first
worker also polls every member's status each ~100 ms (``status`` operations),
so the checker can place leader changes in time.

A kept lease whose keep-alives failed for longer than its TTL (a fault kept
them from the leader) may be gone: the holder stops it and grants a new one.
After the run every lease is stopped; ``final`` reads until every key is gone
(bounded), with status rounds around the reads.

The verdict is :func:`~jepsen_like.checkers.lease_checker.check_leases`; its
module docstring states the exact rule.  The election timeout it needs is an
upper bound derived in :meth:`LeaseWorkload.setup` from the server's minimum
TTL (``ceil(1.5 ET)``) unless given as ``election_timeout``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import trio

from jepsen_like.checkers.lease_checker import LeaseBounds, check_leases
from jepsen_like.history import Operation
from jepsen_like.workload import CheckerReport, RunContext
from jepsen_like.workloads._util import attempt
from kvstore.client import Client

#: Process numbers of the status poller (one per member) and of final reads.
MONITOR_PROCESS = 100_000
FINAL_PROCESS = 200_000
OBSERVER_OFFSET = 50_000


@dataclass
class _Held:
    key: str
    lease_id: int
    ttl: int
    mode: str
    stop_time: float
    """trio time at which to stop keeping it alive (inf: never)."""
    last_renewed: float
    """trio time at which the grant or the last keep-alive with TTL > 0 was sent."""


class LeaseWorkload:
    """See the module docstring."""

    name: ClassVar[str] = "lease"

    def __init__(
        self,
        *,
        ttl: int = 2,
        prefix: str = "jepsen-lease/",
        max_stopped: int = 2,
        poll_interval: float = 0.1,
        read_interval: float = 0.05,
        election_timeout: float | None = None,
        commit_slack: float = 0.5,
        final_timeout: float = 30.0,
    ) -> None:
        if ttl < 1:
            raise ValueError("ttl must be at least 1 second")
        self.ttl = ttl
        self.prefix = prefix
        self.max_stopped = max_stopped
        self.poll_interval = poll_interval
        self.read_interval = read_interval
        self.election_timeout = election_timeout
        self.commit_slack = commit_slack
        self.final_timeout = final_timeout
        self.members = 0
        self.keys_left: list[str] = []
        self._monitor_started = False
        self._round = 0

    @property
    def bounds(self) -> LeaseBounds:
        if self.election_timeout is None:
            raise RuntimeError("setup() derives the election timeout bound")
        return LeaseBounds(self.election_timeout, self.commit_slack)

    # -- Contract ---------------------------------------------------------------------

    async def setup(self, ctx: RunContext) -> None:
        """Clear the prefix; bound the election timeout by the minimum TTL."""
        self.members = len(ctx.endpoints)
        async with ctx.new_client() as client:
            await client.delete(self.prefix, prefix=True)
            if self.election_timeout is None:
                probe = await client.lease_grant(1)
                await client.lease_revoke(probe.id)
                # The server grants at least ceil(1.5 ET) seconds: ET <= granted / 1.5.
                self.election_timeout = probe.ttl / 1.5

    async def worker(self, ctx: RunContext, process: int) -> None:
        async with ctx.new_client() as client, trio.open_nursery() as nursery:
            if not self._monitor_started:
                self._monitor_started = True
                nursery.start_soon(self._monitor, ctx)
            if ctx.concurrency == 1:
                nursery.start_soon(self._observe, ctx, client, process + OBSERVER_OFFSET)
                nursery.start_soon(self._hold, ctx, client, process)
            elif process % 2 == 0:
                nursery.start_soon(self._hold, ctx, client, process)
            else:
                nursery.start_soon(self._observe, ctx, client, process)

    async def final(self, ctx: RunContext) -> None:
        """Read until every key is gone (every lease is stopped by now), with
        status rounds before and after each read so that the reads are judged."""
        async with ctx.new_client() as client:
            with trio.move_on_after(self.final_timeout):
                await self._status_round(ctx, client)
                while True:
                    present = await self._read(ctx, client, FINAL_PROCESS)
                    await self._status_round(ctx, client)
                    if present is not None:
                        self.keys_left = present
                        if not present:
                            return
                    await trio.sleep(0.25)

    def check(self, history: list[Operation]) -> dict[str, CheckerReport]:
        result = check_leases(history, bounds=self.bounds, members=self.members)
        counts = result.counts()
        counts["keys_left_at_end"] = len(self.keys_left)
        b = self.bounds
        details = (
            f"{result.describe()}\nbounds: ET <= {b.election_timeout:.3f}s, "
            f"revoke delay {b.revoke_delay:.3f}s, leader-change extension "
            f"{b.promotion_extension:.3f}s"
        )
        return {
            "lease": CheckerReport(
                valid=result.valid,
                counts=counts,
                anomalies=[f"{a.kind} {a.key}: {a.detail}" for a in result.anomalies],
                details=details,
            )
        }

    # -- Holders ----------------------------------------------------------------------

    async def _hold(self, ctx: RunContext, client: Client, process: int) -> None:
        held: list[_Held] = []
        serial = 0
        period = self.ttl / 4
        try:
            with trio.move_on_at(ctx.stop_at):
                while True:
                    if not any(h.mode == "kept" for h in held):
                        serial += 1
                        h = await self._create(ctx, client, process, serial, "kept", math.inf)
                        if h is not None:
                            held.append(h)
                    stopped = sum(h.mode == "stopped" for h in held)
                    if stopped < self.max_stopped and ctx.rng.random() < 0.3:
                        serial += 1
                        after = self.ttl * ctx.rng.uniform(0.2, 1.0)
                        stop = trio.current_time() + after
                        h = await self._create(ctx, client, process, serial, "stopped", stop)
                        if h is not None:
                            held.append(h)
                    for h in list(held):
                        reason = await self._renew(ctx, client, process, h)
                        if reason is not None:
                            held.remove(h)
                            self._stop(ctx, process, h, reason)
                    await trio.sleep(period)
        finally:
            for h in held:
                self._stop(ctx, process, h, "end")

    async def _create(
        self,
        ctx: RunContext,
        client: Client,
        process: int,
        serial: int,
        mode: str,
        stop_time: float,
    ) -> _Held | None:
        key = f"{self.prefix}{process}-{serial}"
        sent = trio.current_time()
        op = ctx.recorder.invoke(process, "grant", key=key, value={"ttl": self.ttl, "mode": mode})
        granted = await attempt(ctx, op, lambda: client.lease_grant(self.ttl))
        if granted is None:
            return None
        ctx.recorder.ok(op, result={"lease": granted.id, "ttl": granted.ttl})
        held = _Held(key, granted.id, granted.ttl, mode, stop_time, sent)
        op = ctx.recorder.invoke(process, "put", key=key, value=granted.id)
        put = await attempt(ctx, op, lambda: client.put(key, "held", lease=granted.id))
        if put is not None:
            ctx.recorder.ok(op, revision=put.header.revision)
        return held

    async def _renew(self, ctx: RunContext, client: Client, process: int, h: _Held) -> str | None:
        """One keep-alive, unless it is time to stop.  None: keep the lease;
        else why to stop it: ``planned`` (a stopped lease's time came),
        ``gone`` (the keep-alive said so) or ``gap`` (keep-alives failed for a
        whole TTL, so the lease may be gone)."""
        now = trio.current_time()
        if now >= h.stop_time:
            return "planned"
        op = ctx.recorder.invoke(process, "keepalive", key=h.key, value=h.lease_id)
        answer = await attempt(ctx, op, lambda: client.lease_keep_alive_once(h.lease_id))
        if answer is None:
            return None if trio.current_time() - h.last_renewed < h.ttl else "gap"
        ctx.recorder.ok(op, result=answer.ttl)
        if answer.ttl <= 0:
            return "gone"
        h.last_renewed = now
        return None

    def _stop(self, ctx: RunContext, process: int, h: _Held, reason: str) -> None:
        """Record that keep-alives of ``h`` stop here, and why (``end``: the run ended)."""
        op = ctx.recorder.invoke(process, "stop", key=h.key, value=h.lease_id)
        ctx.recorder.ok(op, result=reason)

    # -- Observers and the status poller ------------------------------------------------

    async def _observe(self, ctx: RunContext, client: Client, process: int) -> None:
        serializable = False
        with trio.move_on_at(ctx.stop_at):
            while True:
                await self._read(ctx, client, process, serializable=serializable)
                serializable = not serializable
                await trio.sleep(self.read_interval)

    async def _read(
        self, ctx: RunContext, client: Client, process: int, *, serializable: bool = False
    ) -> list[str] | None:
        value = "serializable" if serializable else None
        op = ctx.recorder.invoke(process, "read", key=self.prefix, value=value)
        response = await attempt(
            ctx, op, lambda: client.get(self.prefix, prefix=True, serializable=serializable)
        )
        if response is None:
            return None
        present = sorted(kv.key.decode() for kv in response.kvs)
        ctx.recorder.ok(op, result=present, revision=response.header.revision)
        return present

    async def _monitor(self, ctx: RunContext) -> None:
        async with ctx.new_client() as client:
            with trio.move_on_at(ctx.stop_at):
                while True:
                    await self._status_round(ctx, client)
                    await trio.sleep(self.poll_interval)

    async def _status_round(self, ctx: RunContext, client: Client) -> None:
        """Ask every member for its term and leader, all at once."""
        self._round += 1
        number = self._round

        async def ask(index: int, endpoint: str) -> None:
            op = ctx.recorder.invoke(MONITOR_PROCESS + index, "status", value=number, node=endpoint)
            status = await attempt(ctx, op, lambda: client.status(endpoint), timeout=0.5)
            if status is not None:
                ctx.recorder.ok(op, result={"term": status.raft_term, "leader": status.leader})

        async with trio.open_nursery() as nursery:
            for index, endpoint in enumerate(ctx.endpoints):
                nursery.start_soon(ask, index, endpoint)
