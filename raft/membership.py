"""Membership changes, one server at a time, and the membership in effect on a node.

A change is a :class:`ConfChange` carried by a log entry of type
``EntryType.CONF_CHANGE``: add a voter, add a learner (a non-voting member
that only replicates), promote a learner to voter, or remove a member.

**When a change takes effect: when it is appended**, as in the Raft
dissertation (§4.1) and hashicorp/raft, not when it is applied as in
etcd-io/raft.  Every node always uses the latest configuration in its log,
committed or not, and falls back to the previous one if that entry is
truncated.  :class:`ConfLog` computes exactly that from the log: a base
configuration (the one recorded in the latest snapshot, or the bootstrap one)
plus every conf-change entry after it, so the membership survives a restart
without being stored anywhere but in snapshot metadata and the log.

Why this is safe: consecutive configurations differ by one server, so any
majority of the old one and any majority of the new one intersect; a node can
therefore never be elected or commit using one configuration while another
majority, in the next or previous configuration, does the same.  This holds
as long as (a) at most one change is uncommitted at a time (the leader refuses
a change until the previous one is committed and applied), and (b) a new
leader commits an entry of its own term before it proposes a change, which is
the fix for the bug Ongaro reported in 2015 (raft-dev, "bug in single-server
membership changes"): without it, a leader elected under one configuration
could append a change that is not adjacent to a configuration another leader
committed in an earlier term.  The core enforces both in
:meth:`~raft.core.RaftCore.propose_conf_change`.

Applying on append needs no call from the application (unlike etcd's
``ApplyConfChange``), so the effect is decided by the log alone: every node
with the same log uses the same configuration, which is what the simulator's
checkers can rely on.  Each entry carries the whole configuration it results
in (as hashicorp/raft's configuration entries do), which the leader computed
and validated; nodes adopt it as is.  A node started to join an existing
cluster has no configuration until an entry (or a snapshot) gives it one.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Iterable

import msgspec

from raft.messages import ConfState, Entry, EntryType

log = logging.getLogger(__name__)


class ConfChangeType(enum.IntEnum):
    ADD_VOTER = 0
    ADD_LEARNER = 1
    REMOVE = 2
    PROMOTE = 3
    """Turn a learner into a voter."""


class ConfChange(msgspec.Struct, array_like=True, frozen=True):
    """One membership change, and the whole configuration it results in.

    ``voters`` and ``learners`` are the configuration *after* the change,
    filled in by the leader (:func:`complete_change`): a node adopts them as
    they are, so a conf-change entry is self-contained.  That is what lets a
    node that joined with no configuration at all (and replays the log from
    its start, never having seen the bootstrap configuration) know the full
    membership from the entry that added it onwards.

    ``context`` is opaque to Raft: the application's description of the
    membership (names and addresses of the members, say), carried the same
    self-contained way.
    """

    type: ConfChangeType
    node_id: int
    context: bytes = b""
    voters: tuple[int, ...] = ()
    learners: tuple[int, ...] = ()

    def conf_after(self) -> ConfState:
        return ConfState(voters=self.voters, learners=self.learners)


class ConfChangeError(ValueError):
    """A change that does not make sense against the current configuration."""


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(ConfChange)


def encode_conf_change(change: ConfChange) -> bytes:
    return _encoder.encode(change)


def decode_conf_change(data: bytes) -> ConfChange:
    """Raises ``msgspec.DecodeError`` on malformed data."""
    result: ConfChange = _decoder.decode(data)
    return result


def complete_change(conf: ConfState, change: ConfChange) -> ConfChange:
    """``change`` with the configuration it results in from ``conf``; raises
    :class:`ConfChangeError` if it is not valid against ``conf``."""
    after = apply_change(conf, change)
    return msgspec.structs.replace(change, voters=after.voters, learners=after.learners)


def conf_change_entry(term: int, index: int, change: ConfChange) -> Entry:
    return Entry(
        term=term, index=index, data=encode_conf_change(change), type=EntryType.CONF_CHANGE
    )


def apply_change(conf: ConfState, change: ConfChange) -> ConfState:
    """The configuration after ``change``; raises :class:`ConfChangeError` if
    it is not valid against ``conf`` (the configuration is then unchanged)."""
    node = change.node_id
    voters, learners = set(conf.voters), set(conf.learners)
    if node <= 0:
        raise ConfChangeError(f"invalid node id {node}")
    kind = change.type
    if kind in (ConfChangeType.ADD_VOTER, ConfChangeType.ADD_LEARNER):
        if node in voters or node in learners:
            raise ConfChangeError(f"node {node:x} is already a member")
        (voters if kind is ConfChangeType.ADD_VOTER else learners).add(node)
    elif kind is ConfChangeType.PROMOTE:
        if node not in learners:
            raise ConfChangeError(f"node {node:x} is not a learner")
        learners.discard(node)
        voters.add(node)
    else:
        if node not in voters and node not in learners:
            raise ConfChangeError(f"node {node:x} is not a member")
        if voters == {node}:
            raise ConfChangeError("cannot remove the last voter")
        voters.discard(node)
        learners.discard(node)
    return ConfState(voters=tuple(sorted(voters)), learners=tuple(sorted(learners)))


def is_conf_change(entry: Entry) -> bool:
    return entry.type is EntryType.CONF_CHANGE


class ConfLog:
    """The configuration in effect on one node, derived from its log.

    ``base`` is the configuration at ``base_index`` (a snapshot's, or the
    bootstrap one at 0); every conf-change entry appended after it is tracked
    with the configuration it produces.  :attr:`version` changes whenever the
    configuration in effect may have changed.
    """

    def __init__(self, base: ConfState, base_index: int) -> None:
        self.base = base
        self.base_index = base_index
        self._changes: list[tuple[int, ConfState, ConfChange]] = []
        self.version = 0
        self._removed_cache: tuple[tuple[int, int], frozenset[int]] = ((-1, -1), frozenset())

    def current(self) -> ConfState:
        return self._changes[-1][1] if self._changes else self.base

    def at(self, index: int) -> ConfState:
        """The configuration in effect after the entry at ``index`` (>= base index)."""
        conf = self.base
        for change_index, after, _ in self._changes:
            if change_index > index:
                break
            conf = after
        return conf

    def last_change_index(self) -> int:
        """Index of the newest conf-change entry in the log (0 if none since the base)."""
        return self._changes[-1][0] if self._changes else 0

    def changes(self) -> list[tuple[int, ConfChange]]:
        return [(index, change) for index, _, change in self._changes]

    def context(self) -> bytes:
        """The context of the newest conf change in the log (b"" if none since the base)."""
        return self._changes[-1][2].context if self._changes else b""

    def removed_through(self, index: int) -> frozenset[int]:
        """Nodes removed by a change at or before ``index`` (and not re-added
        since).  Cached: the core asks for every message it receives."""
        key = (index, self.version)
        if self._removed_cache[0] != key:
            self._removed_cache = (key, frozenset(self._removed_through(index)))
        return self._removed_cache[1]

    def _removed_through(self, index: int) -> set[int]:
        removed: set[int] = set()
        for change_index, _, change in self._changes:
            if change_index > index:
                break
            if change.type is ConfChangeType.REMOVE:
                removed.add(change.node_id)
            else:
                removed.discard(change.node_id)
        return removed

    def reset(self, base: ConfState, base_index: int) -> None:
        """The log was replaced by a snapshot at ``base_index`` with ``base``."""
        self.base, self.base_index = base, base_index
        self._changes = []
        self.version += 1

    def truncate_from(self, index: int) -> None:
        """Entries at ``index`` and after were removed from the log."""
        kept = [item for item in self._changes if item[0] < index]
        if len(kept) != len(self._changes):
            self._changes = kept
            self.version += 1

    def append(self, entries: Iterable[Entry]) -> None:
        """Track the conf-change entries among ``entries`` (appended in order)."""
        for entry in entries:
            if entry.type is not EntryType.CONF_CHANGE or entry.index <= self.base_index:
                continue
            try:
                change = decode_conf_change(entry.data)
            except msgspec.DecodeError as error:
                log.warning("conf change at index %d is a no-op: %s", entry.index, error)
                continue
            self._changes.append((entry.index, change.conf_after(), change))
            self.version += 1
