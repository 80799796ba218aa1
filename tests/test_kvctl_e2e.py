"""kvctl end to end: a real ``kvctl cluster up`` in a subprocess, on free loopback ports.

One cluster serves the module, in this order: kvctl commands as a user types
them (``python -m cli ...``); SIGKILL of the leader's process in the middle of
concurrent writes, then a restart of that member from its recorded command
line, with every acknowledged write still there (also on the restarted
member); SIGINT stopping every member cleanly; and ``cluster up`` on the same
data directory bringing the data back.  Short Raft ticks keep it quick.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from kvstore.client import Client, KvError, OutcomeUnknown
from kvstore.local_cluster import ProcessCluster, free_base_port, query_status, read_state

ROOT = Path(__file__).resolve().parent.parent
KVCTL = [sys.executable, "-m", "cli"]
TICK_MS = "20"
START_TIMEOUT = 30.0


class ClusterUp:
    """A ``kvctl cluster up`` subprocess and what it printed."""

    def __init__(self, data_dir: Path, base_port: int) -> None:
        self.data_dir = data_dir
        self.base_port = base_port
        self.lines: queue.Queue[str] = queue.Queue()
        self.output: list[str] = []
        self.process: subprocess.Popen[str] | None = None
        self.extra: list[subprocess.Popen[bytes]] = []
        """Members the test restarted itself (cluster up does not own them)."""

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                *KVCTL,
                "cluster",
                "up",
                "--data-dir",
                str(self.data_dir),
                "--base-port",
                str(self.base_port),
                "--tick-ms",
                TICK_MS,
            ],
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        threading.Thread(target=self._read, args=(self.process,), daemon=True).start()
        self.wait_for("Ctrl-C stops the cluster", START_TIMEOUT)

    def _read(self, process: subprocess.Popen[str]) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            self.lines.put(line.rstrip("\n"))

    def wait_for(self, text: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                break
            self.output.append(line)
            if text in line:
                return line
        raise AssertionError(f"no {text!r} within {timeout}s; output: {self.output}")

    @property
    def endpoints(self) -> str:
        return ",".join(f"127.0.0.1:{self.base_port + 10 * i}" for i in range(3))

    def members(self) -> list[dict[str, Any]]:
        members: list[dict[str, Any]] = read_state(self.data_dir)["members"]
        return members

    def stop(self, sig: int = signal.SIGINT, timeout: float = 20.0) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            return self.process.wait(timeout)
        finally:
            self.drain()

    def drain(self) -> None:
        while not self.lines.empty():
            self.output.append(self.lines.get_nowait())

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def kvctl(endpoints: str, *args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*KVCTL, "--endpoints", endpoints, *args],
        cwd=ROOT,
        input=input,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def ok(endpoints: str, *args: str, input: str | None = None) -> str:
    result = kvctl(endpoints, *args, input=input)
    assert result.returncode == 0, (args, result.stdout, result.stderr)
    return result.stdout


def alive(pid: int) -> bool:
    """True while ``pid`` is a live (not zombie) process."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cluster-up")


@pytest.fixture(scope="module")
def up(data_dir: Path) -> Iterator[ClusterUp]:
    cluster = ClusterUp(data_dir, free_base_port(3))
    cluster.start()
    yield cluster
    for process in cluster.extra:
        if process.poll() is None:
            process.terminate()
            process.wait(10)
    if cluster.process is not None and cluster.process.poll() is None:
        try:
            cluster.stop()
        except subprocess.TimeoutExpired:
            cluster.kill()


def test_kvctl_commands(up: ClusterUp) -> None:
    ep = up.endpoints
    assert ok(ep, "put", "greeting", "hello") == "OK\n"
    assert ok(ep, "get", "greeting") == "greeting\nhello\n"
    assert json.loads(ok(ep, "-w", "json", "get", "greeting"))["kvs"][0]["value"] == "aGVsbG8="
    txn = 'value("greeting") = "hello"\n\nput greeting bye\n\nget greeting\n\n'
    assert ok(ep, "txn", input=txn) == "SUCCESS\n\nOK\n"
    assert ok(ep, "del", "greeting") == "1\n"
    status = ok(ep, "endpoint", "status").splitlines()
    assert len(status) == 3 and sum(", true, " in line for line in status) == 1
    assert ok(ep, "endpoint", "health").count("is healthy") == 3


