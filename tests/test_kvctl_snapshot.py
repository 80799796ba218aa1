"""kvctl snapshot save / status / restore, against real member processes.

A 3-member cluster of ``kvctl server`` processes holds some keys; ``kvctl
snapshot save`` backs it up, ``status`` describes the file in each output
format, ``restore`` makes the data directories of a new 3-member cluster, and
``kvctl server`` processes started on them serve every key.  Every failure a
user can cause (a damaged file, a data directory in use, a bad flag, an
unreachable cluster) is one ``Error:`` line and a non-zero exit, with nothing
left half-written.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from cli.main import cli
from cli.snapshot_command import human_size
from kvstore.api import KeyValue
from kvstore.backup import load_backup, read_header
from kvstore.client import SyncClient
from kvstore.local_cluster import ProcessCluster
from kvstore.state_machine import KVStateMachine
from kvstore.testing import free_port, process_cluster


def run(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def assert_one_error_line(result: Result, code: int = 1) -> str:
    assert result.exit_code == code, (result.exit_code, result.output)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: "), lines
    assert "Traceback" not in result.output
    return lines[0]


@dataclass(frozen=True)
class Saved:
    path: Path
    endpoints: str
    kvs: list[KeyValue]
    revision: int
    cluster_id: int


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Saved]:
    """A backup saved with ``kvctl snapshot save`` from a running 3-process cluster."""
    root = tmp_path_factory.mktemp("kvctl-snapshot")
    path = root / "backup.db"
    with process_cluster(3, data_dir=root / "source") as cluster:
        endpoints = ",".join(cluster.endpoints)
        with SyncClient(endpoints) as client:
            for n in range(100):
                client.put(f"key/{n:03d}", f"value {n}")
            client.put("key/000", "overwritten")
            client.delete("key/050")
            everything = client.get(b"\0", from_key=True)
        result = run("--endpoints", endpoints, "snapshot", "save", str(path))
        assert result.exit_code == 0, result.output
        assert result.stdout == f"Snapshot saved at {path}\n"
        yield Saved(
            path,
            endpoints,
            everything.kvs,
            everything.header.revision,
            everything.header.cluster_id,
        )


def test_status_in_every_format(saved: Saved) -> None:
    backup = load_backup(saved.path)
    size = human_size(saved.path.stat().st_size)
    short = backup.header.sha256[:4].hex()

    simple = run("snapshot", "status", str(saved.path))
    assert simple.exit_code == 0, simple.output
    assert simple.stdout == f"{short}, {saved.revision}, {len(saved.kvs)}, {size}\n"

    table = run("snapshot", "status", str(saved.path), "-w", "table").stdout.splitlines()
    assert [c.strip() for c in table[1].strip("|").split("|")] == [
        "HASH",
        "REVISION",
        "TOTAL KEYS",
        "TOTAL SIZE",
    ]
    assert [c.strip() for c in table[3].strip("|").split("|")] == [
        short,
        str(saved.revision),
        str(len(saved.kvs)),
        size,
    ]

    data = json.loads(run("-w", "json", "snapshot", "status", str(saved.path)).stdout)
    assert data["hash"] == backup.header.sha256.hex()
    assert data["revision"] == saved.revision
    assert data["totalKey"] == len(saved.kvs) == 99
    assert data["totalSize"] == saved.path.stat().st_size
    assert data["clusterId"] == saved.cluster_id


def test_human_size() -> None:
    assert human_size(0) == "0 B"
    assert human_size(999) == "999 B"
    assert human_size(1000) == "1.0 kB"
    assert human_size(82_304) == "82 kB"
    assert human_size(2_100_000) == "2.1 MB"


def test_restore_into_a_new_process_cluster(saved: Saved, tmp_path: Path) -> None:
    new = ProcessCluster(tmp_path / "new", 3, base_port=None, tick_ms=20)
    spec = ",".join(f"{m.name}={m.peer_address}" for m in new.members)
    for member in new.members:
        result = run(
            "snapshot",
            "restore",
            str(saved.path),
            "--name",
            member.name,
            "--data-dir",
            str(member.data_dir),
            "--initial-cluster",
            spec,
            "--initial-cluster-token",
            new.token,
        )
        assert result.exit_code == 0, result.output
        first, hint = result.stdout.splitlines()
        assert first.startswith(f"Snapshot restored into {member.data_dir}: member {member.name}")
        assert f"{member.member_id:x}" in first and f"revision {saved.revision}" in first
        assert hint.startswith(f"Start it with: kvctl server --name {member.name} ")
    try:
        new.start()
        with SyncClient(",".join(new.endpoints)) as client:
            everything = client.get(b"\0", from_key=True)
            assert everything.kvs == saved.kvs
            assert everything.header.revision == saved.revision
            assert everything.header.cluster_id != saved.cluster_id
            assert client.put("fresh", "write").header.revision == saved.revision + 1
    finally:
        new.stop()


def test_restore_json(saved: Saved, tmp_path: Path) -> None:
    target = tmp_path / "solo"
    result = run(
        "-w",
        "json",
        "snapshot",
        "restore",
        str(saved.path),
        "--name",
        "solo",
        "--data-dir",
        str(target),
        "--initial-cluster",
        f"solo=127.0.0.1:{free_port()}",
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["name"] == "solo" and data["dataDir"] == str(target)
    assert data["revision"] == saved.revision and data["totalKey"] == len(saved.kvs)
    assert (target / "raft" / "wal").is_dir()


# -- Failures: one line, nothing half-written ---------------------------------------------


def damaged_copy(saved: Saved, directory: Path, how: str) -> Path:
    path = directory / f"{how}.db"
    shutil.copyfile(saved.path, path)
    if how == "flipped":
        _, offset = read_header(path)
        data = bytearray(path.read_bytes())
        data[offset + len(data[offset:]) // 2] ^= 0x40
        path.write_bytes(bytes(data))
    else:
        os.truncate(path, path.stat().st_size - 100)
    return path


@pytest.mark.parametrize("how", ["flipped", "truncated"])
def test_damaged_file_is_one_error_line(saved: Saved, tmp_path: Path, how: str) -> None:
    path = damaged_copy(saved, tmp_path, how)
    line = assert_one_error_line(run("snapshot", "status", str(path)))
    assert f"corrupt backup file {path}" in line
    target = tmp_path / "n1"
    restore = run(
        "snapshot",
        "restore",
        str(path),
        "--name",
        "n1",
        "--data-dir",
        str(target),
        "--initial-cluster",
        f"n1=127.0.0.1:{free_port()}",
        "--initial-cluster-token",
        "t",
    )
    assert "corrupt backup file" in assert_one_error_line(restore)
    assert not target.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]


def test_restore_refusals_are_one_line(saved: Saved, tmp_path: Path) -> None:
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "file").write_text("x")
    peer = f"127.0.0.1:{free_port()}"
    base = ["snapshot", "restore", str(saved.path), "--initial-cluster-token", "t"]
    cases = {
        "not empty": [
            *base,
            "--name",
            "n1",
            "--data-dir",
            str(busy),
            "--initial-cluster",
            f"n1={peer}",
        ],
        "not in the initial cluster": [
            *base,
            "--name",
            "n9",
            "--data-dir",
            str(tmp_path / "n9"),
            "--initial-cluster",
            f"n1={peer}",
        ],
        "is not NAME=HOST:PORT": [
            *base,
            "--name",
            "n1",
            "--data-dir",
            str(tmp_path / "n1"),
            "--initial-cluster",
            "n1",
        ],
        "No such file": [
            "snapshot",
            "restore",
            str(tmp_path / "missing.db"),
            "--data-dir",
            str(tmp_path / "m"),
        ],
    }
    for expected, args in cases.items():
        assert expected in assert_one_error_line(run(*args)), expected
    assert sorted(p.name for p in tmp_path.iterdir()) == ["busy"]
    assert [p.name for p in busy.iterdir()] == ["file"]


def test_restore_refuses_the_old_cluster_identity(saved: Saved, tmp_path: Path) -> None:
    """The source cluster's token and peers would give the same cluster id."""
    source = ProcessCluster(saved.path.parent / "source", 3, base_port=None)
    spec = ",".join(f"{m.name}={m.peer_address}" for m in source.members)
    result = run(
        "snapshot",
        "restore",
        str(saved.path),
        "--name",
        "n1",
        "--data-dir",
        str(tmp_path / "n1"),
        "--initial-cluster",
        spec,
        "--initial-cluster-token",
        source.token,
    )
    assert "--initial-cluster-token" in assert_one_error_line(result)
    assert not (tmp_path / "n1").exists()


