"""The corrupt nemesis: damage a stopped member's files, restart it, judge the outcome.

One fault: SIGKILL a member, damage its data directory (see
:mod:`jepsen_like.nemesis.corruption`), start it again, then

* after a flipped bit (WAL record or snapshot): the member must **refuse** to
  start: exit with a non-zero status and an error naming the damaged file.
  Then the original bytes are put back and it must start.  If it starts on
  the damaged files, the corruption went **undetected**: it is stopped at
  once and the run fails (an anomaly);
* after a torn tail: it must **recover** (drop the partial record) and start,
  then catch up from the leader.

The event's ``outcome`` is ``refused``, ``recovered`` or ``undetected``;
:attr:`CorruptNemesis.tally` counts them for ``results.json``.
"""

from __future__ import annotations

import random
import signal
from collections import Counter
from collections.abc import Sequence
from typing import Any, ClassVar

import trio

from jepsen_like.nemesis.base import FaultEvent, NemesisEnv, PlannedFault
from jepsen_like.nemesis.corruption import (
    Corruption,
    append_partial_record,
    flip_snapshot_bit,
    flip_wal_bit,
    tear_wal_tail,
)
from kvstore.local_cluster import ClusterError

__all__ = ["MODES", "CorruptNemesis"]

MODES = ("flip-wal", "flip-snap", "torn-tail", "torn-write")
TORN = ("torn-tail", "torn-write")
RESTART_TIMEOUT = 30.0
STAY_UP_SECONDS = 3.0
"""How long a member must stay up after a torn tail to count as recovered."""
RESTART_ATTEMPTS = 5
LOST_ACKNOWLEDGED = "beyond last index"
"""What Raft says when the leader commits entries a member lost (raft/log.py)."""


