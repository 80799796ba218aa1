"""``kvctl member …`` and ``kvctl move-leader`` end to end, on real member processes.

A 3-member process cluster; ``member add --learner`` prints the command line
of the new member, which is started as printed (``--initial-cluster-state
existing``) and catches up; it is promoted once ready, listed, made leader,
then removed (as the leader: leadership is handed over first) and its process
exits by itself.  Bad arguments are one clear line and a non-zero exit.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

from kvstore.testing import free_port, process_cluster

ROOT = Path(__file__).resolve().parent.parent
KVCTL = [sys.executable, "-m", "cli"]


def kvctl(
    endpoints: list[str], *args: str, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*KVCTL, "--endpoints", ",".join(endpoints), "--command-timeout", "10", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=timeout,
    )


def until(check, timeout: float = 30.0, what: str = "") -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_member_add_promote_list_move_leader_remove(tmp_path: Path) -> None:
    with process_cluster(size=3, data_dir=tmp_path / "cluster") as cluster:
        endpoints = list(cluster.endpoints)
        assert kvctl(endpoints, "put", "k", "v").returncode == 0

        listed = kvctl(endpoints, "member", "list", "-w", "json")
        assert listed.returncode == 0, listed.stderr
        assert len(json.loads(listed.stdout)["members"]) == 3

        peer = f"127.0.0.1:{free_port()}"
        client = f"127.0.0.1:{free_port()}"
        added = kvctl(endpoints, "member", "add", "n4", "--peer-urls", peer, "--learner")
        assert added.returncode == 0, added.stderr
        lines = added.stdout.splitlines()
        assert lines[0].startswith("Member ") and "added to cluster" in lines[0]
        assert 'KVCTL_INITIAL_CLUSTER_STATE="existing"' in lines
        new_id = lines[0].split()[1]
        command = shlex.split(lines[-1])
        assert command[:2] == ["kvctl", "server"]
        argv = [*KVCTL, *command[1:], "--tick-ms", "20"]
        argv[argv.index("HOST:PORT")] = client
        argv[argv.index("--data-dir") + 1] = str(tmp_path / "n4")

        # Not started yet: it cannot be promoted.
        refused = kvctl(endpoints, "member", "promote", new_id)
        assert refused.returncode == 1
        assert refused.stderr.startswith("Error: ") and "not ready" in refused.stderr
        assert len(refused.stderr.strip().splitlines()) == 1

        log = (tmp_path / "n4.log").open("w")
        process = subprocess.Popen(argv, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        try:
            endpoints.append(client)

            def promoted() -> bool:
                return kvctl(endpoints, "member", "promote", new_id).returncode == 0

            until(promoted, what="the learner to catch up and be promoted")
            table = kvctl(endpoints, "member", "list", "-w", "table")
            assert table.returncode == 0
            row = next(line for line in table.stdout.splitlines() if "n4" in line)
            assert new_id in row and "started" in row and "false" in row

            moved = kvctl(endpoints, "move-leader", new_id)
            assert moved.returncode == 0, moved.stderr
            assert f"Leadership transferred to {new_id}" in moved.stdout
            removed = kvctl(endpoints, "member", "remove", new_id)
            assert removed.returncode == 0, removed.stderr
            assert process.wait(timeout=30) == 0  # it stops by itself
            listed = kvctl(endpoints[:3], "member", "list")
            assert new_id not in listed.stdout and len(listed.stdout.splitlines()) == 3

            # Gone for good, and bad arguments are one clear line.
            for args in (
                ("member", "remove", new_id),
                ("member", "add", "n1", "--peer-urls", f"127.0.0.1:{free_port()}"),
            ):
                result = kvctl(endpoints[:3], *args)
                assert result.returncode == 1, (args, result.stdout)
                assert result.stderr.startswith("Error: "), result.stderr
                assert len(result.stderr.strip().splitlines()) == 1
                assert "Traceback" not in result.stderr
            for args in (("member", "promote", "xyz"), ("member", "add", "n5")):
                result = kvctl(endpoints[:3], *args)
                assert result.returncode == 2, (args, result.stdout)
                assert "Traceback" not in result.stderr
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
            log.close()
