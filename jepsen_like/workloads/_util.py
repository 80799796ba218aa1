"""Helpers shared by the workloads: recording one attempt."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

import trio

from jepsen_like.history import Operation
from jepsen_like.workload import RunContext
from kvstore.client import KvError
from kvstore.concurrency import ConcurrencyError

T = TypeVar("T")

#: What a store failure looks like to a worker; anything else is a bug and propagates.
STORE_ERRORS = (KvError, ConcurrencyError, trio.ClosedResourceError, trio.TooSlowError)


async def attempt(
    ctx: RunContext,
    op: Operation,
    call: Callable[[], Awaitable[T]],
    *,
    timeout: float | None = None,
) -> T | None:
    """``await call()`` for the invocation ``op``; on a store failure record
    it (``fail`` or ``info``) and return None.  Cancellation is recorded as
    ``info`` and propagates, so no invocation is left without a completion.
    ``timeout`` (default ``ctx.request_timeout`` plus a second) bounds the
    call; running out counts as an unknown outcome."""
    limit = ctx.request_timeout + 1.0 if timeout is None else timeout
    try:
        with trio.fail_after(limit):
            return await call()
    except STORE_ERRORS as exc:
        ctx.recorder.failed(op, exc)
        return None
    except BaseException as exc:
        ctx.recorder.failed(op, exc)
        raise
