"""Errors the Raft core raises to its caller."""

from __future__ import annotations


class RequestDropped(Exception):
    """The core did not accept a request; nothing was appended or sent.

    The request definitely did not take effect, so the caller may retry it
    elsewhere (for example at the leader named in the message, if any).
    """

    def __init__(self, reason: str, leader: int = 0) -> None:
        super().__init__(reason)
        self.reason = reason
        self.leader = leader


class ProposalDropped(RequestDropped):
    """A proposal was refused: no known leader, a leadership transfer in
    progress, or forwarding disabled."""


class ReadIndexDropped(RequestDropped):
    """A ReadIndex request was refused because no leader is known."""


class SafetyViolation(AssertionError):
    """An invariant Raft relies on was broken (for example an attempt to
    overwrite a committed entry).  Continuing could lose acknowledged data, so
    the node must stop.
    """
