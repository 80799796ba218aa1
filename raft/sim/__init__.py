"""A deterministic simulator for the Raft core, and the safety checkers.

* :mod:`raft.sim.network`: messages in flight, reorder / delay / drop /
  duplicate, symmetric and one-way partitions.
* :mod:`raft.sim.disk`: a node's durable storage (pluggable) and what a crash
  loses.
* :mod:`raft.sim.wal_disk`: the real WAL and snapshot files on a simulated
  disk with fsync semantics: torn writes, power cuts at any point, bit flips.
* :mod:`raft.sim.cluster`: N cores on those disks, crashes (also half way
  through a Ready) and restarts, a readable trace, the liveness phase.
* :mod:`raft.sim.chaos`: seeded random fault schedules.
* :mod:`raft.sim.checkers`: election safety, leader append-only, log matching,
  leader completeness, state machine safety, durability, ReadIndex
  linearizability, at most one uncommitted membership change.

Everything is driven by one seed: the same seed and the same calls replay the
same run.
"""

from raft.sim.chaos import DISK_CHAOS, ChaosProfile, run_chaos
from raft.sim.checkers import (
    ALL_PROPERTIES,
    DurabilityViolation,
    ElectionSafetyViolation,
    LeaderAppendOnlyViolation,
    LeaderCompletenessViolation,
    LogMatchingViolation,
    MembershipViolation,
    ReadIndexViolation,
    SafetyChecker,
    StateMachineSafetyViolation,
    Violation,
)
from raft.sim.cluster import Cluster, CrashPoint, DuringPersist, LivenessViolation, SimNode
from raft.sim.disk import CorruptibleDisk, Disk, DiskRefused, MemoryDisk
from raft.sim.network import Envelope, Network, format_message

__all__ = [
    "ALL_PROPERTIES",
    "DISK_CHAOS",
    "ChaosProfile",
    "Cluster",
    "CorruptibleDisk",
    "CrashPoint",
    "Disk",
    "DiskRefused",
    "DuringPersist",
    "DurabilityViolation",
    "ElectionSafetyViolation",
    "Envelope",
    "LeaderAppendOnlyViolation",
    "LeaderCompletenessViolation",
    "LivenessViolation",
    "LogMatchingViolation",
    "MembershipViolation",
    "MemoryDisk",
    "Network",
    "ReadIndexViolation",
    "SafetyChecker",
    "SimNode",
    "StateMachineSafetyViolation",
    "Violation",
    "format_message",
    "run_chaos",
]
