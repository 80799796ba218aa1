"""What a member proposes through Raft: a write request in an envelope.

The envelope names the member that proposed it (``origin``) and that member's
sequence number for it (``seq``), so that when the command is applied the
origin can hand the result to the client request waiting for it.  Every member
applies the same commands in the same order and gets the same results.
"""

from __future__ import annotations

import msgspec

from kvstore.api import (
    CompactionRequest,
    DeleteRangeRequest,
    LeaseGrantRequest,
    LeaseRevokeRequest,
    PutRequest,
    TxnRequest,
)

WriteRequest = (
    PutRequest
    | DeleteRangeRequest
    | TxnRequest
    | CompactionRequest
    | LeaseGrantRequest
    | LeaseRevokeRequest
)
"""Requests that change state and so go through the log."""


class Command(msgspec.Struct, array_like=True):
    origin: int
    seq: int
    request: WriteRequest


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Command)


def encode_command(command: Command) -> bytes:
    return _encoder.encode(command)


def decode_command(data: bytes) -> Command:
    """Raises ``msgspec.DecodeError`` for bytes that are not a command."""
    return _decoder.decode(data)
