"""The membership nemesis: remove a member, then add it back as a new member.

One fault, step by step (each step's start, end and outcome go in the
event's ``details["steps"]``):

1. ``remove``: ``member remove`` a random member or the leader (the leader
   hands leadership over first).  Skipped unless every member runs and the
   cluster has at least three voters and no learner, so at most one member is
   ever out and a 3-member cluster keeps a 2-voter quorum.
2. ``stop``: wait (bounded) until the removed member's process has exited by
   itself (it exits 0 once it learns of its removal); a member still running
   after :data:`STOP_TIMEOUT` is SIGKILLed and that is recorded.  Its data
   directory is then wiped.
3. the fault is held (the cluster runs one member short), then
4. ``add``: ``member add NAME --learner`` with the same name and the same
   loopback address and ports; the store gives it a new id (ids are never
   reused) and the cluster object learns it (:meth:`AddressedCluster.rejoined`),
   so kill, pause, partition and the final reads keep working on it;
5. ``start``: start it with ``--initial-cluster-state existing`` and the ids
   ``member add`` returned;
6. ``promote``: ``member promote`` it, retried while it is refused as not yet
   caught up (the number of tries is recorded), bounded by :data:`CATCH_UP_TIMEOUT`.

Re-adding runs shielded, also when the run ends during the hold; what is left
undone (e.g. after an error) is finished by :meth:`MembershipNemesis.heal_all`.
A member that exits with a non-zero code after its removal, or that cannot be
added back, started or promoted in time, is an anomaly.
"""

from __future__ import annotations

import random
import shutil
import signal
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

import trio

from jepsen_like.nemesis.base import (
    FaultEvent,
    NemesisEnv,
    PlannedFault,
    leader_or_member,
    resolve_target,
)
from kvstore.api import ErrorCode, Member
from kvstore.client import Client, KvError
from kvstore.local_cluster import ClusterError

__all__ = ["MembershipNemesis"]

STOP_TIMEOUT = 10.0
"""Seconds a removed member has to exit by itself before it is SIGKILLed."""
REQUEST_DEADLINE = 30.0
"""Seconds to keep retrying one membership request that fails for lack of a leader."""
START_TIMEOUT = 30.0
CATCH_UP_TIMEOUT = 60.0
"""Seconds a re-added learner has to catch up and be promoted."""
RETRY_INTERVAL = 0.3

T = TypeVar("T")


@dataclass
class _Out:
    """A member removed (or being removed) and not yet a voter again."""

    name: str
    old_id: int
    stage: str = "removing"
    """``removing`` (removal asked, maybe not done), ``removed`` (confirmed),
    ``added`` (added back as a learner with ``new_id``)."""
    new_id: int = 0
    cluster_id: int = 0


class _StepFailed(Exception):
    """A step could not be carried out within its bound (the message says why)."""


