"""Unit tests of the jepsen_like harness: schedule, firewall rules, corruption, clean, CLI."""

from __future__ import annotations

import itertools
import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

from jepsen_like.__main__ import parse_nemeses
from jepsen_like.cluster import member_addresses
from jepsen_like.history import Operation
from jepsen_like.nemesis import NEMESES, make_nemesis, plan_schedule
from jepsen_like.nemesis.corruption import (
    append_partial_record,
    flip_snapshot_bit,
    flip_wal_bit,
    referenced_snapshot,
    tear_wal_tail,
    wal_records,
)
from jepsen_like.nemesis.iptables import (
    Firewall,
    chain_name,
    drop_rules,
    parse_counters,
    unavailable_reason,
)
from jepsen_like.nemesis.partition import blocked_pairs
from jepsen_like.plot import latency_points
from jepsen_like.runner import _outcome_counts
from raft.disk_storage import DiskStorage
from raft.messages import ConfState, Entry, HardState, SnapshotMeta
from raft.snapshot_file import CorruptSnapshotError
from raft.wal import CorruptWALError

CONF = ConfState(voters=(1, 2, 3))
MEMBERS = ["n1", "n2", "n3"]
ROOT = Path(__file__).resolve().parent.parent


# -- Schedule ---------------------------------------------------------------------------


def _nemeses() -> list:  # type: ignore[type-arg]
    return [make_nemesis(name, chain="KVJEPSEN-test") for name in NEMESES]


def test_schedule_is_a_function_of_the_seed() -> None:
    plan_a = plan_schedule(random.Random("7/nemesis"), _nemeses(), MEMBERS, 60)
    plan_b = plan_schedule(random.Random("7/nemesis"), _nemeses(), MEMBERS, 60)
    plan_c = plan_schedule(random.Random("8/nemesis"), _nemeses(), MEMBERS, 60)
    assert plan_a == plan_b
    assert plan_a != plan_c


def test_schedule_is_bounded_and_leaves_quiet_time_between_faults() -> None:
    plan = plan_schedule(random.Random(1), _nemeses(), MEMBERS, 60, quiet=(2, 4), hold=(2, 5))
    assert plan and all(f.at < 60 for f in plan)
    assert plan[0].at == 2.0
    for before, after in itertools.pairwise(plan):
        assert after.at >= before.at + before.hold + 2 - 1e-6
    assert {f.kind for f in plan} <= set(NEMESES)
    assert len(plan_schedule(random.Random(1), _nemeses(), MEMBERS, 10_000, max_faults=7)) == 7
    assert plan_schedule(random.Random(1), [], MEMBERS, 60) == []


def test_every_planned_partition_is_a_real_cut() -> None:
    nemesis = make_nemesis("partition", chain="KVJEPSEN-test")
    rng = random.Random(3)
    shapes = set()
    for _ in range(200):
        members = MEMBERS if rng.random() < 0.5 else [*MEMBERS, "n4", "n5"]
        params = nemesis.choose(rng, members)
        shapes.add(params["shape"])
        if params.get("target") == "leader":
            params["target"] = members[0]
        pairs = blocked_pairs(params, members)
        assert pairs and all(a != b and a in members and b in members for a, b in pairs)
    assert shapes == {"isolate", "majority", "bridge", "one-way"}


