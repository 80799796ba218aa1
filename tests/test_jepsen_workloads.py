"""The watch, lock and lease workloads, end to end through the workload contract.

A small driver plays the run loop's part against an in-process cluster
(:func:`kvstore.testing.in_process_cluster`): setup, ``concurrency`` workers
until ``stop_at`` while a fault kills and restarts a member, heal (every
member running, a leader), final, check.  Each run must be valid; then the
run's own records are tampered with (an event dropped or repeated, an
overlapping fenced section, a key seen long after its lease) and the same
``check`` must say invalid -- so a valid verdict is not an accident of a
checker that cannot fire.
"""

from __future__ import annotations

import functools
import random
from collections import Counter
from collections.abc import Awaitable, Callable

import msgspec
import trio

from jepsen_like.checkers import Event, FencedEntry
from jepsen_like.history import Operation
from jepsen_like.workload import CheckerReport, Recorder, RunContext, Workload
from jepsen_like.workloads import make_workload
from jepsen_like.workloads.lease import LeaseWorkload
from jepsen_like.workloads.lock import LockWorkload, pad
from jepsen_like.workloads.watch import WatchWorkload
from kvstore.testing import InProcessCluster, in_process_cluster

HOST = "127.0.0.31"

Fault = Callable[[InProcessCluster, float], Awaitable[None]]


async def kill_and_restart(cluster: InProcessCluster, duration: float) -> None:
    """Kill the member every client connects to first (n1), then the leader if
    that is another member; restart both on their data dirs."""
    await trio.sleep(duration / 4)
    await cluster.kill("n1")
    await trio.sleep(duration / 4)
    await cluster.restart("n1")
    await cluster.leader()
    await trio.sleep(duration / 8)
    leader = await cluster.leader()
    await cluster.kill(leader)
    await trio.sleep(duration / 8)
    await cluster.restart(leader)


async def drive(
    workload: Workload,
    cluster: InProcessCluster,
    *,
    duration: float,
    concurrency: int = 3,
    fault: Fault | None = kill_and_restart,
    before_final: Callable[[RunContext], Awaitable[None]] | None = None,
) -> tuple[dict[str, CheckerReport], list[Operation]]:
    """Play the run loop: setup, workers (and the fault), heal, final, check."""
    recorder = Recorder()
    ctx = RunContext(
        endpoints=cluster.endpoints,
        recorder=recorder,
        rng=random.Random(7),
        concurrency=concurrency,
        stop_at=0.0,
        new_client=lambda: cluster.client(request_timeout=1.0, connect_timeout=0.5),
        request_timeout=1.0,
    )
    await workload.setup(ctx)
    ctx.stop_at = trio.current_time() + duration
    with trio.fail_after(duration + 10):
        async with trio.open_nursery() as nursery:
            for process in range(concurrency):
                nursery.start_soon(workload.worker, ctx, process)
            if fault is not None:
                nursery.start_soon(fault, cluster, duration)
    for name in cluster.names:  # heal
        if name not in cluster.members:
            await cluster.restart(name)
    await cluster.leader()
    if before_final is not None:
        await before_final(ctx)
    with trio.fail_after(30):
        await workload.final(ctx)
    return workload.check(recorder.history), recorder.history


def trio_test(fn: Callable[[], Awaitable[None]]) -> Callable[[], None]:
    """A plain test function that runs ``fn`` under trio."""

    @functools.wraps(fn)
    def run() -> None:
        trio.run(fn)

    return run


def assert_valid(reports: dict[str, CheckerReport]) -> None:
    for name, report in reports.items():
        assert report.valid, f"{name}: {report.anomalies[:10]}\n{report.details}"


def counts(history: list[Operation]) -> Counter[tuple[str, str]]:
    return Counter((e.f, e.type) for e in history)


def test_the_registry_builds_the_three_workloads() -> None:
    assert isinstance(make_workload("watch"), WatchWorkload)
    assert isinstance(make_workload("lock", ttl=3), LockWorkload)
    assert isinstance(make_workload("lease", ttl=1), LeaseWorkload)


# --------------------------------------------------------------------------
# watch


@trio_test
async def test_watchers_see_the_committed_sequence_through_kills() -> None:
    workload = WatchWorkload(watchers_per_worker=2)
    async with in_process_cluster(3, host=HOST) as cluster:
        reports, history = await drive(workload, cluster, duration=5.0)
    assert_valid(reports)
    c = reports["watch"].counts
    assert c["watchers"] == 6 and c["resumes"] >= 1, c
    assert c["committed_events"] > 50 and c["events_delivered"] >= 3 * c["committed_events"]
    ops = counts(history)
    assert ops["write", "ok"] > 50 and ops["txn", "ok"] > 0 and ops["delete", "ok"] > 0
    assert reports["watch-reference"].counts["committed_events"] == c["committed_events"]

    # Tampered: one watcher misses an event, another gets one twice.
    logs = [w.log for w in workload.watchers]
    victim = next(r for r in logs[0].responses if len(r) == 1)
    logs[0].responses.remove(victim)
    logs[1].responses.insert(1, list(logs[1].responses[0]))
    report = workload.check(history)["watch"]
    assert not report.valid
    kinds = {a.split(" ")[0] for a in report.anomalies}
    assert {"gap", "duplicate"} <= kinds or {"missing_tail", "duplicate"} <= kinds, kinds