class MembershipNemesis:
    """Remove a member, wipe it, add it back as a new learner, promote it."""

    name: ClassVar[str] = "membership"

    def __init__(self) -> None:
        self._out: dict[str, _Out] = {}

    def unavailable_reason(self) -> str | None:
        return None

    def choose(self, rng: random.Random, members: Sequence[str]) -> dict[str, Any]:
        return {"target": leader_or_member(rng, members)}

    async def prepare(self, env: NemesisEnv) -> None:
        return None

    async def close(self, env: NemesisEnv) -> None:
        return None

    # -- One fault ------------------------------------------------------------------------

    async def apply(self, env: NemesisEnv, fault: PlannedFault) -> FaultEvent:
        event = FaultEvent(
            "membership", "remove+re-add", [], env.now(), details={"chosen": fault.params}
        )
        steps: list[dict[str, Any]] = []
        event.details["steps"] = steps
        target = await trio.to_thread.run_sync(resolve_target, env, fault.params["target"])
        async with _client(env) as client:
            reason = await self._refusal(env, client, target)
            if reason is not None or target is None:
                event.outcome, event.end = "skipped", env.now()
                event.details["reason"] = reason or "no leader"
                return event
            event.targets = [target]
            out = _Out(target, env.cluster.member(target).member_id)
            event.details["old_id"] = f"{out.old_id:x}"
            self._out[target] = out
            env.busy.add(target)
            env.log(f"nemesis: member remove {target} ({out.old_id:x})")
            try:
                await self._remove(env, client, out, steps)
                await self._stop_and_wipe(env, out, steps, event)
                await trio.sleep(fault.hold)
            except (_StepFailed, ClusterError, OSError) as exc:
                event.outcome = "error"
                event.details["reason"] = str(exc)
            finally:
                with trio.CancelScope(shield=True):
                    # A fresh client: the first one's tasks are cancelled with the fault.
                    async with _client(env) as fresh:
                        problem = await self._finish(env, fresh, out, steps, event)
                    if problem is not None:
                        event.anomaly = problem
                    event.end = env.now()
        return event

    async def _refusal(self, env: NemesisEnv, client: Client, target: str | None) -> str | None:
        """Why no member may be removed now, or ``None``."""
        if target is None:
            return "no leader"
        if self._out:
            return f"{', '.join(self._out)} is still out"
        stopped = [m.name for m in env.cluster.members if m.pid is None]
        if stopped:
            return f"{', '.join(stopped)} not running"
        try:
            members = (await client.member_list()).members
        except KvError as exc:
            return f"member list failed: {exc.message}"
        voters = [m for m in members if not m.is_learner]
        if any(m.is_learner for m in members) or len(voters) < 3:
            return f"{len(voters)} voters and {len(members) - len(voters)} learners: too few"
        known = {m.id for m in members}
        if env.cluster.member(target).member_id not in known:
            return f"{target} is not a member"
        return None

    # -- Steps ------------------------------------------------------------------------------

    async def _remove(
        self, env: NemesisEnv, client: Client, out: _Out, steps: list[dict[str, Any]]
    ) -> None:
        step = _begin(env, steps, "remove", out.name)

        async def remove_once() -> bool:
            try:
                await client.member_remove(out.old_id)
            except KvError as exc:
                if exc.code == ErrorCode.MEMBER_NOT_FOUND:
                    return True  # an earlier try that timed out did it
                if exc.definite and exc.code in (
                    ErrorCode.FAILED_PRECONDITION,
                    ErrorCode.INVALID_ARGUMENT,
                ):
                    raise _StepFailed(f"member remove {out.name}: {exc.message}") from None
                step["retries"] = step.get("retries", 0) + 1
                return await _member_named(client, out.name, out.old_id) is None
            return True

        await _until(remove_once, REQUEST_DEADLINE, f"member remove {out.name}")
        out.stage = "removed"
        _end(env, step)

    async def _stop_and_wipe(
        self, env: NemesisEnv, out: _Out, steps: list[dict[str, Any]], event: FaultEvent
    ) -> None:
        step = _begin(env, steps, "stop", out.name)
        cluster = env.cluster
        code: int | None = None
        with trio.move_on_after(STOP_TIMEOUT):
            while (code := await trio.to_thread.run_sync(cluster.exit_code, out.name)) is None:
                await trio.sleep(0.1)
        if code is None and cluster.pid_of(out.name) is not None:
            env.log(f"nemesis: {out.name} still runs {STOP_TIMEOUT:g}s after its removal: kill -9")
            step["stopped_by"] = "SIGKILL"
            await trio.to_thread.run_sync(cluster.kill, out.name, signal.SIGKILL)
        else:
            step["stopped_by"] = "itself"
            step["exit_code"] = code
            if code != 0:
                event.anomaly = f"{out.name} exited with code {code} after its removal"
        shutil.rmtree(cluster.member(out.name).data_dir, ignore_errors=True)
        step["wiped"] = True
        _end(env, step)

    async def _finish(
        self,
        env: NemesisEnv,
        client: Client,
        out: _Out,
        steps: list[dict[str, Any]],
        event: FaultEvent,
    ) -> str | None:
        """Bring ``out`` back as a voter from whatever stage it reached; the
        problem if that fails (the member then stays in ``self._out``)."""
        try:
            if out.stage == "removing":
                if await _member_named(client, out.name, out.old_id) is not None:
                    # The removal did not happen: the member is still a voter.
                    await self._ensure_running(env, out.name)
                    self._done(env, out)
                    return None
                out.stage = "removed"
            if out.stage == "removed":
                if env.cluster.pid_of(out.name) is not None:
                    await self._stop_and_wipe(env, out, steps, event)
                else:
                    shutil.rmtree(env.cluster.member(out.name).data_dir, ignore_errors=True)
                await self._add(env, client, out, steps)
            await self._start(env, out, steps)
            await self._promote(env, client, out, steps)
        except (_StepFailed, ClusterError, OSError) as exc:
            env.log(f"nemesis: re-adding {out.name} failed: {exc}")
            if steps and "end" not in steps[-1]:
                steps[-1]["outcome"] = "error"
                _end(env, steps[-1])
            return f"{out.name} could not be added back: {exc}"
        event.details["new_id"] = f"{out.new_id:x}"
        self._done(env, out)
        return None

    def _done(self, env: NemesisEnv, out: _Out) -> None:
        self._out.pop(out.name, None)
        env.busy.discard(out.name)

    async def _add(
        self, env: NemesisEnv, client: Client, out: _Out, steps: list[dict[str, Any]]
    ) -> None:
        step = _begin(env, steps, "add", out.name)
        peer = env.cluster.member(out.name).peer_address
        env.log(f"nemesis: member add {out.name} --peer-urls {peer} --learner")

        async def add_once() -> bool:
            try:
                response = await client.member_add(out.name, peer, learner=True)
            except KvError as exc:
                step["retries"] = step.get("retries", 0) + 1
                if exc.definite and exc.code != ErrorCode.MEMBER_EXISTS:
                    if exc.code in (ErrorCode.INVALID_ARGUMENT, ErrorCode.FAILED_PRECONDITION):
                        raise _StepFailed(f"member add {out.name}: {exc.message}") from None
                    return False
                # Maybe added by this try or an earlier one that timed out.
                try:
                    listed = await client.member_list()
                except KvError:
                    return False
                member = next((m for m in listed.members if m.name == out.name), None)
                if member is None or member.id == out.old_id:
                    return False
                out.new_id, out.cluster_id = member.id, listed.header.cluster_id
                return True
            out.new_id, out.cluster_id = response.member.id, response.cluster_id
            return True

        await _until(add_once, REQUEST_DEADLINE, f"member add {out.name}")
        await trio.to_thread.run_sync(env.cluster.rejoined, out.name, out.new_id, out.cluster_id)
        out.stage = "added"
        step["new_id"] = f"{out.new_id:x}"
        _end(env, step)

    async def _start(self, env: NemesisEnv, out: _Out, steps: list[dict[str, Any]]) -> None:
        if env.cluster.pid_of(out.name) is not None:
            return
        step = _begin(env, steps, "start", out.name)
        env.log(f"nemesis: start {out.name} ({out.new_id:x}) to join the cluster")
        await trio.to_thread.run_sync(env.cluster.restart, out.name, START_TIMEOUT)
        _end(env, step)

    async def _ensure_running(self, env: NemesisEnv, name: str) -> None:
        if env.cluster.pid_of(name) is None:
            await trio.to_thread.run_sync(env.cluster.restart, name, START_TIMEOUT)

    async def _promote(
        self, env: NemesisEnv, client: Client, out: _Out, steps: list[dict[str, Any]]
    ) -> None:
        step = _begin(env, steps, "promote", out.name)
        step["tries"] = 0
        refusals: list[str] = []

        async def promote_once() -> bool:
            step["tries"] += 1
            try:
                await client.member_promote(out.new_id)
            except KvError as exc:
                if exc.code == ErrorCode.FAILED_PRECONDITION and "not ready" in exc.message:
                    step["not_caught_up"] = step.get("not_caught_up", 0) + 1
                    refusals[:] = [exc.message]
                    return False
                member = await _member_named(client, out.name, out.new_id)
                if member is None:
                    raise _StepFailed(f"{out.name} ({out.new_id:x}) is no member") from None
                return not member.is_learner
            return True

        try:
            await _until(promote_once, CATCH_UP_TIMEOUT, f"member promote {out.name}")
        except _StepFailed as exc:
            raise _StepFailed(f"{exc} ({refusals[0] if refusals else 'no refusal'})") from None
        env.log(f"nemesis: {out.name} promoted after {step['tries']} tries")
        _end(env, step)

    # -- Healing ----------------------------------------------------------------------------

    async def heal_all(self, env: NemesisEnv) -> None:
        if not self._out:
            return
        async with _client(env) as client:
            for out in list(self._out.values()):
                event = FaultEvent("membership", "heal", [out.name], env.now())
                problem = await self._finish(env, client, out, [], event)
                if problem is not None:
                    env.log(f"nemesis: {problem}")


