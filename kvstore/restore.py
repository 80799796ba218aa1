"""Restoring a backup: the data directory of one member of a new cluster.

:func:`restore_backup` verifies the backup file (:func:`kvstore.backup.load_backup`)
before writing anything, then makes the data directory a member would have if
the new cluster had already taken a snapshot of the backed-up state: its Raft
storage is opened the way every member bootstraps it
(:func:`kvstore.server.open_storage`, the initial cluster's members as
voters), the backup's payload is saved as a Raft snapshot at the backup's Raft
index (so the state machine, restored from it on start, is at the index the
log continues from) with the new cluster's voters as its membership, and the
hard state says that snapshot is committed.  Run it once per member with the
same backup, ``--initial-cluster`` and token; then ``kvctl server`` with the
same name, data directory, initial cluster and token starts each member, and
the members elect a leader and serve every key at the backup's revision.

Identity.  Member and cluster ids derive from the cluster token and the
initial cluster (:mod:`kvstore.config`), as in etcd.  A restore makes a *new*
cluster: one whose id would equal the backed-up cluster's (same token, same
peer addresses) is refused, with a hint to pick another token, so the new
members can never be mistaken for the old ones by a peer.

Durability contract.  Everything is written into a temporary directory next
to the target, read back and checked, fsynced, then renamed onto the target
(which must not exist or be empty) and the parent directory fsynced: after a
failure or a crash the target is either complete or untouched.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from kvstore.backup import Backup, BackupError, load_backup
from kvstore.config import Address, MemberConfig
from kvstore.membership import MemberTable
from kvstore.server import open_storage
from kvstore.state_machine import KVStateMachine
from raft.disk_storage import DiskStorage
from raft.messages import ConfState, HardState, SnapshotMeta
from raft.wal import fsync_directory

__all__ = ["RESTORED_TERM", "RestoredMember", "restore_backup"]

RESTORED_TERM = 1
"""Term of the restored snapshot and of the new cluster's hard state: the new
cluster's first election is for term 2."""


@dataclass(frozen=True)
class RestoredMember:
    """What :func:`restore_backup` made."""

    name: str
    data_dir: Path
    member_id: int
    cluster_id: int
    raft_index: int
    """Index of the restored snapshot: the new cluster's log continues after it."""
    backup: Backup


def restore_backup(
    path: str | os.PathLike[str],
    *,
    name: str,
    data_dir: str | os.PathLike[str],
    initial_cluster: dict[str, Address],
    cluster_token: str = "kvstore",
) -> RestoredMember:
    """Make ``data_dir`` the data directory of member ``name`` of a new
    cluster (``initial_cluster``: name -> peer address, ``cluster_token``)
    holding the backup ``path`` (see the module docstring).

    Raises :class:`~kvstore.backup.CorruptBackupError` for a damaged backup,
    :class:`~kvstore.backup.BackupError` if ``data_dir`` is not empty or the new
    cluster would have the old one's id, :class:`~kvstore.config.ConfigError`
    for an inconsistent member, ``OSError`` if writing fails; in every case
    ``data_dir`` is left as it was.
    """
    target = Path(data_dir)
    peer = initial_cluster.get(name)
    config = MemberConfig(
        name=name,
        data_dir=target,
        listen_client=peer or ("127.0.0.1", 0),
        listen_peer=peer or ("127.0.0.1", 0),
        initial_cluster=initial_cluster,
        cluster_token=cluster_token,
    )
    _check_empty(target)
    backup = load_backup(path)
    if config.cluster_id == backup.header.cluster_id:
        raise BackupError(
            f"the restored cluster would have the id of the backed-up one ({config.cluster_id:x}): "
            "choose another --initial-cluster-token (and start the members with it)"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.restore-"))
    try:
        _write_member(dataclasses.replace(config, data_dir=scratch), backup)
        _check_empty(target)
        os.rename(scratch, target)  # onto an empty directory too (POSIX)
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    fsync_directory(target.parent)
    return RestoredMember(
        name=name,
        data_dir=target,
        member_id=config.member_id,
        cluster_id=config.cluster_id,
        raft_index=backup.header.raft_index,
        backup=backup,
    )


def _check_empty(target: Path) -> None:
    if not target.exists():
        return
    if not target.is_dir():
        raise BackupError(f"{target} exists and is not a directory")
    if any(target.iterdir()):
        raise BackupError(f"data directory {target} is not empty; refusing to overwrite it")


def _write_member(config: MemberConfig, backup: Backup) -> None:
    """Bootstrap the member's Raft storage and install the backup as its
    snapshot, durably; then read it back."""
    index = backup.header.raft_index
    payload = _without_member_table(backup.payload)
    conf = ConfState(voters=tuple(sorted(config.peer_ids)))
    meta = SnapshotMeta(index=index, term=RESTORED_TERM, conf=conf)
    storage = open_storage(config)
    if not isinstance(storage, DiskStorage):  # pragma: no cover - config has a data_dir
        raise TypeError("a restore needs disk storage")
    with storage:
        if storage.last_index() != 0 or storage.snapshot_meta().index != 0:
            raise BackupError(f"{config.data_dir} already holds Raft state")
        storage.save_snapshot(meta, payload)
        storage.apply_snapshot(meta)
        storage.set_hard_state(HardState(term=RESTORED_TERM, commit=index))
    with DiskStorage(storage.directory, keep_entries=None) as reopened:
        hard_state, stored_conf = reopened.initial_state()
        snapshot = reopened.snapshot()
        first_index = reopened.first_index()
    if (
        snapshot.meta != meta
        or snapshot.data != payload
        or stored_conf != conf
        or hard_state.commit != index
        or first_index != index + 1
    ):
        raise BackupError(f"the restored data directory {config.data_dir} did not read back")
    _fsync_tree(Path(config.data_dir or ""))


def _without_member_table(payload: bytes) -> bytes:
    """The backed-up state with the old cluster's member table dropped: the new
    cluster's members are its initial cluster (each member's bootstrap table),
    and ids removed from the old cluster mean nothing to it."""
    state = KVStateMachine()
    state.restore(payload)
    state.members = MemberTable()
    return state.snapshot()


def _fsync_tree(root: Path) -> None:
    """fsync every directory under ``root`` (files were fsynced as written), so
    the whole tree is durable before it is renamed into place."""
    for directory, _, _ in os.walk(root, topdown=False):
        fsync_directory(Path(directory))
