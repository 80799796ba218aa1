"""Serving a snapshot stream: one consistent copy of the KV state, in bounded chunks.

The member takes the copy (:meth:`~kvstore.state_machine.KVStateMachine.capture`)
on its event loop, between two applies, so it is a point-in-time state (that
costs about as much as a Raft snapshot's copy of the same state); then it
encodes the copy a slice of key versions at a time, letting its other tasks
run between slices, so the member keeps serving meanwhile.

The payload (the state machine's snapshot bytes, what a Raft snapshot of the
same state holds) then goes out as :class:`~kvstore.api.SnapshotResponse`
messages: ``info`` first, then chunks of at most ``chunk_bytes``, then the
SHA-256 of the whole payload.  Each message
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

__all__ = ["ENCODE_STEP_VERSIONS", "chunk_bytes_for", "encode", "snapshot_messages"]

ENCODE_STEP_VERSIONS = 4_096
"""Key versions encoded between two checkpoints (a few milliseconds of work)."""


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


async def encode(copy: StateCopy) -> bytes:
    """The copy's snapshot bytes, encoded with a checkpoint every
    :data:`ENCODE_STEP_VERSIONS` key versions."""
    steps = copy.encode_in_steps(ENCODE_STEP_VERSIONS)
    while True:
        try:
            next(steps)
        except StopIteration as done:
            payload: bytes = done.value
            return payload
        await trio.lowlevel.checkpoint()


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
    payload = await encode(copy)
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
