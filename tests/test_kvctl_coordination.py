"""kvctl's coordination commands: watch, lease, lock, elect and service.

One 3-member cluster (:func:`kvstore.testing.in_process_cluster`, 20 ms
ticks, election timeout 0.4 s, so the minimum lease TTL is 1 s) runs in a
background thread for the module.  One-shot commands run in this process with
click's ``CliRunner``; streaming ones (watch, lock, elect, service
register/watch, lease keep-alive) run as ``python -m cli`` subprocesses whose
output lines are awaited with deadlines, and which are stopped with SIGINT
(only the processes these tests started are ever signalled).  Everything
listens on and connects to 127.0.0.1 only.
"""

from __future__ import annotations

import base64
import json
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import trio
from click.testing import CliRunner, Result

from cli.lease_command import parse_lease_id, time_to_live_text
from cli.main import cli
from cli.watch_command import print_events, watch_response_json
from kvstore.api import (
    Event,
    EventType,
    KeyValue,
    LeaseTimeToLiveResponse,
    ResponseHeader,
    WatchResponse,
)
from kvstore.testing import in_process_cluster

ROOT = Path(__file__).resolve().parent.parent
KVCTL = [sys.executable, "-m", "cli"]
DEADLINE = 15.0
"""Seconds any awaited output may take (generous: two cores, many processes)."""


# -- The cluster, in a background thread --------------------------------------------------


class BackgroundCluster:
    """A 3-member in-process cluster run by trio in a daemon thread."""

    def __init__(self) -> None:
        self.endpoints = ""
        self._ready = threading.Event()
        self._token: trio.lowlevel.TrioToken | None = None
        self._stop: trio.Event | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="cluster", daemon=True)

    def _main(self) -> None:
        try:
            trio.run(self._serve)
        except BaseException as exc:  # reported by start()
            self._error = exc
            self._ready.set()

    async def _serve(self) -> None:
        async with in_process_cluster(3, tick_interval=0.02, election_ticks=20) as cluster:
            self.endpoints = ",".join(cluster.endpoints)
            self._stop = trio.Event()
            self._token = trio.lowlevel.current_trio_token()
            self._ready.set()
            await self._stop.wait()

    def start(self) -> None:
        self._thread.start()
        assert self._ready.wait(30) and self._error is None, self._error

    def stop(self) -> None:
        if self._token is not None and self._stop is not None:
            trio.from_thread.run_sync(self._stop.set, trio_token=self._token)
        self._thread.join(15)


@pytest.fixture(scope="module")
def endpoints() -> Iterator[str]:
    cluster = BackgroundCluster()
    cluster.start()
    yield cluster.endpoints
    cluster.stop()


# -- Running kvctl ------------------------------------------------------------------------


def kvctl(endpoints: str, *args: str) -> Result:
    """A one-shot kvctl command, run in this process."""
    return CliRunner().invoke(cli, ["--endpoints", endpoints, *args], catch_exceptions=False)


def ok(endpoints: str, *args: str) -> str:
    result = kvctl(endpoints, *args)
    assert result.exit_code == 0, (args, result.exit_code, result.output)
    return result.stdout


def revision(endpoints: str) -> int:
    """The cluster's current revision."""
    return int(json.loads(ok(endpoints, "-w", "json", "get", "any"))["header"]["revision"])


def assert_one_error_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), stderr
    return lines[0]