def test_partition_shapes_cut_what_they_say() -> None:
    five = ["n1", "n2", "n3", "n4", "n5"]
    isolate = blocked_pairs({"shape": "isolate", "target": "n2"}, MEMBERS)
    assert isolate == {("n2", "n1"), ("n1", "n2"), ("n2", "n3"), ("n3", "n2")}
    majority = blocked_pairs({"shape": "majority", "minority": ["n1", "n4"]}, five)
    assert ("n1", "n2") in majority and ("n5", "n4") in majority
    assert ("n1", "n4") not in majority and ("n2", "n3") not in majority
    bridge = blocked_pairs(
        {"shape": "bridge", "bridge": "n3", "left": ["n1", "n2"], "right": ["n4", "n5"]}, five
    )
    assert not any("n3" in pair for pair in bridge)
    assert ("n1", "n5") in bridge and ("n5", "n1") in bridge and ("n1", "n2") not in bridge
    one_way = blocked_pairs({"shape": "one-way", "target": "n1", "direction": "in"}, MEMBERS)
    assert one_way == {("n2", "n1"), ("n3", "n1")}
    out = blocked_pairs({"shape": "one-way", "target": "n1", "direction": "out"}, MEMBERS)
    assert out == {("n1", "n2"), ("n1", "n3")}


# -- iptables rule building ---------------------------------------------------------------


def test_chain_names_are_per_first_address_and_valid() -> None:
    assert chain_name("127.0.0.11") == "KVJEPSEN-127-0-0-11"
    assert chain_name("127.0.0.31") != chain_name("127.0.0.11")
    with pytest.raises(ValueError):
        chain_name("127.0.0.1; rm -rf /")


def test_drop_rules_are_sorted_deduplicated_and_address_exact() -> None:
    rules = drop_rules("C", [("127.0.0.12", "127.0.0.11"), ("127.0.0.11", "127.0.0.12")] * 2)
    assert rules == [
        ["-A", "C", "-s", "127.0.0.11/32", "-d", "127.0.0.12/32", "-j", "DROP"],
        ["-A", "C", "-s", "127.0.0.12/32", "-d", "127.0.0.11/32", "-j", "DROP"],
    ]
    with pytest.raises(ValueError):
        drop_rules("C", [("127.0.0.11", "127.0.0.11")])


def test_counters_are_parsed_from_iptables_listing() -> None:
    listing = """Chain KVJEPSEN-127-0-0-11 (1 references)
    pkts      bytes target     prot opt in     out     source               destination
      17     1020 DROP       0    --  *      *       127.0.0.11           127.0.0.12
       0        0 DROP       all  --  *      *       127.0.0.12           127.0.0.11
"""
    counters = parse_counters(listing)
    assert [(c.source, c.destination, c.packets) for c in counters] == [
        ("127.0.0.11", "127.0.0.12", 17),
        ("127.0.0.12", "127.0.0.11", 0),
    ]


def test_member_addresses_stay_on_loopback() -> None:
    assert member_addresses("127.0.0.11", 3) == ["127.0.0.11", "127.0.0.12", "127.0.0.13"]
    with pytest.raises(ValueError):
        member_addresses("10.0.0.1", 3)
    with pytest.raises(ValueError):
        member_addresses("127.255.255.253", 3)
    with pytest.raises(ValueError):
        member_addresses("localhost", 3)


# -- Corruption on real storage files -----------------------------------------------------


def _storage_with_snapshot(path: Path) -> None:
    with DiskStorage(path, CONF, keep_entries=10) as disk:
        for i in range(1, 41):
            disk.append([Entry(term=1, index=i, data=f"entry {i}".encode() * 4)])
        disk.set_hard_state(HardState(1, 1, 35))
        meta = SnapshotMeta(index=30, term=1, conf=CONF)
        disk.save_snapshot(meta, b"state machine at 30" * 10)
        disk.append([Entry(term=1, index=41, data=b"the last entry")])


def test_a_flipped_wal_bit_is_refused_naming_the_file_and_restore_heals(tmp_path: Path) -> None:
    _storage_with_snapshot(tmp_path)
    for seed in range(20):
        damage = flip_wal_bit(tmp_path, random.Random(seed))
        assert damage is not None
        with pytest.raises(CorruptWALError) as refused:
            DiskStorage(tmp_path).close()
        assert damage.path.name in str(refused.value)
        damage.restore()
        with DiskStorage(tmp_path) as disk:
            assert disk.last_index() == 41