class CorruptNemesis:
    """Kill, corrupt, restart, check, restore."""

    name: ClassVar[str] = "corrupt"

    def __init__(self) -> None:
        self.tally: Counter[str] = Counter()
        self._pending: dict[str, Corruption] = {}  # member -> damage not yet undone
        self.fail_stopped: set[str] = set()
        """Members stopped by Raft after a cut tail that do not stay up yet."""

    def unavailable_reason(self) -> str | None:
        return None

    def choose(self, rng: random.Random, members: Sequence[str]) -> dict[str, Any]:
        return {
            "target": rng.choice(list(members)),
            "mode": rng.choice(MODES),
            "seed": rng.randrange(2**32),
        }

    async def prepare(self, env: NemesisEnv) -> None:
        return None

    async def apply(self, env: NemesisEnv, fault: PlannedFault) -> FaultEvent:
        target: str = fault.params["target"]
        mode: str = fault.params["mode"]
        event = FaultEvent("corrupt", mode, [target], env.now(), details={"chosen": fault.params})
        if env.cluster.pid_of(target) is None:
            event.outcome, event.end = "skipped", env.now()
            event.details["reason"] = f"{target} not running"
            return event
        env.busy.add(target)
        try:
            with trio.CancelScope(shield=True):  # never leave a member down or damaged
                await self._corrupt_and_check(env, event, target, mode, fault.params["seed"])
        finally:
            if target not in self.fail_stopped:
                env.busy.discard(target)
        event.end = env.now()
        self.tally[event.outcome] += 1
        return event

    async def _corrupt_and_check(
        self, env: NemesisEnv, event: FaultEvent, target: str, mode: str, seed: int
    ) -> None:
        cluster = env.cluster
        env.log(f"nemesis: kill -9 {target} to corrupt it ({mode})")
        await trio.to_thread.run_sync(cluster.kill, target, signal.SIGKILL)
        raft_dir = cluster.member(target).data_dir / "raft"
        rng = random.Random(seed)
        damage = _damage(mode, raft_dir, rng)
        if damage is None and mode == "flip-snap":
            event.details["note"] = "no snapshot file yet: flipped a WAL bit instead"
            damage = flip_wal_bit(raft_dir, rng)
        if damage is None:
            event.outcome = "skipped"
            event.details["reason"] = "nothing to damage"
            await self._start(env, target)
            return
        event.action = damage.mode
        self._pending[target] = damage
        event.details.update(file=str(damage.path), damage=damage.description)
        env.log(f"nemesis: {damage.path.name}: {damage.description}; restarting {target}")
        error = await self._start(env, target)
        if damage.mode in TORN:
            self._pending.pop(target, None)
            await self._judge_torn(env, event, target, damage.mode, error)
            return
        if error is None:
            event.outcome = "undetected"
            event.anomaly = f"{target} started on a corrupt {damage.path} ({damage.description})"
            await trio.to_thread.run_sync(cluster.kill, target, signal.SIGKILL)
        else:
            event.outcome = "refused"
            event.details["exit_code"] = cluster.exit_code(target)
            event.details["error"] = error[-500:]
            if damage.path.name not in error:
                event.anomaly = (
                    f"{target} refused to start but its error does not name {damage.path.name}"
                )
        env.log(f"nemesis: {target} {event.outcome}; restoring {damage.path.name}")
        damage.restore()
        self._pending.pop(target, None)
        restore_error = await self._start(env, target)
        if restore_error is not None and event.anomaly is None:
            event.anomaly = f"{target} did not start after its files were restored: {restore_error}"

    async def _judge_torn(
        self, env: NemesisEnv, event: FaultEvent, target: str, mode: str, error: str | None
    ) -> None:
        """After a torn tail: the member must start and stay up (``recovered``).

        ``torn-tail`` cuts the last record *as written*, which may hold entries
        the member had already made durable and acknowledged (only a disk that
        loses fsynced data does that).  The leader then still counts them as
        the member's, and its next heartbeat commits past the member's log:
        Raft stops the member (``SafetyViolation: commit N beyond last index
        M``, etcd panics alike) rather than diverge.  That is ``fail-stop``, not
        an anomaly; the member is started again until it stays up (a new
        leader no longer counts the lost entries).  A ``torn-write`` (a partial
        record that was never complete, so never acknowledged) must always
        recover.
        """
        if error is None:
            with trio.move_on_after(STAY_UP_SECONDS):
                while env.cluster.pid_of(target) is not None:
                    await trio.sleep(0.1)
            if env.cluster.pid_of(target) is not None:
                event.outcome = "recovered"
                return
            error = f"{target} exited with code {env.cluster.exit_code(target)} after starting"
        cause = _log_tail(env, target)
        event.details["error"] = f"{error}; log: {cause}"[-600:]
        if mode != "torn-tail" or LOST_ACKNOWLEDGED not in cause:
            event.outcome = "failed"
            event.anomaly = f"{target} did not recover from a {mode}: {error} ({cause})"
            return
        event.outcome = "fail-stop"
        event.details["note"] = (
            "the cut record held entries the member had acknowledged; Raft stopped it"
        )
        env.log(f"nemesis: {target} stopped after losing acknowledged entries; restarting it")
        for attempt in range(1, RESTART_ATTEMPTS + 1):
            await trio.sleep(2.0)
            if await self._start(env, target) is None:
                await trio.sleep(STAY_UP_SECONDS)
                if env.cluster.pid_of(target) is not None:
                    event.details["back_after_restarts"] = attempt
                    return
        # While the same leader leads, it counts the lost entries as the member's
        # and stops it again: leave it down (its exits are expected) until the heal.
        event.details["back_after_restarts"] = None
        self.fail_stopped.add(target)
        env.log(f"nemesis: {target} stays down until the faults are healed")

    async def _start(self, env: NemesisEnv, target: str) -> str | None:
        """Start ``target``; ``None`` if it serves, else why it did not."""
        try:
            await trio.to_thread.run_sync(env.cluster.restart, target, RESTART_TIMEOUT)
        except ClusterError as exc:
            return str(exc)
        return None

    async def heal_all(self, env: NemesisEnv) -> None:
        for target in sorted(self.fail_stopped):
            self.fail_stopped.discard(target)
            env.busy.discard(target)
            if env.cluster.pid_of(target) is None:
                await self._start(env, target)
        for target, damage in list(self._pending.items()):
            if env.cluster.pid_of(target) is None:
                damage.restore()
                self._pending.pop(target)
                await self._start(env, target)

    async def close(self, env: NemesisEnv) -> None:
        return None


def _damage(mode: str, raft_dir: Any, rng: random.Random) -> Corruption | None:
    if mode == "flip-wal":
        return flip_wal_bit(raft_dir, rng)
    if mode == "flip-snap":
        return flip_snapshot_bit(raft_dir, rng)
    if mode == "torn-tail":
        return tear_wal_tail(raft_dir, rng)
    if mode == "torn-write":
        return append_partial_record(raft_dir, rng)
    raise ValueError(f"unknown corruption mode {mode!r}")


def _log_tail(env: NemesisEnv, name: str) -> str:
    """The last lines of member ``name``'s log that say why it stopped."""
    try:
        text = env.cluster.member(name).log_path.read_bytes()[-8192:].decode(errors="replace")
    except OSError:
        return ""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    useful = [line for line in lines if "Error" in line or "Violation" in line]
    return " | ".join((useful or lines)[-2:])
