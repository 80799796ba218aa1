"""Whether a member is healthy: it knows a leader and serves a linearizable read in time.

This is etcd's definition: a member that cannot confirm a read through the
leader within the timeout is of no use to clients, whatever its process
looks like.  :func:`check_health` is what ``/health`` answers
(:mod:`kvstore.metrics_http`); ``kvctl endpoint health`` asks the same two
questions over the client protocol.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import trio

from kvstore import api

if TYPE_CHECKING:
    from kvstore.server import Member

DEFAULT_TIMEOUT = 1.0
"""Seconds a health check waits for its linearizable read."""

HEALTH_KEY = b"health"
"""The key the check reads (count only; it need not exist)."""


@dataclass(frozen=True)
class Health:
    healthy: bool
    reason: str = ""
    """Why the member is unhealthy (empty when healthy)."""


async def check_health(member: Member, timeout: float = DEFAULT_TIMEOUT) -> Health:
    """Ask ``member`` for a linearizable read, bounded by ``timeout`` seconds."""
    node = member.node
    if member.stopping or node is None:
        return Health(False, "member is not serving")
    if node.leader == 0:
        return Health(False, "no leader")
    with trio.move_on_after(timeout):
        answer = await member.handle(api.RangeRequest(key=HEALTH_KEY, count_only=True))
        if isinstance(answer, api.Error):
            return Health(False, f"linearizable read failed: {answer.message}")
        return Health(True)
    return Health(False, f"linearizable read did not complete within {timeout:g}s")
