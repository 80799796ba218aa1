"""Nemeses: faults injected at the operating-system level (signals, iptables, files).

``make_nemesis(name, chain=...)`` builds one by name; see each module for what
it does.
"""

from __future__ import annotations

from jepsen_like.nemesis.base import FaultEvent, Nemesis, NemesisEnv, PlannedFault, plan_schedule
from jepsen_like.nemesis.corrupt import CorruptNemesis
from jepsen_like.nemesis.kill import KillNemesis
from jepsen_like.nemesis.membership import MembershipNemesis
from jepsen_like.nemesis.partition import PartitionNemesis
from jepsen_like.nemesis.pause import PauseNemesis

__all__ = [
    "NEMESES",
    "FaultEvent",
    "Nemesis",
    "NemesisEnv",
    "PlannedFault",
    "make_nemesis",
    "plan_schedule",
]

NEMESES = ("kill", "pause", "partition", "corrupt", "membership")
"""Names accepted by ``--nemesis`` (besides ``none``)."""


def make_nemesis(name: str, *, chain: str) -> Nemesis:
    """The nemesis called ``name``; ``chain`` is the iptables chain of the run."""
    if name == "kill":
        return KillNemesis()
    if name == "pause":
        return PauseNemesis()
    if name == "partition":
        return PartitionNemesis(chain)
    if name == "corrupt":
        return CorruptNemesis()
    if name == "membership":
        return MembershipNemesis()
    raise ValueError(f"unknown nemesis {name!r} (known: {', '.join(NEMESES)}, none)")
