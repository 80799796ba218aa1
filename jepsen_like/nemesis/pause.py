"""The pause nemesis: SIGSTOP a member (a random one or the leader), later SIGCONT.

A paused member keeps its sockets and state but does nothing: a paused leader
is the classic way to get two members that both believe they lead.
"""

from __future__ import annotations

import contextlib
import os
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

__all__ = ["PauseNemesis"]


class PauseNemesis:
    """SIGSTOP, hold, SIGCONT (to the pid that was stopped)."""

    name: ClassVar[str] = "pause"

    def __init__(self) -> None:
        self._paused: dict[str, int] = {}  # name -> pid

    def unavailable_reason(self) -> str | None:
        return None

    def choose(self, rng: random.Random, members: Sequence[str]) -> dict[str, Any]:
        return {"target": leader_or_member(rng, members)}

    async def prepare(self, env: NemesisEnv) -> None:
        return None

    async def apply(self, env: NemesisEnv, fault: PlannedFault) -> FaultEvent:
        event, running = await running_target(env, fault, "pause")
        if running is None:
            return event
        target, pid = running
        env.log(f"nemesis: SIGSTOP {target}")
        self._paused[target] = pid
        try:
            os.kill(pid, signal.SIGSTOP)
            event.start = env.now()
            await trio.sleep(fault.hold)
        finally:
            self._resume(env, target)
            event.end = env.now()
        return event

    def _resume(self, env: NemesisEnv, name: str) -> None:
        pid = self._paused.pop(name, None)
        if pid is not None:
            env.log(f"nemesis: SIGCONT {name}")
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)

    async def heal_all(self, env: NemesisEnv) -> None:
        for name in list(self._paused):
            self._resume(env, name)

    async def close(self, env: NemesisEnv) -> None:
        await self.heal_all(env)