def test_save_failures_are_one_line(tmp_path: Path) -> None:
    missing_dir = tmp_path / "nowhere" / "b.db"
    result = run("snapshot", "save", str(missing_dir))
    assert "does not exist" in assert_one_error_line(result, code=2)

    target = tmp_path / "b.db"
    dead = f"127.0.0.1:{free_port()}"
    result = run("--endpoints", dead, "--command-timeout", "0.5", "snapshot", "save", str(target))
    assert_one_error_line(result)
    assert list(tmp_path.iterdir()) == []


def test_status_of_a_missing_file(tmp_path: Path) -> None:
    line = assert_one_error_line(run("snapshot", "status", str(tmp_path / "none.db")))
    assert "none.db" in line


def test_help() -> None:
    for command in ("save", "status", "restore"):
        result = run("snapshot", command, "--help")
        assert result.exit_code == 0 and "Usage:" in result.stdout


def test_sync_client_saves_a_snapshot(saved: Saved) -> None:
    buffer = io.BytesIO()
    with SyncClient(saved.endpoints) as client:
        download = client.save_snapshot(buffer, chunk_bytes=10_000)
    payload = buffer.getvalue()
    assert download.info is not None and len(payload) == download.info.size
    assert download.sha256 == hashlib.sha256(payload).digest()
    assert download.info.revision == saved.revision
    assert KVStateMachine.from_snapshot(payload).status().keys == len(saved.kvs)
