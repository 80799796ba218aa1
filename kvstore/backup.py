"""Backup files: a member's snapshot on disk, with a header saying what it holds.

:func:`save_backup` streams a consistent snapshot from a member
(:meth:`kvstore.client.Client.snapshot`) into a file; :func:`load_backup`
reads one back and verifies all of it; :mod:`kvstore.restore` makes a new
cluster's data directories from one.

File format
-----------
::

    b"KVBACKUP"  u16 format version  u32 header length  u32 crc32(header)   (little endian)
    header: msgpack BackupHeader (a map, so fields can be added)
    payload: the state machine's snapshot bytes (KVStateMachine.snapshot)

The header names the cluster and member the backup came from, the Raft index
and term of the last entry applied to the copied state, its revision,
compacted revision and number of keys, the payload's size, format and
SHA-256.  :func:`load_backup` checks the magic, the version, the header's
CRC, the file's size against the header, the payload's SHA-256, and that the
payload decodes into a consistent store whose numbers match the header's:
any damage (a flipped bit, a truncation) is a :class:`CorruptBackupError`.

Durability contract
-------------------
:func:`save_backup` writes ``.<name>.<random>.part`` next to the target,
fsyncs it, renames it over the target and fsyncs the directory: after a
crash or a failure the target is either the complete new backup or whatever
was there before, never a partial file (the temporary file is removed on any
failure).  The header is written first with a zero digest and rewritten in
place once the stream's verified SHA-256 is known; every other field is known
when the stream starts and the digest has a fixed size, so the header's
length does not change.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import struct
import tempfile
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Final

import msgspec

from kvstore.state_machine import SNAPSHOT_FORMAT, KVStateMachine, KVStatus
from raft.wal import fsync_directory

if TYPE_CHECKING:
    from kvstore.client import Client

__all__ = [
    "FORMAT_VERSION",
    "Backup",
    "BackupError",
    "BackupHeader",
    "CorruptBackupError",
    "load_backup",
    "read_header",
    "save_backup",
]

FORMAT_VERSION: Final = 1
_MAGIC: Final = b"KVBACKUP"
_PREFIX: Final = struct.Struct("<8sHII")
"""Magic, format version, header length, CRC-32 of the header."""
_MAX_HEADER_BYTES: Final = 64 * 1024
_DIGEST_BYTES: Final = 32


class BackupError(ValueError):
    """A backup could not be made or used; the message says why."""


class CorruptBackupError(BackupError):
    """A backup file failed verification: it is damaged, truncated or not a backup."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"corrupt backup file {path}: {reason}")
        self.path = path
        self.reason = reason


class BackupHeader(msgspec.Struct, frozen=True, kw_only=True):
    """What a backup file holds (all but ``sha256`` known when the stream starts)."""

    created: float
    """When the save started, in seconds since the epoch."""
    cluster_id: int
    member_id: int
    """The member that served the snapshot."""
    raft_index: int
    """The last log entry applied to the copied state."""
    raft_term: int
    revision: int
    compact_revision: int
    keys: int
    payload_format: int
    """The state machine's snapshot format version."""
    payload_size: int
    sha256: bytes
    """SHA-256 of the payload."""


_header_encoder = msgspec.msgpack.Encoder()
_header_decoder = msgspec.msgpack.Decoder(BackupHeader)


def _encode_header(header: BackupHeader) -> bytes:
    body = _header_encoder.encode(header)
    return _PREFIX.pack(_MAGIC, FORMAT_VERSION, len(body), zlib.crc32(body)) + body


@dataclass(frozen=True)
class Backup:
    """A verified backup file: its header, its payload and its size on disk."""

    path: Path
    header: BackupHeader
    payload: bytes
    file_size: int


# -- Saving ---------------------------------------------------------------------------


async def save_backup(
    client: Client,
    path: str | os.PathLike[str],
    *,
    endpoint: str | None = None,
    serializable: bool = False,
    chunk_bytes: int = 0,
) -> BackupHeader:
    """Save a consistent snapshot from a member (``endpoint``, or any of the
    client's) to the backup file ``path``, atomically (see the module
    docstring).  Returns the header written.

    Raises what :meth:`~kvstore.client.Client.snapshot` raises, or ``OSError``
    if the file cannot be written; ``path`` is then left as it was.
    """
    target = Path(path)
    directory = target.parent
    fd, temporary_name = tempfile.mkstemp(dir=directory, prefix=f".{target.name}.", suffix=".part")
    temporary = Path(temporary_name)
    try:
        with open(fd, "r+b") as file:
            header = await _stream_into(client, file, endpoint, serializable, chunk_bytes)
            file.flush()
            os.fsync(file.fileno())
        os.rename(temporary, target)
    except BaseException:
        with contextlib.suppress(OSError):
            temporary.unlink()
        raise
    fsync_directory(directory)
    return header


