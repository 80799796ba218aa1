"""The kill nemesis: SIGKILL a member (a random one or the leader), restart it later.

The member restarts on the same data directory, so it must recover from its
WAL and snapshots and catch up.  A member that does not come back is an
anomaly (recorded on the event).
"""

from __future__ import annotations

import random
import signal
from collections.abc import Sequence
from typing import Any, ClassVar

import trio

from jepsen_like.nemesis.base import (
    FaultEvent,
    NemesisEnv,
    PlannedFault,
    leader_or_member,
    running_target,
)
from kvstore.local_cluster import ClusterError

__all__ = ["KillNemesis"]

RESTART_TIMEOUT = 30.0


class KillNemesis:
    """SIGKILL, hold, restart."""

    name: ClassVar[str] = "kill"

    def __init__(self) -> None:
        self._down: set[str] = set()

    def unavailable_reason(self) -> str | None:
        return None

    def choose(self, rng: random.Random, members: Sequence[str]) -> dict[str, Any]:
        return {"target": leader_or_member(rng, members)}

    async def prepare(self, env: NemesisEnv) -> None:
        return None

    async def apply(self, env: NemesisEnv, fault: PlannedFault) -> FaultEvent:
        event, running = await running_target(env, fault, "kill")
        if running is None:
            return event
        target, _ = running
        env.log(f"nemesis: kill -9 {target}")
        self._down.add(target)
        env.busy.add(target)
        try:
            await trio.to_thread.run_sync(env.cluster.kill, target, signal.SIGKILL)
            event.start = env.now()
            await trio.sleep(fault.hold)
        finally:
            with trio.CancelScope(shield=True):
                event.anomaly = await self._restart(env, target)
                event.end = env.now()
                env.busy.discard(target)
        return event

    async def _restart(self, env: NemesisEnv, name: str) -> str | None:
        env.log(f"nemesis: restart {name}")
        try:
            await trio.to_thread.run_sync(env.cluster.restart, name, RESTART_TIMEOUT)
        except ClusterError as exc:
            return f"{name} did not restart after a kill: {exc}"
        self._down.discard(name)
        return None

    async def heal_all(self, env: NemesisEnv) -> None:
        for name in sorted(self._down):
            if env.cluster.pid_of(name) is None:
                await self._restart(env, name)

    async def close(self, env: NemesisEnv) -> None:
        return None