def test_a_flipped_snapshot_bit_is_refused_naming_the_file(tmp_path: Path) -> None:
    _storage_with_snapshot(tmp_path)
    for seed in range(10):
        damage = flip_snapshot_bit(tmp_path, random.Random(seed))
        assert damage is not None
        with DiskStorage(tmp_path) as disk, pytest.raises(CorruptSnapshotError) as refused:
            disk.snapshot()
        assert damage.path.name in str(refused.value)
        damage.restore()
        with DiskStorage(tmp_path) as disk:
            assert disk.snapshot().data == b"state machine at 30" * 10


def test_a_torn_tail_is_recovered_dropping_only_the_last_record(tmp_path: Path) -> None:
    _storage_with_snapshot(tmp_path)
    segment = sorted((tmp_path / "wal").glob("*.wal"))[-1]
    records_before = wal_records(segment.read_bytes())
    damage = tear_wal_tail(tmp_path, random.Random(5))
    assert damage is not None and damage.mode == "torn-tail"
    assert wal_records(segment.read_bytes()) == records_before[:-1]
    with DiskStorage(tmp_path) as disk:
        assert disk.last_index() == 40  # entry 41 was in the torn record
        assert disk.snapshot().data == b"state machine at 30" * 10


def test_nothing_to_damage_is_reported_not_faked(tmp_path: Path) -> None:
    assert flip_snapshot_bit(tmp_path, random.Random(1)) is None
    assert flip_wal_bit(tmp_path, random.Random(1)) is None
    assert tear_wal_tail(tmp_path, random.Random(1)) is None


# -- History bookkeeping -----------------------------------------------------------------


def test_outcome_counts_and_latency_points() -> None:
    history = [
        Operation(process=0, type="invoke", f="read", time_ns=0),
        Operation(process=1, type="invoke", f="write", time_ns=1_000, value="a"),
        Operation(process=0, type="ok", f="read", time_ns=2_000_000),
        Operation(process=1, type="info", f="write", time_ns=3_000_000, value="a"),
        Operation(process=6, type="invoke", f="write", time_ns=4_000_000, value="b"),
    ]
    counts = _outcome_counts(history)
    assert (counts["total"], counts["ok"], counts["fail"], counts["info"]) == (3, 1, 0, 2)
    assert counts["by_f"] == {"read": {"ok": 1}, "write": {"info": 2}}
    points = latency_points(history)
    assert [(p.outcome, round(p.latency, 6)) for p in points] == [("ok", 0.002), ("info", 0.002999)]


# -- CLI and clean --------------------------------------------------------------------


def test_nemesis_option_parsing() -> None:
    assert parse_nemeses("none") == []
    assert parse_nemeses("kill, pause,kill") == ["kill", "pause"]
    assert parse_nemeses("kill,membership") == ["kill", "membership"]
    with pytest.raises(Exception, match="membership"):  # the error lists the known ones
        parse_nemeses("bogus")


def _cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "jepsen_like", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        check=False,
    )


def test_cli_usage_errors_are_one_line() -> None:
    done = _cli("run", "--workload", "register", "--nemesis", "bogus", "--time", "5", "--out", "x")
    assert done.returncode == 2
    assert done.stderr.startswith("Error:") and "bogus" in done.stderr
    assert "Traceback" not in done.stderr
    help_text = " ".join(_cli("run", "--help").stdout.split())
    assert "membership (remove a member or the leader" in help_text


def test_an_existing_run_directory_is_refused(tmp_path: Path) -> None:
    (tmp_path / "history.jsonl").write_text("")
    done = _cli("run", "-w", "set", "--time", "5", "--out", str(tmp_path))
    assert done.returncode == 1
    assert "already holds a run" in done.stderr and "Traceback" not in done.stderr


needs_iptables = pytest.mark.skipif(
    unavailable_reason() is not None, reason=str(unavailable_reason())
)