def test_sigkill_leader_mid_load_keeps_every_acknowledged_write(up: ClusterUp) -> None:
    members = {m["name"]: m for m in up.members()}
    acked: dict[str, str] = {}
    killed: dict[str, Any] = {}

    async def load() -> None:
        async with Client(up.endpoints.split(","), request_timeout=5.0) as client:

            async def writer(w: int) -> None:
                deadline = trio.current_time() + 12.0
                for i in range(150):
                    if trio.current_time() > deadline:
                        return
                    key, value = f"load/{w}/{i:04d}", f"v{i}"
                    try:
                        await client.put(key, value)
                    except OutcomeUnknown:
                        continue  # may or may not be there: not acknowledged
                    except KvError:
                        await trio.sleep(0.05)
                        continue
                    acked[key] = value

            async def killer() -> None:
                leader = None
                with trio.fail_after(20):
                    while len(acked) < 100:
                        await trio.sleep(0.005)
                    while leader is None:
                        statuses = {
                            n: query_status(str(m["client"]), 1.0) for n, m in members.items()
                        }
                        leaders = [
                            n for n, s in statuses.items() if s and s.leader == s.header.member_id
                        ]
                        leader = leaders[0] if leaders else None
                        await trio.sleep(0.01)
                os.kill(int(members[leader]["pid"]), signal.SIGKILL)
                killed.update(members[leader])
                killed["acked_before"] = len(acked)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(killer)
                for w in range(4):
                    nursery.start_soon(writer, w)

    trio.run(load)
    assert killed, "the leader was never killed"
    assert len(acked) > int(killed["acked_before"]) + 50, "writes did not go on after the kill"
    up.wait_for(f"member {killed['name']} exited (killed by SIGKILL)", 10)

    # Restart the killed member from its recorded command line.
    command = [str(part) for part in killed["command"]]
    with Path(killed["log"]).open("ab") as log:
        up.extra.append(subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT))

    async def verify() -> None:
        async with Client(up.endpoints.split(","), request_timeout=10.0) as client:
            response = await client.get("load/", prefix=True)
            found = {kv.key.decode(): kv.value.decode() for kv in response.kvs}
            assert {k: found.get(k) for k in acked} == acked
            revision = response.header.revision
        endpoint = str(killed["client"])
        with trio.fail_after(20):
            while (s := query_status(endpoint, 1.0)) is None or s.revision < revision:
                await trio.sleep(0.05)
        async with Client([endpoint], request_timeout=10.0) as client:
            local = await client.get("load/", prefix=True, serializable=True)
            found = {kv.key.decode(): kv.value.decode() for kv in local.kvs}
            assert {k: found.get(k) for k in acked} == acked

    trio.run(verify)
    assert ok(up.endpoints, "get", "load/", "--prefix", "--count-only").strip() == str(
        len(
            json.loads(ok(up.endpoints, "-w", "json", "get", "load/", "--prefix", "--keys-only"))[
                "kvs"
            ]
        )
    )


def test_sigint_stops_every_member_and_cluster_up_again_keeps_the_data(
    up: ClusterUp, data_dir: Path
) -> None:
    count = ok(up.endpoints, "get", "load/", "--prefix", "--count-only").strip()
    assert int(count) >= 100
    pids = [int(str(m["pid"])) for m in up.members() if m["pid"] is not None]
    assert up.stop(signal.SIGINT) == 0, up.output
    assert any("cluster stopped" in line for line in up.output), up.output
    assert not [pid for pid in pids if alive(pid)]
    for process in up.extra:
        process.send_signal(signal.SIGTERM)
        assert process.wait(10) == 0
    for log in data_dir.glob("n*.log"):
        assert "stopped" in log.read_text().splitlines()[-1], log

    again = ClusterUp(data_dir, up.base_port)
    again.start()
    try:
        assert ok(again.endpoints, "get", "load/", "--prefix", "--count-only").strip() == count
        assert again.stop(signal.SIGTERM) == 0, again.output
    finally:
        again.kill()


def test_process_cluster_kill_restart_and_stop(tmp_path: Path) -> None:
    """The library under ``cluster up`` (and the test fixtures): kill, restart, stop."""
    cluster = ProcessCluster(tmp_path, 3, base_port=None, tick_ms=int(TICK_MS))
    leader = cluster.start(START_TIMEOUT)
    try:
        assert len(cluster.endpoints) == 3 and cluster.leader() == leader
        pids = {m.name: m.pid for m in cluster.members}
        assert all(pids.values())
        assert cluster.kill(leader) == -signal.SIGKILL
        assert cluster.member(leader).pid is None and not alive(pids[leader] or 0)
        new_leader = cluster.wait_for_leader(10)
        assert new_leader != leader
        assert cluster.exited() == {}  # an exit the cluster caused is no surprise
        cluster.restart(leader)
        assert cluster.wait_for_leader(10) in cluster.names
        assert cluster.member(leader).pid not in (None, pids[leader])
        state = read_state(tmp_path)
        assert {m["name"]: m["pid"] for m in state["members"]}[leader] == cluster.member(leader).pid
    finally:
        codes = cluster.stop()
    assert codes == dict.fromkeys(cluster.names, 0)
    assert not [pid for pid in pids.values() if pid and alive(pid)]
    assert cluster.stop() == {}  # idempotent
