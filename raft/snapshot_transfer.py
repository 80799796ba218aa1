"""Chunked, checksummed, resumable snapshot transfer (both ends, no I/O).

The leader sends a snapshot as :class:`InstallSnapshot` chunks of at most
``chunk_size`` bytes, with at most ``window`` chunks unacknowledged.  The
follower accepts chunks strictly in order, checks each chunk's CRC32 and, at
the end, the whole snapshot's, and acknowledges the offset it has reached.
A lost or corrupt chunk makes the follower ask to resume from its offset; a
leader change starts a new transfer, or resumes the old one if the new leader
sends the very same snapshot (same index, term and checksum).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

from raft.messages import InstallSnapshot, Snapshot, SnapshotMeta


class SnapshotSender:
    """The leader's side of one transfer to one follower."""

    def __init__(self, snapshot: Snapshot, chunk_size: int, window: int) -> None:
        self.snapshot = snapshot
        self.checksum = zlib.crc32(snapshot.data)
        self._chunk_size = chunk_size
        self._window_bytes = chunk_size * window
        self.next_offset = 0
        self.acked = 0
        self._acked_at_last_heartbeat = -1
        self._all_sent = False

    @property
    def index(self) -> int:
        return self.snapshot.meta.index

    def next_chunks(self, frm: int, to: int, term: int) -> list[InstallSnapshot]:
        """The chunks the window allows now."""
        data = self.snapshot.data
        chunks: list[InstallSnapshot] = []
        while not self._all_sent and self.next_offset - self.acked < self._window_bytes:
            piece = data[self.next_offset : self.next_offset + self._chunk_size]
            done = self.next_offset + len(piece) >= len(data)
            chunks.append(
                InstallSnapshot(
                    frm=frm,
                    to=to,
                    term=term,
                    meta=self.snapshot.meta,
                    offset=self.next_offset,
                    data=piece,
                    total_size=len(data),
                    checksum=self.checksum,
                    chunk_checksum=zlib.crc32(piece),
                    done=done,
                )
            )
            self.next_offset += len(piece)
            self._all_sent = done
        return chunks

    def on_response(self, offset: int, reject: bool) -> None:
        """The follower has everything before ``offset``; on ``reject`` resume there."""
        if reject:
            self.acked = offset
            self._rewind(offset)
        else:
            self.acked = max(self.acked, offset)
            if offset > self.next_offset:  # the follower already had more (resumed transfer)
                self.next_offset = offset

    def on_heartbeat_response(self) -> None:
        """Resend from the acknowledged offset if nothing was acknowledged since
        the previous heartbeat: chunks or their acknowledgements were lost."""
        if self.acked == self._acked_at_last_heartbeat:
            self._rewind(self.acked)
        self._acked_at_last_heartbeat = self.acked

    def _rewind(self, offset: int) -> None:
        self.next_offset = min(offset, len(self.snapshot.data))
        self._all_sent = False


@dataclass(frozen=True)
class ReceiveResult:
    offset: int
    """Every byte before this offset has arrived intact."""
    reject: bool
    """Ask the leader to resume from ``offset``."""
    snapshot: Snapshot | None = None
    """The complete, verified snapshot, once the last chunk arrived."""


class SnapshotReceiver:
    """The follower's side of one transfer."""

    def __init__(self, chunk: InstallSnapshot) -> None:
        self.meta: SnapshotMeta = chunk.meta
        self.total_size = chunk.total_size
        self.checksum = chunk.checksum
        self._pieces: list[bytes] = []
        self.received = 0

    def matches(self, chunk: InstallSnapshot) -> bool:
        """Does ``chunk`` belong to this transfer?"""
        return (chunk.meta, chunk.total_size, chunk.checksum) == (
            self.meta,
            self.total_size,
            self.checksum,
        )

    def accept(self, chunk: InstallSnapshot) -> ReceiveResult:
        if chunk.offset < self.received:
            return ReceiveResult(self.received, reject=False)  # a duplicate
        if chunk.offset > self.received or zlib.crc32(chunk.data) != chunk.chunk_checksum:
            return ReceiveResult(self.received, reject=True)
        if self.received + len(chunk.data) > self.total_size:
            return ReceiveResult(self.received, reject=True)
        self._pieces.append(chunk.data)
        self.received += len(chunk.data)
        if not chunk.done:
            return ReceiveResult(self.received, reject=False)
        data = b"".join(self._pieces)
        if len(data) != self.total_size or zlib.crc32(data) != self.checksum:
            self._pieces.clear()
            self.received = 0
            return ReceiveResult(0, reject=True)
        return ReceiveResult(self.received, reject=False, snapshot=Snapshot(self.meta, data))