@trio_test
async def test_a_write_missing_from_the_committed_sequence_is_caught() -> None:
    workload = WatchWorkload()
    async with in_process_cluster(3, host=HOST) as cluster:
        reports, history = await drive(workload, cluster, duration=1.5, fault=None)
    assert_valid(reports)
    committed = workload.final_read.committed
    assert committed is not None
    del committed[len(committed) // 2]  # the reference lost an acknowledged write
    reference = workload.check(history)["watch-reference"]
    assert not reference.valid
    assert any(a.startswith("lost:") for a in reference.anomalies)
    assert any(a.startswith("final state differs") for a in reference.anomalies) or any(
        "lost" in a for a in reference.anomalies
    )
    committed.append(Event(10**6, workload.prefix + "k0", "put", "never-written"))
    assert any("phantom" in a for a in workload.check(history)["watch-reference"].anomalies)


@trio_test
async def test_compacted_history_is_reported_not_skipped() -> None:
    workload = WatchWorkload()

    async def compact(ctx: RunContext) -> None:
        async with ctx.new_client() as client:
            revision = (await client.get("x")).header.revision
            await client.compact(revision)

    async with in_process_cluster(3, host=HOST) as cluster:
        reports, _ = await drive(workload, cluster, duration=1.0, fault=None, before_final=compact)
    assert not reports["watch"].valid
    assert any("compacted" in a.lower() for a in reports["watch"].anomalies)


# --------------------------------------------------------------------------
# lock


@trio_test
async def test_fenced_lock_sections_never_overlap_through_kills_and_stalls() -> None:
    # Every 4th section of a worker stalls for TTL + 1 s without keep-alives:
    # its lease expires, another worker takes the lock, and the stalled
    # worker's "end" must be fenced out.
    workload = LockWorkload(ttl=1, stall_every=4)
    async with in_process_cluster(3, host=HOST) as cluster:
        reports, history = await drive(workload, cluster, duration=6.0)
    assert_valid(reports)
    c = reports["lock"].counts
    assert c["sections"] > 10 and c["log_entries"] >= 2 * c["sections"] - c["abandoned"], c
    ops = counts(history)
    assert c["sections"] <= ops["acquire", "ok"] and ops["append", "ok"] >= c["log_entries"]
    assert ops["stall", "ok"] >= 1, ops
    assert c["fenced_out"] >= 1 and c["abandoned"] >= 1, c
    assert reports["lock-unfenced"].counts["overlapping_pairs"] >= 1

    # Tampered: another client's section begins inside an open one, with an
    # older token, and a successful append is missing from the log.
    assert workload.log is not None
    first = workload.log[0]
    workload.log.insert(1, FencedEntry("intruder", first.token - 1, "begin"))
    report = workload.check(history)["lock"]
    assert not report.valid
    assert any(a.startswith(("overlap", "token_not_increasing")) for a in report.anomalies)
    assert any(a.startswith("unexpected") for a in report.anomalies)
    del workload.log[:2]
    assert any(a.startswith("lost") for a in workload.check(history)["lock"].anomalies)


def test_tokens_are_padded_so_values_compare_like_numbers() -> None:
    assert pad(9) < pad(10) < pad(123456789)
    assert len(pad(2**63)) == 20


# --------------------------------------------------------------------------
# lease


@trio_test
async def test_lease_keys_live_and_die_by_their_leases_through_kills() -> None:
    workload = LeaseWorkload(ttl=1)
    async with in_process_cluster(3, host=HOST) as cluster:
        reports, history = await drive(workload, cluster, duration=6.0)
    assert_valid(reports)
    c = reports["lease"].counts
    assert c["leases_stopped"] >= 3 and c["leases_kept"] >= 2, c
    assert c["judged"] > 50 and c["reads_serializable"] > 20 and c["keys_left_at_end"] == 0, c
    assert c["terms_with_leader"] >= 2, c  # the kills moved leadership

    # Tampered: a stopped lease's key is seen 30 s after the run, with
    # settled status rounds around that read.
    stopped = next(
        e.key
        for e in history
        if e.f == "grant" and e.type == "invoke" and e.value["mode"] == "stopped"
    )
    late = history[-1].time_ns + 30 * 10**9
    forged: list[Operation] = [
        Operation(process=999, type="invoke", f="read", key=workload.prefix, time_ns=late),
        Operation(
            process=999,
            type="ok",
            f="read",
            key=workload.prefix,
            time_ns=late + 1,
            result=[stopped],
        ),
    ]
    template = [e for e in history if e.f == "status" and e.type == "ok"][-3:]
    for delay in (1, 2):
        for e in template:
            at = late + delay * 10**8
            forged.append(
                msgspec.structs.replace(e, type="invoke", time_ns=at, value=-delay, result=None)
            )
            forged.append(msgspec.structs.replace(e, time_ns=at + 1, value=-delay))
    report = workload.check(history + forged)["lease"]
    assert not report.valid
    assert any(a.startswith("outlived") for a in report.anomalies)
