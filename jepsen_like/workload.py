"""The contract between the run loop and a workload, and the history recorder.

A run (``python -m jepsen_like run``) starts the members, then:

1. ``await workload.setup(ctx)`` once, on a healthy cluster;
2. ``workload.worker(ctx, process)`` in ``ctx.concurrency`` concurrent tasks
   while the nemesis injects faults; each worker returns by
   ``ctx.stop_at`` (trio time) at the latest, and must never raise for a
   failure of the store (record it instead);
3. heals every fault and waits until the cluster has a leader again;
4. ``await workload.final(ctx)``: final reads on the healed cluster;
5. ``workload.check(history)``: a verdict per checker, from the history and
   from whatever ``final`` gathered.

Every operation a worker attempts is recorded around the call::

    op = ctx.recorder.invoke(process, "write", key=k, value=v, node=client.endpoint)
    try:
        resp = await client.put(k, v)
    except BaseException as exc:
        ctx.recorder.failed(op, exc)      # fail or info by exc.definite
        raise-or-continue
    else:
        ctx.recorder.ok(op, revision=resp.header.revision)

``failed`` classifies an exception as ``fail`` only when the store said the
operation definitely did not happen (:attr:`kvstore.client.KvError.definite`);
anything else (timeouts, cancellation, lost connections) is ``info``: it may
have happened, at any time after the invocation.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

from jepsen_like.history import Operation
from kvstore.client import Client, KvError


class Recorder:
    """Appends history events with times from one monotonic clock.

    Shared by every worker of a run (thread-safe, so that blocking helpers may
    record too).  ``time_ns`` is nanoseconds since the recorder was created.
    """

    def __init__(self) -> None:
        self._t0 = time.monotonic_ns()
        self._lock = threading.Lock()
        self.history: list[Operation] = []

    def now_ns(self) -> int:
        return time.monotonic_ns() - self._t0

    def _append(self, op: Operation) -> Operation:
        with self._lock:
            self.history.append(op)
        return op

    def invoke(
        self,
        process: int,
        f: str,
        *,
        key: str | None = None,
        value: Any = None,
        node: str | None = None,
    ) -> Operation:
        """Record an invocation; pass the result to :meth:`ok` or :meth:`failed`."""
        return self._append(
            Operation(
                process=process,
                type="invoke",
                f=f,
                time_ns=self.now_ns(),
                key=key,
                value=value,
                node=node,
            )
        )

    def ok(
        self,
        invoke: Operation,
        *,
        result: Any = None,
        succeeded: bool | None = None,
        revision: int | None = None,
        node: str | None = None,
    ) -> Operation:
        """Record that ``invoke`` took effect."""
        return self._append(
            Operation(
                process=invoke.process,
                type="ok",
                f=invoke.f,
                time_ns=self.now_ns(),
                key=invoke.key,
                value=invoke.value,
                result=result,
                succeeded=succeeded,
                revision=revision,
                node=node or invoke.node,
            )
        )

    def failed(
        self, invoke: Operation, error: BaseException, *, node: str | None = None
    ) -> Operation:
        """Record ``error`` for ``invoke``: ``fail`` if the operation definitely
        did not happen, else ``info`` (outcome unknown)."""
        definite = isinstance(error, KvError) and error.definite
        return self._append(
            Operation(
                process=invoke.process,
                type="fail" if definite else "info",
                f=invoke.f,
                time_ns=self.now_ns(),
                key=invoke.key,
                value=invoke.value,
                node=node or invoke.node,
                error=f"{type(error).__name__}: {error}"[:300],
            )
        )


@dataclass
class CheckerReport:
    """One checker's verdict, as written to ``results.json``."""

    valid: bool
    counts: dict[str, int] = field(default_factory=dict)
    anomalies: list[str] = field(default_factory=list)
    details: str = ""


@dataclass
class RunContext:
    """What a workload gets from the run loop.

    ``new_client()`` opens a fresh :class:`Client` over all endpoints (the
    caller closes it); workers usually open one each so that their requests
    spread over the members.  ``stop_at`` is in ``trio.current_time()`` units.
    """

    endpoints: list[str]
    recorder: Recorder
    rng: random.Random
    concurrency: int
    stop_at: float
    new_client: Callable[[], Client]
    request_timeout: float = 2.0
    scratch: dict[str, Any] = field(default_factory=dict)


class Workload(Protocol):
    """A workload; see the module docstring for the order of the calls."""

    name: ClassVar[str]

    async def setup(self, ctx: RunContext) -> None: ...

    async def worker(self, ctx: RunContext, process: int) -> None: ...

    async def final(self, ctx: RunContext) -> None: ...

    def check(self, history: list[Operation]) -> dict[str, CheckerReport]: ...
