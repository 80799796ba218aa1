"""``kvctl snapshot save | status | restore``: backups, as etcdctl (and etcdutl) make them.

* ``save FILE`` streams a consistent snapshot from a member into ``FILE``,
  atomically, and prints ``Snapshot saved at FILE``.
* ``status FILE`` verifies the whole file and prints its hash (the first 8
  hex digits of the payload's SHA-256; all of it in ``-w json``), revision,
  number of keys and size, as etcdctl's ``snapshot status``::

      3f6c5a0d, 1042, 1000, 128 kB

* ``restore FILE --data-dir D --name N --initial-cluster N=HOST:PORT,...``
  makes ``D`` the data directory of member ``N`` of a new cluster holding the
  backup, and prints the ``kvctl server`` command that starts it.

A damaged backup, a data directory that is not empty, or an unreachable
cluster is one ``Error:`` line and exit code 1; nothing is left half-written.
"""

from __future__ import annotations

import math
from pathlib import Path

import click

from cli.context import Settings, pass_settings
from cli.output import echo_json, render_table
from kvstore.backup import Backup, load_backup, save_backup
from kvstore.config import format_address, parse_initial_cluster
from kvstore.restore import RestoredMember, restore_backup

STATUS_HEADERS = ["HASH", "REVISION", "TOTAL KEYS", "TOTAL SIZE"]


@click.group("snapshot")
def snapshot() -> None:
    """Save a backup of the KV state, check one, or restore one into a new cluster."""


@snapshot.command("save")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--serializable",
    is_flag=True,
    help="Copy the member's state as it is, without first confirming with the "
    "leader that it holds every acknowledged write (works without a leader).",
)
@pass_settings
def save(settings: Settings, file: Path, serializable: bool) -> None:
    """Save a consistent snapshot of the KV state, streamed from a member, to FILE.

    FILE is replaced atomically: it is the complete new backup or left as it was.
    """
    if not file.parent.is_dir():
        raise click.BadParameter(f"directory {file.parent} does not exist", param_hint="'FILE'")
    settings.with_client(lambda client: save_backup(client, file, serializable=serializable))
    click.echo(f"Snapshot saved at {file}")


@snapshot.command("status")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@pass_settings
def status(settings: Settings, file: Path) -> None:
    """Verify the backup FILE and print its hash, revision, keys and size."""
    backup = load_backup(file)
    header = backup.header
    if settings.write_out == "json":
        echo_json(
            {
                "hash": header.sha256.hex(),
                "revision": header.revision,
                "totalKey": header.keys,
                "totalSize": backup.file_size,
                "compactRevision": header.compact_revision,
                "raftIndex": header.raft_index,
                "raftTerm": header.raft_term,
                "clusterId": header.cluster_id,
                "memberId": header.member_id,
                "created": header.created,
            }
        )
        return
    row: list[object] = [
        _short_hash(backup),
        header.revision,
        header.keys,
        human_size(backup.file_size),
    ]
    if settings.write_out == "table":
        click.echo(render_table(STATUS_HEADERS, [row]))
    else:
        click.echo(", ".join(str(value) for value in row))


@snapshot.command("restore")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--name", default="default", show_default=True, help="The new member's name.")
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="The data directory to create (absent or empty).  [default: ./NAME.kvstore]",
)
@click.option(
    "--initial-cluster",
    help="NAME=HOST:PORT,... peer address of every member of the new cluster.  "
    "[default: NAME=127.0.0.1:2380]",
)
@click.option(
    "--initial-cluster-token",
    default="kvstore",
    show_default=True,
    help="The new cluster's token (the members' ids derive from it).",
)
@pass_settings
def restore(
    settings: Settings,
    file: Path,
    name: str,
    data_dir: Path | None,
    initial_cluster: str | None,
    initial_cluster_token: str,
) -> None:
    """Create the data directory of member NAME of a new cluster from the backup FILE.

    Run it for every member with the same FILE, --initial-cluster and token,
    then start each member with ``kvctl server`` and the same flags.
    """
    cluster = parse_initial_cluster(initial_cluster or f"{name}=127.0.0.1:2380")
    target = data_dir if data_dir is not None else Path(f"{name}.kvstore")
    restored = restore_backup(
        file,
        name=name,
        data_dir=target,
        initial_cluster=cluster,
        cluster_token=initial_cluster_token,
    )
    spec = ",".join(f"{n}={format_address(a)}" for n, a in cluster.items())
    if settings.write_out == "json":
        echo_json(_restored_json(restored))
        return
    header = restored.backup.header
    click.echo(
        f"Snapshot restored into {restored.data_dir}: member {name} ({restored.member_id:x}) "
        f"of new cluster {restored.cluster_id:x}, revision {header.revision}, "
        f"{header.keys} keys"
    )
    click.echo(
        f"Start it with: kvctl server --name {name} --data-dir {restored.data_dir} "
        f"--listen-peer {format_address(cluster[name])} --initial-cluster {spec} "
        f"--initial-cluster-token {initial_cluster_token} --listen-client HOST:PORT"
    )


def _restored_json(restored: RestoredMember) -> dict[str, object]:
    header = restored.backup.header
    return {
        "name": restored.name,
        "dataDir": str(restored.data_dir),
        "memberId": restored.member_id,
        "clusterId": restored.cluster_id,
        "revision": header.revision,
        "totalKey": header.keys,
        "raftIndex": restored.raft_index,
        "hash": header.sha256.hex(),
    }


def _short_hash(backup: Backup) -> str:
    return backup.header.sha256[:4].hex()


def human_size(size: int) -> str:
    """``size`` bytes in SI units as etcdctl prints them: ``512 B``, ``2.1 MB``, ``128 kB``."""
    if size < 10:
        return f"{size} B"
    units = ["B", "kB", "MB", "GB", "TB", "PB", "EB"]
    exponent = 0
    while size >= 1000 ** (exponent + 1) and exponent < len(units) - 1:
        exponent += 1
    value = math.floor(size / 1000**exponent * 10 + 0.5) / 10
    return f"{value:.0f} {units[exponent]}" if value >= 10 else f"{value:.1f} {units[exponent]}"


COMMANDS = [snapshot]
