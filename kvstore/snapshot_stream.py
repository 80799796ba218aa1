"""Serving a snapshot stream: one consistent copy of the KV state, in bounded chunks.

The member takes the copy (:meth:`~kvstore.state_machine.KVStateMachine.capture`)
on its event loop, between two applies, so it is a point-in-time state; what
costs most, encoding it, runs in a worker thread when the copy is large, so the
member keeps serving meanwhile.  The payload (the state machine's snapshot
bytes, what a Raft snapshot of the same state holds) then goes out as
:class:`~kvstore.api.SnapshotResponse` messages: ``info`` first, then chunks of
at most ``chunk_bytes``, then the SHA-256 of the whole payload.  Each message
is awaited by the sender before the next is made, so a slow client slows the
stream down instead of piling frames up in memory.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Callable

import trio

from kvstore import api
from kvstore.api import Error, ErrorCode, ResponseHeader, SnapshotInfo, SnapshotResponse
from kvstore.state_machine import SNAPSHOT_FORMAT, StateCopy

__all__ = ["THREAD_THRESHOLD_VERSIONS", "chunk_bytes_for", "snapshot_messages"]

THREAD_THRESHOLD_VERSIONS = 2_000
"""Copies holding at least this many key versions are encoded in a worker thread."""


def chunk_bytes_for(request: api.SnapshotRequest) -> int | Error:
    """The chunk size to serve ``request`` with, or the definite error if it
    asks for a negative one.  Requests above the maximum get the maximum."""
    if request.chunk_bytes < 0:
        return Error(
            code=ErrorCode.INVALID_ARGUMENT,
            message="chunk_bytes must not be negative",
            definite=True,
        )
    if request.chunk_bytes == 0:
        return api.SNAPSHOT_CHUNK_BYTES
    return min(request.chunk_bytes, api.MAX_SNAPSHOT_CHUNK_BYTES)


async def snapshot_messages(
    copy: StateCopy,
    raft_term: int,
    header: Callable[[int], ResponseHeader],
    chunk_bytes: int,
) -> AsyncIterator[SnapshotResponse]:
    """The messages of the stream that sends ``copy``.

    ``raft_term`` is the term of the entry at the copy's applied index;
    ``header(revision)`` makes the response header.
    """
    if copy.versions >= THREAD_THRESHOLD_VERSIONS:
        payload = await trio.to_thread.run_sync(copy.encode)
    else:
        payload = copy.encode()
    status = copy.status
    response_header = header(status.revision)
    info = SnapshotInfo(
        raft_index=status.applied_index,
        raft_term=raft_term,
        revision=status.revision,
        compact_revision=status.compact_revision,
        keys=status.keys,
        size=len(payload),
        format=SNAPSHOT_FORMAT,
    )
    yield SnapshotResponse(header=response_header, info=info, remaining_bytes=len(payload))
    digest = hashlib.sha256()
    view = memoryview(payload)
    for offset in range(0, len(payload), chunk_bytes):
        blob = bytes(view[offset : offset + chunk_bytes])
        digest.update(blob)
        remaining = len(payload) - offset - len(blob)
        yield SnapshotResponse(header=response_header, blob=blob, remaining_bytes=remaining)
    yield SnapshotResponse(header=response_header, sha256=digest.digest())
