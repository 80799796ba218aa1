"""An in-memory network for the simulator: every message in flight is visible.

Nothing here is delivered by itself.  The driver (a Hypothesis rule, a seeded
random schedule, or a hand-written scenario) decides which message in
:attr:`Network.in_flight` is delivered next, so messages can be reordered,
delayed (left in flight across any number of steps), dropped or duplicated.

Partitions are a set of blocked directed links ``(frm, to)``.  A symmetric
partition blocks both directions; a one-way partition blocks one.  A message on
a blocked link is dropped when it is sent and also when delivery of a message
already in flight is attempted (cutting a link cuts what is on the wire).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from raft.messages import (
    AppendEntries,
    AppendResponse,
    Entry,
    Heartbeat,
    HeartbeatResponse,
    InstallSnapshot,
    Message,
    Propose,
    ReadIndexRequest,
    ReadIndexResponse,
    RequestVote,
    SnapshotResponse,
    TransferLeader,
    VoteResponse,
)


@dataclass(frozen=True)
class Envelope:
    """One message on the wire.  ``seq`` numbers sends, for readable traces."""

    seq: int
    message: Message

    @property
    def frm(self) -> int:
        return self.message.frm

    @property
    def to(self) -> int:
        return self.message.to

    def __str__(self) -> str:
        return f"#{self.seq} {format_message(self.message)}"


def _entries(entries: list[Entry]) -> str:
    if not entries:
        return "[]"
    parts = []
    for entry in entries[:6]:
        label = f"{entry.index}@{entry.term}"
        if entry.data:
            label += ":" + format_bytes(entry.data)
        parts.append(label)
    if len(entries) > 6:
        parts.append(f"...+{len(entries) - 6}")
    return "[" + " ".join(parts) + "]"


def format_bytes(data: bytes, limit: int = 16) -> str:
    """Printable ASCII as it is, anything else as hex; cut at ``limit`` bytes."""
    head = data[:limit]
    text = head.decode("ascii") if head.isascii() and head.decode("ascii").isprintable() else None
    rendered = text if text is not None else head.hex()
    return rendered + ("..." if len(data) > limit else "")


def format_message(m: Message) -> str:
    """A one-line, human-readable rendering of a message."""
    head = f"{type(m).__name__} {m.frm}->{m.to} term {m.term}"
    if isinstance(m, AppendEntries):
        return (
            f"{head} prev=({m.prev_index},{m.prev_term}) "
            f"entries={_entries(m.entries)} commit={m.commit}"
        )
    if isinstance(m, AppendResponse):
        if m.reject:
            return f"{head} REJECT index={m.index} hint=({m.hint_index},{m.hint_term})"
        return f"{head} ok index={m.index}"
    if isinstance(m, Heartbeat):
        return f"{head} commit={m.commit} round={m.read_round}"
    if isinstance(m, HeartbeatResponse):
        return f"{head} round={m.read_round}"
    if isinstance(m, RequestVote):
        kind = " PRE" if m.pre_vote else ""
        kind += " TRANSFER" if m.transfer else ""
        return f"{head}{kind} last=({m.last_index},{m.last_term})"
    if isinstance(m, VoteResponse):
        kind = " PRE" if m.pre_vote else ""
        return f"{head}{kind} {'REJECT' if m.reject else 'GRANT'}"
    if isinstance(m, Propose):
        return f"{head} entries={_entries(m.entries)}"
    if isinstance(m, ReadIndexRequest):
        return f"{head} ctx={format_bytes(m.context)}"
    if isinstance(m, ReadIndexResponse):
        return f"{head} ctx={format_bytes(m.context)} index={m.index}"
    if isinstance(m, TransferLeader):
        return f"{head} target={m.target}"
    if isinstance(m, InstallSnapshot):
        end = m.offset + len(m.data)
        return (
            f"{head} snapshot {m.meta.index}@{m.meta.term} bytes [{m.offset},{end}) "
            f"of {m.total_size}{' done' if m.done else ''}"
        )
    if isinstance(m, SnapshotResponse):
        return f"{head} snapshot {m.index} offset={m.offset}{' REJECT' if m.reject else ''}"
    return head  # TimeoutNow, and any variant without more to show


class Network:
    """Messages in flight plus the set of blocked links.

    ``log`` is called with one line per network event so the owner can keep a
    single trace of the whole simulation.
    """

    def __init__(self, log: Callable[[str], None] | None = None) -> None:
        self.in_flight: list[Envelope] = []
        self.blocked: set[tuple[int, int]] = set()
        self._seq = 0
        self._log = log or (lambda line: None)
        self.sent = 0
        self.delivered = 0
        self.dropped = 0

    # -- sending -----------------------------------------------------------------

    def send(self, message: Message) -> None:
        """Put ``message`` on the wire (or drop it at once if its link is cut)."""
        self._seq += 1
        self.sent += 1
        envelope = Envelope(self._seq, message)
        if (message.frm, message.to) in self.blocked:
            self.dropped += 1
            self._log(f"send {envelope} (dropped: link cut)")
            return
        self.in_flight.append(envelope)
        self._log(f"send {envelope}")

    def send_all(self, messages: Iterable[Message]) -> None:
        for message in messages:
            self.send(message)

    # -- choosing what happens to messages in flight --------------------------------

    def take(self, position: int) -> Envelope | None:
        """Remove the message at ``position`` for delivery.

        Returns ``None`` (and counts a drop) if its link is cut by now.
        """
        envelope = self.in_flight.pop(position)
        if (envelope.frm, envelope.to) in self.blocked:
            self.dropped += 1
            self._log(f"drop {envelope} (link cut)")
            return None
        self.delivered += 1
        return envelope

    def drop(self, position: int) -> Envelope:
        envelope = self.in_flight.pop(position)
        self.dropped += 1
        self._log(f"drop {envelope}")
        return envelope

    def duplicate(self, position: int) -> Envelope:
        """Put a second copy of the message at ``position`` on the wire."""
        original = self.in_flight[position]
        self._seq += 1
        copy = Envelope(self._seq, original.message)
        self.in_flight.append(copy)
        self._log(f"duplicate #{original.seq} as #{copy.seq}")
        return copy

    def drop_where(self, predicate: Callable[[Envelope], bool], reason: str = "") -> int:
        """Drop every message in flight matching ``predicate``; returns how many."""
        keep: list[Envelope] = []
        count = 0
        for envelope in self.in_flight:
            if predicate(envelope):
                count += 1
                self.dropped += 1
                self._log(f"drop {envelope}{f' ({reason})' if reason else ''}")
            else:
                keep.append(envelope)
        self.in_flight = keep
        return count

    def find(self, predicate: Callable[[Envelope], bool]) -> int | None:
        """Position of the oldest message in flight matching ``predicate``."""
        for position, envelope in enumerate(self.in_flight):
            if predicate(envelope):
                return position
        return None

    # -- partitions ------------------------------------------------------------------

    def partition(self, *groups: Iterable[int], nodes: Iterable[int]) -> None:
        """Split ``nodes`` into ``groups`` (nodes not named form one more group).

        Links between different groups are cut both ways; links inside a group
        are left as they are.
        """
        all_nodes = sorted(set(nodes))
        side: dict[int, int] = {n: len(groups) for n in all_nodes}
        for number, group in enumerate(groups):
            for n in group:
                side[n] = number
        for a in all_nodes:
            for b in all_nodes:
                if a != b and side[a] != side[b]:
                    self.blocked.add((a, b))
        self._log(f"partition {self._describe_groups(side)}")

    def cut(self, frm: int, to: int) -> None:
        """Cut the one-way link ``frm -> to``."""
        self.blocked.add((frm, to))
        self._log(f"cut link {frm}->{to}")

    def isolate(self, node: int, nodes: Iterable[int]) -> None:
        """Cut every link to and from ``node``."""
        for other in nodes:
            if other != node:
                self.blocked.add((node, other))
                self.blocked.add((other, node))
        self._log(f"isolate n{node}")

    def heal(self) -> None:
        """Restore every link."""
        self.blocked.clear()
        self._log("heal all links")

    @staticmethod
    def _describe_groups(side: dict[int, int]) -> str:
        groups: dict[int, list[int]] = {}
        for n, number in side.items():
            groups.setdefault(number, []).append(n)
        return " | ".join(
            "{" + ",".join(f"n{n}" for n in sorted(members)) + "}"
            for _, members in sorted(groups.items())
        )