class Kvctl:
    """A streaming ``python -m cli`` subprocess, its output read line by line."""

    def __init__(self, endpoints: str, *args: str) -> None:
        self.args = args
        self.process = subprocess.Popen(
            [*KVCTL, "--endpoints", endpoints, *args],
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self._lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        self.stderr = ""
        self._stderr_done = threading.Event()
        threading.Thread(target=self._read_stdout, daemon=True).start()
        threading.Thread(target=self._read_stderr, daemon=True).start()

    def _read_stdout(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._lines.put(line.rstrip("\n"))
        self._lines.put(None)

    def _read_stderr(self) -> None:
        assert self.process.stderr is not None
        self.stderr = self.process.stderr.read()
        self._stderr_done.set()

    def line(self, timeout: float = DEADLINE) -> str:
        """The next line of output, waiting at most ``timeout`` seconds."""
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"{self.args}: no output in {timeout}s; {self.seen}") from None
        if line is None:
            self._lines.put(None)
            raise AssertionError(f"{self.args} ended; output {self.seen}, stderr {self.stderr}")
        self.seen.append(line)
        return line

    def lines(self, n: int) -> list[str]:
        return [self.line() for _ in range(n)]

    def wait_for(self, predicate: Callable[[str], bool]) -> str:
        """Skip lines until one satisfies ``predicate``; return it."""
        deadline = time.monotonic() + DEADLINE
        while True:
            line = self.line(max(0.01, deadline - time.monotonic()))
            if predicate(line):
                return line

    def rest(self) -> list[str]:
        """Every line still to come (the process must have ended or be ending)."""
        out = []
        while (line := self._lines.get(timeout=DEADLINE)) is not None:
            out.append(line)
        self._lines.put(None)
        return out

    def interrupt(self) -> None:
        """Ctrl-C, to this process only."""
        self.process.send_signal(signal.SIGINT)

    def wait(self, timeout: float = DEADLINE) -> int:
        code = self.process.wait(timeout)
        self._stderr_done.wait(timeout)
        return code

    def stop(self) -> int:
        """SIGINT, then the exit code; it must exit cleanly, without a traceback."""
        self.interrupt()
        code = self.wait()
        assert "Traceback" not in self.stderr, self.stderr
        return code

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@pytest.fixture
def spawn(endpoints: str) -> Iterator[Callable[..., Kvctl]]:
    """Start kvctl subprocesses; whatever is still running at the end is killed."""
    started: list[Kvctl] = []

    def start(*args: str) -> Kvctl:
        process = Kvctl(endpoints, *args)
        started.append(process)
        return process

    yield start
    for process in started:
        process.kill()


def wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE
    while not condition():
        assert time.monotonic() < deadline, f"not {what} within {DEADLINE}s"
        time.sleep(0.05)


# -- Formats, without a cluster -------------------------------------------------------------

HEADER = ResponseHeader(cluster_id=7, member_id=11, revision=9, raft_term=2)


def test_watch_simple_output_is_etcdctls(capsys: pytest.CaptureFixture[str]) -> None:
    old = KeyValue(b"k", 2, 5, 2, b"old")
    new = KeyValue(b"k", 2, 9, 3, b"new")
    gone = KeyValue(b"j", 0, 9, 0)
    response = WatchResponse(
        header=HEADER,
        watch_id=1,
        events=[Event(EventType.PUT, new, old), Event(EventType.DELETE, gone)],
    )
    print_events(response, "simple")
    assert capsys.readouterr().out == "PUT\nk\nold\nk\nnew\nDELETE\nj\n\n"
    print_events(WatchResponse(header=HEADER, watch_id=1), "simple")  # progress: nothing
    assert capsys.readouterr().out == ""


def test_watch_json_is_etcdctls() -> None:
    response = WatchResponse(
        header=HEADER,
        watch_id=1,
        events=[
            Event(EventType.PUT, KeyValue(b"k", 9, 9, 1, b"v")),
            Event(EventType.DELETE, KeyValue(b"j", 0, 9, 0)),
        ],
    )
    assert watch_response_json(response) == {
        "Header": {"cluster_id": 7, "member_id": 11, "revision": 9, "raft_term": 2},
        "Events": [
            {"kv": {"key": "aw==", "create_revision": 9, "mod_revision": 9, "version": 1,
                    "value": "dg=="}},
            {"type": 1, "kv": {"key": "ag==", "mod_revision": 9}},
        ],
        "CompactRevision": 0,
        "Canceled": False,
        "Created": False,
    }  # fmt: skip


def test_lease_ids_and_timetolive_lines() -> None:
    assert parse_lease_id("694d77aa9e38260f") == 0x694D77AA9E38260F
    assert parse_lease_id("0x1F") == 31
    live = LeaseTimeToLiveResponse(header=HEADER, id=31, ttl=7, granted_ttl=10, keys=[b"a", b"b"])
    assert time_to_live_text(live, 31, keys=False) == (
        "lease 000000000000001f granted with TTL(10s), remaining(7s)"
    )
    assert time_to_live_text(live, 31, keys=True).endswith(", attached keys([a b])")
    gone = LeaseTimeToLiveResponse(header=HEADER, id=31, ttl=-1)
    assert time_to_live_text(gone, 31, keys=True) == "lease 000000000000001f already expired"


def test_help_of_every_new_command() -> None:
    for args in (
        ["watch"],
        ["lease", "grant"],
        ["lease", "revoke"],
        ["lease", "timetolive"],
        ["lease", "list"],
        ["lease", "keep-alive"],
        ["lock"],
        ["elect"],
        ["service", "register"],
        ["service", "list"],
        ["service", "watch"],
    ):
        result = CliRunner().invoke(cli, [*args, "--help"])
        assert result.exit_code == 0 and "Usage:" in result.stdout, (args, result.output)


# -- watch --------------------------------------------------------------------------------------


def test_watch_prints_puts_and_deletes_like_etcdctl(
    endpoints: str, spawn: Callable[..., Kvctl]
) -> None:
    ok(endpoints, "put", "w1/a", "1")
    start = revision(endpoints)  # replayed from history: no race with the watch's creation
    watch = spawn("watch", "w1/", "--prefix", "--rev", str(start))
    with_prev = spawn("watch", "w1/a", "--prev-kv", "--rev", str(start))
    assert watch.lines(3) == ["PUT", "w1/a", "1"]
    ok(endpoints, "put", "w1/b", "2")
    assert watch.lines(3) == ["PUT", "w1/b", "2"]  # a live event
    ok(endpoints, "put", "w1/a", "3")
    ok(endpoints, "del", "w1/a")
    assert watch.lines(6) == ["PUT", "w1/a", "3", "DELETE", "w1/a", ""]
    # With --prev-kv, the previous key and value come before the new ones.
    assert with_prev.lines(3) == ["PUT", "w1/a", "1"]  # created: there was no previous
    assert with_prev.lines(5) == ["PUT", "w1/a", "1", "w1/a", "3"]
    assert with_prev.lines(5) == ["DELETE", "w1/a", "3", "w1/a", ""]
    assert watch.stop() == 0 and with_prev.stop() == 0
    assert watch.rest() == []


def test_watch_json_one_object_per_line(endpoints: str, spawn: Callable[..., Kvctl]) -> None:
    ok(endpoints, "put", "w2/a", "x")
    start = revision(endpoints)
    ok(endpoints, "del", "w2/a")
    watch = spawn("-w", "json", "watch", "w2/a", "--rev", str(start))
    # One object per response; a response replayed from history may hold
    # several revisions' events.
    responses = [json.loads(watch.line())]
    while sum(len(r["Events"]) for r in responses) < 2:
        responses.append(json.loads(watch.line()))
    events = [event for r in responses for event in r["Events"]]
    assert responses[-1]["Header"]["revision"] >= start + 1
    assert events == [
        {
            "kv": {
                "key": base64.b64encode(b"w2/a").decode(),
                "create_revision": start,
                "mod_revision": start,
                "version": 1,
                "value": base64.b64encode(b"x").decode(),
            }
        },
        {"type": 1, "kv": {"key": base64.b64encode(b"w2/a").decode(), "mod_revision": start + 1}},
    ]
    first = responses[0]
    assert (first["CompactRevision"], first["Canceled"], first["Created"]) == (0, False, False)
    assert watch.stop() == 0


def test_watch_from_a_compacted_revision_is_one_error_line(endpoints: str) -> None:
    ok(endpoints, "put", "w3/a", "1")
    ok(endpoints, "put", "w3/a", "2")
    compacted = revision(endpoints)
    ok(endpoints, "compaction", str(compacted))
    result = subprocess.run(
        [*KVCTL, "--endpoints", endpoints, "watch", "w3/a", "--rev", str(compacted - 1)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=DEADLINE,
        check=False,
    )
    assert result.returncode == 1
    line = assert_one_error_line(result.stderr)
    assert f"history compacted through revision {compacted}" in line


# -- lease --------------------------------------------------------------------------------------


def test_lease_grant_put_timetolive_list_revoke(endpoints: str) -> None:
    granted = ok(endpoints, "lease", "grant", "60").strip()
    words = granted.split()
    assert words[0] == "lease" and granted.endswith("granted with TTL(60s)"), granted
    lease = words[1]
    assert len(lease) == 16 and int(lease, 16) > 0
    ok(endpoints, "put", "l1/a", "1", "--lease", lease)
    ok(endpoints, "put", "l1/b", "2", "--lease", lease)
    ttl = ok(endpoints, "lease", "timetolive", lease).strip()
    assert ttl.startswith(f"lease {lease} granted with TTL(60s), remaining(") and ttl.endswith("s)")
    assert 55 <= int(ttl.rsplit("(", 1)[1].rstrip("s)")) <= 60
    with_keys = ok(endpoints, "lease", "timetolive", lease, "--keys").strip()
    assert with_keys.endswith(", attached keys([l1/a l1/b])"), with_keys
    listed = ok(endpoints, "lease", "list").splitlines()
    assert listed[0] == f"found {len(listed) - 1} leases" and lease in listed[1:]
    as_json = json.loads(ok(endpoints, "-w", "json", "lease", "timetolive", lease, "--keys"))
    assert as_json["ID"] == int(lease, 16) and as_json["grantedTTL"] == 60
    assert ok(endpoints, "lease", "revoke", lease) == f"lease {lease} revoked\n"
    assert ok(endpoints, "lease", "timetolive", lease) == f"lease {lease} already expired\n"
    assert ok(endpoints, "get", "l1/", "--prefix", "--count-only") == "0\n"
    again = kvctl(endpoints, "lease", "revoke", lease)
    assert again.exit_code == 1 and "not found" in assert_one_error_line(again.stderr)
    bad = kvctl(endpoints, "put", "l1/c", "3", "--lease", "xyz")
    assert bad.exit_code == 2 and "hexadecimal" in assert_one_error_line(bad.stderr)


def test_lease_keep_alive(endpoints: str, spawn: Callable[..., Kvctl]) -> None:
    ttl = 2
    lease = ok(endpoints, "lease", "grant", str(ttl)).split()[1]
    granted = time.monotonic()
    ok(endpoints, "put", "l2/a", "1", "--lease", lease)
    keeper = spawn("lease", "keep-alive", lease)
    renewal = f"lease {lease} keepalived with TTL({ttl})"
    # Renewals (one every third of the TTL) until the TTL is well past:
    # the lease and its key outlive it.
    while time.monotonic() - granted < ttl * 1.5:
        assert keeper.line() == renewal
    assert ok(endpoints, "get", "l2/a", "--print-value-only") == "1\n"
    assert keeper.stop() == 0
    # Revoked under a second keeper: it says so as etcdctl does and exits 1.
    second = spawn("lease", "keep-alive", lease)
    assert second.line() == renewal
    ok(endpoints, "lease", "revoke", lease)
    assert second.wait_for(lambda line: line != renewal) == f"lease {lease} expired or revoked."
    assert second.wait() == 1


# -- lock ---------------------------------------------------------------------------------------

MARKERS = (
    'echo "begin $KVCTL_LOCK_REV $(date +%s.%N)" >> "$0";'
    " sleep 0.25;"
    ' echo "end $KVCTL_LOCK_REV $(date +%s.%N)" >> "$0"'
)
"""A command appending begin/end markers with its fencing token and times to the file $0."""


def test_contending_lock_commands_never_overlap(
    endpoints: str, spawn: Callable[..., Kvctl], tmp_path: Path
) -> None:
    log = tmp_path / "markers"
    log.touch()
    runs_each = 2
    outcomes: list[tuple[int, str]] = []

    def contender() -> None:
        for _ in range(runs_each):
            process = spawn("lock", "l3", "sh", "-c", MARKERS, str(log))
            outcomes.append((process.wait(), process.stderr))

    threads = [threading.Thread(target=contender) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert outcomes == [(0, "")] * (2 * runs_each)
    lines = [line.split() for line in log.read_text().splitlines()]
    assert len(lines) == 2 * 2 * runs_each, lines
    previous_end, previous_rev = 0.0, 0
    for begin, end in zip(lines[::2], lines[1::2], strict=True):
        assert begin[0] == "begin" and end[0] == "end" and begin[1] == end[1], lines
        rev, started, ended = int(begin[1]), float(begin[2]), float(end[2])
        assert rev > previous_rev, f"fencing tokens must increase: {lines}"
        assert started >= previous_end, f"overlapping holders: {lines}"
        previous_end, previous_rev = ended, rev


def test_lock_passes_the_exit_code_and_the_environment(endpoints: str) -> None:
    result = subprocess.run(
        [*KVCTL, "--endpoints", endpoints, "lock", "l4", "sh", "-c",
         'echo "$KVCTL_LOCK_KEY $KVCTL_LOCK_REV"; exit 3'],
        cwd=ROOT, capture_output=True, text=True, timeout=DEADLINE, check=False,
    )  # fmt: skip
    assert result.returncode == 3, result.stderr
    key, rev = result.stdout.split()
    assert key.startswith("l4/") and int(rev) > 0
    assert ok(endpoints, "get", "l4/", "--prefix", "--count-only") == "0\n"  # released
    missing = subprocess.run(
        [*KVCTL, "--endpoints", endpoints, "lock", "l4", "no-such-command-here"],
        cwd=ROOT, capture_output=True, text=True, timeout=DEADLINE, check=False,
    )  # fmt: skip
    assert missing.returncode == 127  # as a shell says "command not found"
    assert "cannot run no-such-command-here" in assert_one_error_line(missing.stderr)
    assert ok(endpoints, "get", "l4/", "--prefix", "--count-only") == "0\n"


def test_lock_held_until_ctrl_c_keeps_the_next_one_waiting(
    endpoints: str, spawn: Callable[..., Kvctl], tmp_path: Path
) -> None:
    ran = tmp_path / "ran"
    holder = spawn("lock", "l5")
    key = holder.line()
    assert key.startswith("l5/")
    waiter = spawn("lock", "l5", "sh", "-c", 'echo "$KVCTL_LOCK_REV" > "$0"', str(ran))
    # Once the waiter's key is queued behind the holder's, it must not run.
    wait_until(
        lambda: ok(endpoints, "get", "l5/", "--prefix", "--count-only") == "2\n",
        "two contenders queued",
    )
    assert not ran.exists() and waiter.process.poll() is None
    holder_rev = json.loads(ok(endpoints, "-w", "json", "get", key))["kvs"][0]["create_revision"]
    assert holder.stop() == 0
    assert waiter.wait() == 0, waiter.stderr
    assert int(ran.read_text()) > holder_rev


def test_a_lost_lock_terminates_the_command(endpoints: str, spawn: Callable[..., Kvctl]) -> None:
    holder = spawn("lock", "--ttl", "2", "l6", "sh", "-c", 'echo "$KVCTL_LOCK_KEY"; exec sleep 60')
    lease = holder.line().rsplit("/", 1)[1]
    ok(endpoints, "lease", "revoke", lease)  # as if the session had expired
    assert holder.wait() == 1
    assert "lock lost" in holder.stderr and "terminating sh" in holder.stderr, holder.stderr


# -- elect --------------------------------------------------------------------------------------


def candidates(endpoints: str, name: str) -> int:
    return int(ok(endpoints, "get", f"{name}/", "--prefix", "--count-only"))


def test_elect_listen_sees_each_new_leader(endpoints: str, spawn: Callable[..., Kvctl]) -> None:
    first = spawn("elect", "e1", "alpha")
    first_key = first.line()
    assert first_key.startswith("e1/") and first.line() == "alpha"
    listener = spawn("elect", "--listen", "e1")
    assert listener.lines(2) == [first_key, "alpha"]
    second = spawn("elect", "--ttl", "2", "e1", "beta")
    wait_until(lambda: candidates(endpoints, "e1") == 2, "the second candidate queued")
    third = spawn("elect", "e1", "gamma")
    wait_until(lambda: candidates(endpoints, "e1") == 3, "the third candidate queued")
    # Ctrl-C: the leader resigns and the next candidate takes over.
    assert first.stop() == 0
    second_key = listener.line()
    assert listener.line() == "beta" and second.lines(2) == [second_key, "beta"]
    # Killed: its lease expires after its TTL, and the last candidate leads.
    second.kill()
    third_key = listener.line()
    assert listener.line() == "gamma" and third.lines(2) == [third_key, "gamma"]
    assert len({first_key, second_key, third_key}) == 3
    assert third.stop() == 0 and listener.stop() == 0


# -- service ------------------------------------------------------------------------------------


def test_service_register_list_watch(endpoints: str, spawn: Callable[..., Kvctl]) -> None:
    watcher = spawn("service", "watch", "svc1")
    web1 = spawn("service", "register", "svc1", "127.0.0.1:8001", "--meta", '{"zone":"a"}')
    assert web1.line().startswith("registered 127.0.0.1:8001 at 127.0.0.1:8001 in service svc1")
    web2 = spawn("service", "register", "svc1", "127.0.0.1:8002", "--id", "web2")
    assert web2.line().startswith("registered web2 at 127.0.0.1:8002")
    assert ok(endpoints, "service", "list", "svc1").splitlines() == [
        '127.0.0.1:8001, 127.0.0.1:8001, {"zone":"a"}',
        "web2, 127.0.0.1:8002, {}",
    ]
    listed = json.loads(ok(endpoints, "-w", "json", "service", "list", "svc1"))
    assert [(i["id"], i["address"], i["metadata"]) for i in listed] == [
        ("127.0.0.1:8001", "127.0.0.1:8001", {"zone": "a"}),
        ("web2", "127.0.0.1:8002", {}),
    ]
    # The watcher may have started before or after either registration:
    # either way it reports each instance added exactly once.
    added = sorted(watcher.lines(2))
    assert added == [
        'added 127.0.0.1:8001 127.0.0.1:8001 {"zone":"a"}',
        "added web2 127.0.0.1:8002 {}",
    ]
    assert web2.stop() == 0
    assert watcher.line() == "removed web2 127.0.0.1:8002 {}"
    assert ok(endpoints, "service", "list", "svc1").splitlines() == [
        '127.0.0.1:8001, 127.0.0.1:8001, {"zone":"a"}'
    ]
    assert web1.stop() == 0 and watcher.stop() == 0


def test_service_register_refuses_bad_metadata(endpoints: str) -> None:
    for meta in ("{not json", "[1, 2]"):
        result = kvctl(endpoints, "service", "register", "svc2", "127.0.0.1:9", "--meta", meta)
        assert result.exit_code == 2
        assert "--meta" in assert_one_error_line(result.stderr)


@pytest.fixture(autouse=True)
def _no_stray_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """kvctl must not pick up endpoints from the environment of the test run."""
    monkeypatch.delenv("KVCTL_ENDPOINTS", raising=False)