@needs_iptables
def test_clean_removes_only_our_chain() -> None:
    ours, theirs = Firewall(chain_name("127.0.0.201")), Firewall(chain_name("127.0.0.221"))
    try:
        ours.install()
        ours.block([("127.0.0.201", "127.0.0.202")])
        theirs.install()
        done = _cli("clean", "--first-address", "127.0.0.201")
        assert done.returncode == 0, done.stderr
        assert f"{ours.chain}: removed" in done.stdout
        assert not ours.exists()
        assert theirs.exists()
        jumps = subprocess.run(["iptables", "-w", "-S", "INPUT"], capture_output=True, text=True)
        assert ours.chain not in jumps.stdout and theirs.chain in jumps.stdout
        again = _cli("clean", "--first-address", "127.0.0.201")
        assert f"{ours.chain}: not present" in again.stdout
    finally:
        ours.remove()
        theirs.remove()


def test_clean_stops_only_recorded_members_still_running_their_command(tmp_path: Path) -> None:
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(61)"])
    try:
        data = tmp_path / "data"
        data.mkdir()
        state = {
            "members": [
                {"name": "n1", "pid": sleeper.pid, "command": sleeper.args},
                # a pid whose command line differs from the recorded one is left alone
                {"name": "n2", "pid": other.pid, "command": ["python", "-m", "cli", "server"]},
            ]
        }
        (data / "cluster.json").write_text(json.dumps(state))
        done = _cli("clean", "--first-address", "127.0.0.201", "--out", str(tmp_path))
        assert done.returncode == 0, done.stderr
        assert f"stopped leftover member n1 (pid {sleeper.pid})" in done.stdout
        assert sleeper.wait(10) == -9
        assert other.poll() is None
    finally:
        for process in (sleeper, other):
            process.kill()
            process.wait()


@needs_iptables
def test_block_puts_back_a_chain_something_else_flushed() -> None:
    firewall = Firewall(chain_name("127.0.0.201"))
    try:
        firewall.install()
        firewall.remove()  # as if another tool had flushed the firewall mid-run
        assert firewall.block([("127.0.0.201", "127.0.0.202")]) == 1
        assert firewall.repairs == 1
        assert [(c.source, c.destination) for c in firewall.counters()] == [
            ("127.0.0.201", "127.0.0.202")
        ]
        jumps = subprocess.run(["iptables", "-w", "-S", "INPUT"], capture_output=True, text=True)
        assert f"-j {firewall.chain}" in jumps.stdout
        firewall.heal()
        assert firewall.counters() == []
    finally:
        firewall.remove()
    assert not firewall.exists()


def test_the_snapshot_flipped_is_the_one_the_wal_refers_to(tmp_path: Path) -> None:
    _storage_with_snapshot(tmp_path)
    referenced = referenced_snapshot(tmp_path)
    assert referenced is not None and referenced.exists()
    # A newer file the WAL never recorded (killed between writing and recording it).
    stray = tmp_path / "snap" / "00000000000000ff-0000000000000001.snap"
    stray.write_bytes(referenced.read_bytes())
    assert referenced_snapshot(tmp_path) == referenced
    for seed in range(5):
        damage = flip_snapshot_bit(tmp_path, random.Random(seed))
        assert damage is not None and damage.path == referenced
        damage.restore()


def test_a_torn_write_is_recovered_losing_nothing_and_restore_undoes_it(tmp_path: Path) -> None:
    _storage_with_snapshot(tmp_path)
    segment = sorted((tmp_path / "wal").glob("*.wal"))[-1]
    before = segment.read_bytes()
    damage = append_partial_record(tmp_path, random.Random(3))
    assert damage is not None and damage.mode == "torn-write"
    assert len(segment.read_bytes()) > len(before)
    damage.restore()
    assert segment.read_bytes() == before
    append_partial_record(tmp_path, random.Random(4))
    with DiskStorage(tmp_path) as disk:
        assert disk.last_index() == 41  # only the partial record is dropped