def _client(env: NemesisEnv) -> Client:
    return Client(env.cluster.endpoints, request_timeout=5.0, connect_timeout=1.0)


async def _member_named(client: Client, name: str, member_id: int) -> Member | None:
    """The member ``member_id`` called ``name`` as the leader lists it, ``None`` if it is
    not a member; raises :class:`_StepFailed` if the list cannot be had in time."""

    async def listed() -> list[Member] | None:
        try:
            return (await client.member_list()).members
        except KvError:
            return None

    members = await _retrying(listed, REQUEST_DEADLINE, "member list")
    return next((m for m in members if m.id == member_id and m.name == name), None)


async def _until(attempt: Callable[[], Awaitable[bool]], deadline: float, what: str) -> None:
    """Call ``attempt`` until it returns True, at most ``deadline`` seconds."""

    async def once() -> bool | None:
        return True if await attempt() else None

    await _retrying(once, deadline, what)


async def _retrying(attempt: Callable[[], Awaitable[T | None]], deadline: float, what: str) -> T:
    with trio.move_on_after(deadline):
        while True:
            result = await attempt()
            if result is not None:
                return result
            await trio.sleep(RETRY_INTERVAL)
    raise _StepFailed(f"{what} did not succeed within {deadline:g}s")


def _begin(env: NemesisEnv, steps: list[dict[str, Any]], name: str, target: str) -> dict[str, Any]:
    step: dict[str, Any] = {"step": name, "target": target, "start": round(env.now(), 3)}
    steps.append(step)
    return step


def _end(env: NemesisEnv, step: dict[str, Any]) -> None:
    step.setdefault("outcome", "ok")
    step["end"] = round(env.now(), 3)
