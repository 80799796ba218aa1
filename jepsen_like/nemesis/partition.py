"""The partition nemesis: drop traffic between members with iptables.

Shapes (chosen per fault from the seeded schedule):

* ``isolate``: one member (random, or the leader) is cut off from all others;
* ``majority``: a random minority (``n // 2`` members) is cut off from the
  majority (for 3 members this is an isolation of a random one);
* ``bridge``: the members are split in two halves that cannot talk, except
  through one bridge member that reaches both;
* ``one-way``: what one member (random, or the leader) receives from the
  others (``direction: in``) or sends to them (``out``) is dropped, the other
  direction passes.

Rules live in the run's own chain (see :mod:`jepsen_like.nemesis.iptables`).
Without root or iptables the nemesis reports why and is not used: a partition
is never faked.  The chain is removed at the end of the run, at interpreter
exit (``atexit``) and at the start of the next run; ``python -m jepsen_like
clean`` removes a leftover chain after a harness was killed.
"""

from __future__ import annotations

import atexit
import contextlib
import random
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import trio

from jepsen_like.nemesis.base import (
    FaultEvent,
    NemesisEnv,
    PlannedFault,
    leader_or_member,
    resolve_target,
)
from jepsen_like.nemesis.iptables import Firewall, FirewallError, unavailable_reason

__all__ = ["SHAPES", "PartitionNemesis", "blocked_pairs"]

SHAPES = ("isolate", "majority", "bridge", "one-way")


def blocked_pairs(params: Mapping[str, Any], members: Sequence[str]) -> set[tuple[str, str]]:
    """The directed (sender, receiver) member pairs a partition cuts.

    ``params`` is a resolved fault: ``target`` names a member, not ``"leader"``.
    """
    shape = params["shape"]

    def cut(side_a: Sequence[str], side_b: Sequence[str]) -> set[tuple[str, str]]:
        return {(a, b) for a in side_a for b in side_b} | {(b, a) for a in side_a for b in side_b}

    if shape == "isolate":
        target = params["target"]
        return cut([target], [m for m in members if m != target])
    if shape == "majority":
        minority = list(params["minority"])
        return cut(minority, [m for m in members if m not in minority])
    if shape == "bridge":
        return cut(params["left"], params["right"])
    if shape == "one-way":
        target = params["target"]
        others = [m for m in members if m != target]
        if params["direction"] == "in":
            return {(o, target) for o in others}
        return {(target, o) for o in others}
    raise ValueError(f"unknown partition shape {shape!r}")


class PartitionNemesis:
    """Install DROP rules for one partition, hold, flush them."""

    name: ClassVar[str] = "partition"

    def __init__(self, chain: str) -> None:
        self.firewall = Firewall(chain)
        self.rules_installed = 0
        self.packets_dropped = 0
        self._atexit_registered = False
        self._active = False  # rules may be in place

    def unavailable_reason(self) -> str | None:
        return unavailable_reason()

    def choose(self, rng: random.Random, members: Sequence[str]) -> dict[str, Any]:
        names = list(members)
        shape = rng.choice(SHAPES)
        if shape == "isolate":
            return {"shape": shape, "target": leader_or_member(rng, names)}
        if shape == "majority":
            return {"shape": shape, "minority": sorted(rng.sample(names, len(names) // 2))}
        if shape == "bridge":
            rng.shuffle(names)
            bridge, rest = names[0], names[1:]
            half = max(1, len(rest) // 2)
            return {
                "shape": shape,
                "bridge": bridge,
                "left": sorted(rest[:half]),
                "right": sorted(rest[half:]),
            }
        return {
            "shape": shape,
            "target": leader_or_member(rng, names),
            "direction": rng.choice(["in", "out"]),
        }

    async def prepare(self, env: NemesisEnv) -> None:
        if not self._atexit_registered:
            atexit.register(self._remove_quietly)
            self._atexit_registered = True
        await trio.to_thread.run_sync(self.firewall.install)
        env.log(f"nemesis: iptables chain {self.firewall.chain} installed (jump from INPUT)")

    async def apply(self, env: NemesisEnv, fault: PlannedFault) -> FaultEvent:
        params = dict(fault.params)
        event = FaultEvent("partition", params["shape"], [], env.now(), details={"chosen": params})
        if params.get("target") == "leader":
            leader = await trio.to_thread.run_sync(resolve_target, env, "leader")
            if leader is None:
                event.outcome, event.end = "skipped", env.now()
                event.details["reason"] = "no leader"
                return event
            params["target"] = leader
        members = env.cluster.names
        pairs = blocked_pairs(params, members)
        addresses = {(env.cluster.address_of(a), env.cluster.address_of(b)) for a, b in pairs}
        event.targets = sorted({m for pair in pairs for m in pair})
        event.details["blocked"] = sorted(f"{a}->{b}" for a, b in pairs)
        env.log(f"nemesis: partition {params['shape']} {' '.join(event.details['blocked'])}")
        try:
            self._active = True
            try:
                count = await trio.to_thread.run_sync(self.firewall.block, addresses)
            except FirewallError as exc:
                env.log(f"nemesis: partition not applied: {exc}")
                event.outcome, event.end = "skipped", env.now()
                event.details["reason"] = str(exc)
                return event
            self.rules_installed += count
            event.details["rules"] = count
            event.start = env.now()
            await trio.sleep(fault.hold)
        finally:
            with trio.CancelScope(shield=True):
                dropped = await self._heal(env)
                event.details["packets_dropped"] = dropped
                event.end = env.now()
        return event

    async def _heal(self, env: NemesisEnv) -> int:
        """Flush the chain; returns the packets its rules had dropped."""
        self._active = False
        try:
            counters = await trio.to_thread.run_sync(self.firewall.counters)
            if not counters:
                env.log(f"nemesis: chain {self.firewall.chain} has no rules to heal")
            await trio.to_thread.run_sync(self.firewall.heal)
        except FirewallError as exc:
            env.log(f"nemesis: healing the partition failed: {exc}")
            return 0
        dropped = sum(c.packets for c in counters)
        self.packets_dropped += dropped
        if counters:
            env.log(f"nemesis: partition healed ({dropped} packets dropped)")
        return dropped

    async def heal_all(self, env: NemesisEnv) -> None:
        if self._active:
            await self._heal(env)

    async def close(self, env: NemesisEnv) -> None:
        try:
            await trio.to_thread.run_sync(self.firewall.remove)
        except FirewallError as exc:
            env.log(f"nemesis: could not remove chain {self.firewall.chain}: {exc}")
        else:
            env.log(f"nemesis: iptables chain {self.firewall.chain} removed")

    def _remove_quietly(self) -> None:
        with contextlib.suppress(FirewallError):
            self.firewall.remove()
