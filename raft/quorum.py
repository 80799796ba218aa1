"""Majority arithmetic, kept apart from everything else so that joint consensus
(a quorum of two configurations) can later replace it in one place."""

from __future__ import annotations

import enum
from collections.abc import Collection, Mapping


class VoteResult(enum.Enum):
    PENDING = "pending"
    WON = "won"
    LOST = "lost"


def majority(voter_count: int) -> int:
    """How many of ``voter_count`` voters form a quorum."""
    return voter_count // 2 + 1


def committed_index(voters: Collection[int], match: Mapping[int, int]) -> int:
    """The highest index that a quorum of ``voters`` has durably matched.

    ``match`` maps voter id to its acknowledged index (missing voters count as 0).
    An empty voter set commits nothing.
    """
    if not voters:
        return 0
    acknowledged = sorted((match.get(voter, 0) for voter in voters), reverse=True)
    return acknowledged[majority(len(acknowledged)) - 1]


def vote_result(voters: Collection[int], votes: Mapping[int, bool]) -> VoteResult:
    """Tally ``votes`` (voter id -> granted) among ``voters``; other ids are ignored."""
    granted = sum(1 for voter in voters if votes.get(voter) is True)
    rejected = sum(1 for voter in voters if votes.get(voter) is False)
    need = majority(len(voters))
    if granted >= need:
        return VoteResult.WON
    if len(voters) - rejected < need:
        return VoteResult.LOST
    return VoteResult.PENDING


def has_quorum(voters: Collection[int], active: Collection[int]) -> bool:
    """Do the ``active`` ids include a quorum of ``voters``?"""
    return sum(1 for voter in voters if voter in active) >= majority(len(voters))