async def _stream_into(
    client: Client,
    file: BinaryIO,
    endpoint: str | None,
    serializable: bool,
    chunk_bytes: int,
) -> BackupHeader:
    """Write the header (with a zero digest), then the payload as it arrives,
    then the header again with the verified digest."""
    created = time.time()
    snapshot = client.snapshot(endpoint, serializable=serializable, chunk_bytes=chunk_bytes)
    async with snapshot as download:
        info = download.info
        assert info is not None
        header = BackupHeader(
            created=created,
            cluster_id=download.header.cluster_id,
            member_id=download.header.member_id,
            raft_index=info.raft_index,
            raft_term=info.raft_term,
            revision=info.revision,
            compact_revision=info.compact_revision,
            keys=info.keys,
            payload_format=info.format,
            payload_size=info.size,
            sha256=bytes(_DIGEST_BYTES),
        )
        placeholder = _encode_header(header)
        file.write(placeholder)
        async for chunk in download:
            file.write(chunk)
    header = msgspec.structs.replace(header, sha256=download.sha256)
    final = _encode_header(header)
    if len(final) != len(placeholder):  # pragma: no cover - a fixed-size digest
        raise BackupError("the backup header changed size when its digest was filled in")
    file.seek(0)
    file.write(final)
    return header


# -- Loading --------------------------------------------------------------------------


def read_header(path: str | os.PathLike[str]) -> tuple[BackupHeader, int]:
    """The header of the backup file ``path`` and the payload's offset, after
    checking the magic, version and header CRC and the file's size (not the
    payload: :func:`load_backup` does).  Raises :class:`CorruptBackupError`,
    or ``OSError`` if it cannot be read."""
    file_path = Path(path)
    with open(file_path, "rb") as file:
        header, offset = _read_header(file_path, file)
        size = os.fstat(file.fileno()).st_size
    if size != offset + header.payload_size:
        raise CorruptBackupError(
            file_path,
            f"file is {size} bytes, its header promises {offset + header.payload_size} "
            "(truncated or extended)",
        )
    return header, offset


def _read_header(path: Path, file: BinaryIO) -> tuple[BackupHeader, int]:
    prefix = file.read(_PREFIX.size)
    if len(prefix) < _PREFIX.size:
        raise CorruptBackupError(path, "file is shorter than a backup header")
    magic, version, length, crc = _PREFIX.unpack(prefix)
    if magic != _MAGIC:
        raise CorruptBackupError(path, "not a kvstore backup (bad magic)")
    if version != FORMAT_VERSION:
        raise CorruptBackupError(path, f"unsupported backup format version {version}")
    if length > _MAX_HEADER_BYTES:
        raise CorruptBackupError(path, f"header length {length} is implausible")
    body = file.read(length)
    if len(body) != length:
        raise CorruptBackupError(path, "file ends inside its header")
    if zlib.crc32(body) != crc:
        raise CorruptBackupError(path, "header checksum mismatch")
    try:
        header = _header_decoder.decode(body)
    except msgspec.DecodeError as exc:
        raise CorruptBackupError(path, f"undecodable header: {exc}") from None
    if header.payload_size < 0 or len(header.sha256) != _DIGEST_BYTES:
        raise CorruptBackupError(path, "header holds an impossible size or digest")
    return header, _PREFIX.size + length


def load_backup(path: str | os.PathLike[str]) -> Backup:
    """Read the backup file ``path`` and verify all of it (see the module
    docstring).  Raises :class:`CorruptBackupError` naming what is wrong, or
    ``OSError`` if the file cannot be read."""
    file_path = Path(path)
    header, offset = read_header(file_path)
    with open(file_path, "rb") as file:
        file.seek(offset)
        payload = file.read(header.payload_size + 1)
    if len(payload) != header.payload_size:
        raise CorruptBackupError(file_path, "file changed size while being read")
    digest = hashlib.sha256(payload).digest()
    if digest != header.sha256:
        raise CorruptBackupError(
            file_path,
            f"payload SHA-256 is {digest.hex()}, the header says {header.sha256.hex()}",
        )
    if header.payload_format != SNAPSHOT_FORMAT:
        raise CorruptBackupError(
            file_path, f"payload format {header.payload_format} is not supported"
        )
    try:
        status = KVStateMachine.from_snapshot(payload).status()
    except ValueError as exc:
        raise CorruptBackupError(file_path, str(exc)) from None
    _check_matches(file_path, header, status)
    return Backup(file_path, header, payload, offset + header.payload_size)


def _check_matches(path: Path, header: BackupHeader, status: KVStatus) -> None:
    expected = (header.raft_index, header.revision, header.compact_revision, header.keys)
    found = (status.applied_index, status.revision, status.compact_revision, status.keys)
    if expected != found:
        raise CorruptBackupError(
            path,
            "payload does not match the header (raft index, revision, compacted revision, "
            f"keys: {found} in the payload, {expected} in the header)",
        )
    if header.raft_index < 1:
        raise CorruptBackupError(path, "the copied state has applied no log entry")
