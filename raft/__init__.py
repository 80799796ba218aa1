"""A sans-I/O Raft consensus core, its storage and (later) its trio driver.

This package never imports :mod:`kvstore`: it replicates opaque ``bytes``.
"""

from raft.core import Config, RaftCore, Status
from raft.errors import ProposalDropped, ReadIndexDropped, RequestDropped, SafetyViolation
from raft.membership import ConfChange, ConfChangeType
from raft.messages import ConfState, Entry, EntryType, HardState, Message
from raft.ready import ReadState, Ready, Role, SoftState
from raft.storage import MemoryStorage, Storage

__all__ = [
    "Config",
    "ConfChange",
    "ConfChangeType",
    "ConfState",
    "Entry",
    "EntryType",
    "HardState",
    "MemoryStorage",
    "Message",
    "ProposalDropped",
    "RaftCore",
    "ReadIndexDropped",
    "ReadState",
    "Ready",
    "RequestDropped",
    "Role",
    "SafetyViolation",
    "SoftState",
    "Status",
    "Storage",
]
