"""What every nemesis shares: planned faults, fault events, the environment.

A run's faults are planned up front by :func:`plan_schedule` from a seeded
``random.Random``: *when* each fault starts, which kind, its parameters (which
member, which partition shape) and how long it is held.  The same seed, kinds,
members and duration give the same plan.  Only what cannot be known in advance
is resolved when the fault starts (``"leader"`` means whichever member leads
then).

A nemesis applies one planned fault with :meth:`Nemesis.apply`, which returns
a :class:`FaultEvent` and must undo the fault before returning (also when
cancelled: healing runs shielded).  :meth:`Nemesis.heal_all` undoes anything
left over and is idempotent; the run calls it for every nemesis at the end.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

import trio

from jepsen_like.cluster import AddressedCluster
from jepsen_like.workload import Recorder

__all__ = [
    "FaultEvent",
    "Nemesis",
    "NemesisEnv",
    "PlannedFault",
    "plan_schedule",
]


@dataclass(frozen=True)
class PlannedFault:
    """One fault of the schedule: ``at`` seconds after the workload started."""

    at: float
    kind: str
    params: dict[str, Any]
    hold: float


@dataclass
class FaultEvent:
    """A fault as it happened, for ``results.json`` and the plot.

    Times are seconds on the history's clock (:meth:`Recorder.now_ns` / 1e9).
    ``outcome`` is ``"applied"``, ``"skipped"`` or ``"error"`` (not carried
    out, with the reason in ``details``), or for corruption ``"refused"`` / ``"recovered"`` /
    ``"undetected"``.  ``anomaly`` is set when the fault revealed a bug.
    """

    kind: str
    action: str
    targets: list[str]
    start: float
    end: float | None = None
    outcome: str = "applied"
    details: dict[str, Any] = field(default_factory=dict)
    anomaly: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "action": self.action,
            "targets": self.targets,
            "start": round(self.start, 3),
            "end": None if self.end is None else round(self.end, 3),
            "outcome": self.outcome,
            "details": self.details,
            **({"anomaly": self.anomaly} if self.anomaly else {}),
        }


@dataclass
class NemesisEnv:
    """What a nemesis may touch: the cluster, the history clock and a log line sink."""

    cluster: AddressedCluster
    recorder: Recorder
    log: Callable[[str], None] = print
    busy: set[str] = field(default_factory=set)
    """Members a nemesis is stopping and starting right now: their exits are
    the nemesis's to judge, not the run's crash watcher's."""

    def now(self) -> float:
        """Seconds on the history's clock."""
        return self.recorder.now_ns() / 1e9


class Nemesis(Protocol):
    """One kind of fault (kill, pause, partition, corrupt)."""

    name: ClassVar[str]

    def unavailable_reason(self) -> str | None:
        """Why this nemesis cannot run on this machine, or ``None``."""
        ...

    def choose(self, rng: random.Random, members: Sequence[str]) -> dict[str, Any]:
        """Parameters of one fault (planning; no I/O)."""
        ...

    async def prepare(self, env: NemesisEnv) -> None:
        """Called once before the workload starts (e.g. install the firewall chain)."""
        ...

    async def apply(self, env: NemesisEnv, fault: PlannedFault) -> FaultEvent:
        """Inject ``fault``, hold it ``fault.hold`` seconds, undo it; never raises
        for a failure of the store (it is recorded in the event)."""
        ...

    async def heal_all(self, env: NemesisEnv) -> None:
        """Undo whatever is still in effect.  Idempotent; must not raise."""
        ...

    async def close(self, env: NemesisEnv) -> None:
        """Release what :meth:`prepare` set up.  Idempotent; must not raise."""
        ...


def plan_schedule(
    rng: random.Random,
    nemeses: Sequence[Nemesis],
    members: Sequence[str],
    duration: float,
    *,
    first_at: float = 2.0,
    quiet: tuple[float, float] = (2.0, 4.0),
    hold: tuple[float, float] = (2.0, 5.0),
    max_faults: int = 1000,
) -> list[PlannedFault]:
    """Plan faults over ``duration`` seconds, one at a time.

    The first fault starts at ``first_at``; each is held for a time drawn from
    ``hold`` and followed by a quiet period drawn from ``quiet``, so the
    cluster gets time to recover between faults.  The kind is drawn uniformly
    from ``nemeses``.  A fault is planned only if it starts before
    ``duration``; at most ``max_faults`` are planned.
    """
    if not nemeses:
        return []
    plan: list[PlannedFault] = []
    at = first_at
    while at < duration and len(plan) < max_faults:
        nemesis = rng.choice(list(nemeses))
        held = round(rng.uniform(*hold), 3)
        params = nemesis.choose(rng, members)
        plan.append(PlannedFault(round(at, 3), nemesis.name, params, held))
        at += held + rng.uniform(*quiet)
    return plan


def leader_or_member(rng: random.Random, members: Sequence[str]) -> str:
    """``"leader"`` half the time, else a random member: one way of drawing
    a target for every nemesis, so that seeds replay."""
    return "leader" if rng.random() < 0.5 else rng.choice(list(members))


async def running_target(
    env: NemesisEnv, fault: PlannedFault, kind: str
) -> tuple[FaultEvent, tuple[str, int] | None]:
    """The event of ``fault`` on its target (``fault.params["target"]``,
    resolved now) and that member with its pid; or the event marked skipped
    (no leader, or the member not running) and ``None``."""
    target = await trio.to_thread.run_sync(resolve_target, env, fault.params["target"])
    event = FaultEvent(kind, kind, [], env.now(), details={"chosen": fault.params})
    pid = env.cluster.pid_of(target) if target is not None else None
    if target is None or pid is None:
        event.outcome, event.end = "skipped", env.now()
        event.details["reason"] = "no leader" if target is None else f"{target} not running"
        return event, None
    event.targets = [target]
    event.details["pid"] = pid
    return event, (target, pid)


def resolve_target(env: NemesisEnv, target: str) -> str | None:
    """A member name for ``target``: itself, or for ``"leader"`` the member
    leading now (``None`` if there is none).  Blocking."""
    if target == "leader":
        return env.cluster.leader(timeout=0.5)
    return target
