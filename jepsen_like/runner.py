"""One harness run: members up, workload under faults, heal, final reads, check, report.

:func:`run` does, in order (see :mod:`jepsen_like.workload` for the workload's
side of the contract):

1. starts one ``python -m cli server`` per loopback address (data and logs in
   ``OUT/data``) and prepares the nemeses (the partition nemesis first removes
   leftovers of its iptables chain, then installs it);
2. waits for a leader, runs ``workload.setup``;
3. runs ``concurrency`` workers for ``time`` seconds while the nemesis applies
   the seeded schedule (:func:`~jepsen_like.nemesis.base.plan_schedule`), and a
   watcher notes any member that exits on its own (an anomaly);
4. heals everything, waits (bounded) for a leader and a successful
   linearizable read, runs ``workload.final``;
5. stops the members, checks the history, writes ``history.jsonl``,
   ``results.json`` and ``latency.png``.

Whatever happens (an error, Ctrl-C, SIGTERM), every fault is undone, the
firewall chain removed and the members stopped by pid before :func:`run`
returns or raises.  The run is valid only if every checker says valid and
there is no anomaly.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import os
import random
import signal
import sys
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from jepsen_like import history as history_format
from jepsen_like.cluster import AddressedCluster, member_addresses
from jepsen_like.nemesis import FaultEvent, Nemesis, NemesisEnv, PlannedFault, make_nemesis
from jepsen_like.nemesis.base import plan_schedule
from jepsen_like.nemesis.corrupt import CorruptNemesis
from jepsen_like.nemesis.iptables import FirewallError, chain_name
from jepsen_like.nemesis.partition import PartitionNemesis
from jepsen_like.plot import plot_latency
from jepsen_like.workload import CheckerReport, Recorder, RunContext, Workload
from jepsen_like.workloads import make_workload
from kvstore.client import Client, KvError
from kvstore.local_cluster import ClusterError

__all__ = ["RunConfig", "RunError", "RunOutcome", "run"]

RECOVERY_TIMEOUT = 60.0
SETUP_TIMEOUT = 60.0
FINAL_TIMEOUT = 120.0
WORKER_GRACE = 15.0
"""Seconds after the end of the workload before workers that did not stop are cancelled."""


class RunError(Exception):
    """The run could not be carried out (not a verdict about the store)."""


@dataclass
class RunConfig:
    """Everything ``python -m jepsen_like run`` takes."""

    workload: str
    nemeses: list[str]
    time: float
    seed: int
    out: Path
    nodes: int = 3
    concurrency: int = 5
    first_address: str = "127.0.0.11"
    base_port: int = 2379
    chain: str | None = None
    tick_ms: int | None = None
    election_ticks: int | None = None
    snapshot_count: int = 200
    request_timeout: float = 2.0
    command: list[str] = field(default_factory=lambda: list(sys.argv))

    @property
    def chain_name(self) -> str:
        return self.chain or chain_name(self.first_address)


@dataclass
class RunOutcome:
    """What a run produced: ``valid`` and the ``results.json`` contents."""

    valid: bool
    results: dict[str, Any]
    summary: list[str]


class _Interrupted(Exception):
    def __init__(self, signum: int) -> None:
        super().__init__(f"interrupted by {signal.Signals(signum).name}")


def run(config: RunConfig, log: Callable[[str], None] = print) -> RunOutcome:
    """Carry out one run (blocking); see the module docstring."""
    if config.time <= 0:
        raise RunError("--time must be positive")
    if config.nodes < 1 or config.concurrency < 1:
        raise RunError("--nodes and --concurrency must be positive")
    out = config.out
    if (out / "data").exists() or (out / "history.jsonl").exists():
        raise RunError(f"{out} already holds a run; choose another --out or remove it")
    try:
        addresses = member_addresses(config.first_address, config.nodes)
        chain = config.chain_name
        workload = make_workload(config.workload)
        nemeses = [make_nemesis(name, chain=chain) for name in config.nemeses]
    except (KeyError, ValueError) as exc:
        raise RunError(str(exc.args[0]) if exc.args else str(exc)) from None
    out.mkdir(parents=True, exist_ok=True)
    return trio.run(_Run(config, addresses, workload, nemeses, log).main)


class _Run:
    def __init__(
        self,
        config: RunConfig,
        addresses: list[str],
        workload: Workload,
        nemeses: list[Nemesis],
        log: Callable[[str], None],
    ) -> None:
        self.config = config
        self.workload = workload
        self.log = log
        self.skipped: dict[str, str] = {}
        self.nemeses: list[Nemesis] = []
        for nemesis in nemeses:
            reason = nemesis.unavailable_reason()
            if reason is None:
                self.nemeses.append(nemesis)
            else:
                log(reason)
                self.skipped[nemesis.name] = reason
        options: dict[str, Any] = {"snapshot_count": config.snapshot_count}
        if config.tick_ms is not None:
            options["tick_ms"] = config.tick_ms
        if config.election_ticks is not None:
            options["election_ticks"] = config.election_ticks
        self.cluster = AddressedCluster(
            config.out / "data",
            addresses,
            base_port=config.base_port,
            die_with_parent=True,
            **options,
        )
        self.recorder = Recorder()
        self.env = NemesisEnv(self.cluster, self.recorder, log)
        self.faults: list[FaultEvent] = []
        self.anomalies: list[str] = []
        self.timeline: dict[str, float] = {}
        self.recovery: dict[str, Any] = {}
        self.schedule: list[PlannedFault] = []
        self.down_at_end: list[str] = []
        self._clients = itertools.count()

    # -- The run ----------------------------------------------------------------------

    async def main(self) -> RunOutcome:
        cfg = self.config
        self.log(
            f"jepsen_like: workload {cfg.workload}, nemesis "
            f"{','.join(n.name for n in self.nemeses) or 'none'}, {cfg.time:g}s, seed {cfg.seed}, "
            f"{cfg.nodes} members on {', '.join(self.cluster.addresses)} port {cfg.base_port}"
        )
        try:
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGHUP) as signals:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._watch_signals, signals)
                    await self._body()
                    nursery.cancel_scope.cancel()
        except* _Interrupted as group:
            raise RunError(str(group.exceptions[0])) from None
        except* KeyboardInterrupt:
            raise RunError("interrupted by SIGINT (Ctrl-C)") from None
        except* ClusterError as group:
            raise RunError(str(group.exceptions[0])) from None
        finally:
            with trio.CancelScope(shield=True):
                await self._tear_down()
        self.log("checking the history...")
        reports = await trio.to_thread.run_sync(self.workload.check, self.recorder.history)
        return self._report(reports)

    async def _watch_signals(self, signals: Any) -> None:
        async for signum in signals:
            raise _Interrupted(signum)

    async def _body(self) -> None:
        cfg = self.config
        for nemesis in self.nemeses:
            await nemesis.prepare(self.env)
        leader = await self.cluster.start_async(timeout=60.0)
        self.log(f"cluster up, leader {leader}")
        ctx = RunContext(
            endpoints=self.cluster.endpoints,
            recorder=self.recorder,
            rng=random.Random(f"{cfg.seed}/workload"),
            concurrency=cfg.concurrency,
            stop_at=math.inf,
            new_client=self._new_client,
            request_timeout=cfg.request_timeout,
        )
        with trio.fail_after(SETUP_TIMEOUT):
            await self.workload.setup(ctx)
        plan = plan_schedule(
            random.Random(f"{cfg.seed}/nemesis"), self.nemeses, self.cluster.names, cfg.time
        )
        self.schedule = plan
        start = trio.current_time()
        ctx.stop_at = start + cfg.time
        self.timeline["workload_start"] = self.env.now()
        self.log(f"workload running for {cfg.time:g}s with {len(plan)} faults planned")
        async with trio.open_nursery() as watchers:
            watchers.start_soon(self._watch_crashes)
            async with trio.open_nursery() as nursery:
                nursery.cancel_scope.deadline = ctx.stop_at + cfg.request_timeout + WORKER_GRACE
                for process in range(cfg.concurrency):
                    nursery.start_soon(self.workload.worker, ctx, process)
                nursery.start_soon(self._apply_schedule, plan, start, ctx.stop_at)
            if nursery.cancel_scope.cancelled_caught:
                self.anomalies.append("workers did not stop in time and were cancelled")
            watchers.cancel_scope.cancel()
        self.timeline["workload_end"] = self.env.now()
        self.log("workload done; healing")
        await self._heal_all()
        await self._recover()
        self.timeline["final_start"] = self.env.now()
        with trio.move_on_after(FINAL_TIMEOUT) as final_scope:
            await self.workload.final(ctx)
        if final_scope.cancelled_caught:
            self.anomalies.append(f"the final reads did not finish within {FINAL_TIMEOUT:g}s")
        self.timeline["final_end"] = self.env.now()

    def _new_client(self) -> Client:
        endpoints = self.cluster.endpoints
        i = next(self._clients) % len(endpoints)
        return Client(
            endpoints[i:] + endpoints[:i],
            request_timeout=self.config.request_timeout,
            connect_timeout=min(1.0, self.config.request_timeout),
        )

    async def _apply_schedule(self, plan: Sequence[PlannedFault], start: float, end: float) -> None:
        by_name = {n.name: n for n in self.nemeses}
        for fault in plan:
            await trio.sleep_until(start + fault.at)
            now = trio.current_time()
            if now >= end:
                break
            held = PlannedFault(fault.at, fault.kind, fault.params, min(fault.hold, end - now))
            try:
                event = await by_name[fault.kind].apply(self.env, held)
            except (ClusterError, FirewallError, OSError) as exc:
                # The fault could not be carried out (e.g. the member exited meanwhile).
                self.log(f"nemesis: {fault.kind} failed: {exc}")
                event = FaultEvent(fault.kind, "error", [], self.env.now(), self.env.now())
                event.outcome = "error"
                event.details = {"chosen": fault.params, "reason": str(exc)}
            self.faults.append(event)
            if event.anomaly:
                self.log(f"ANOMALY: {event.anomaly}")
                self.anomalies.append(event.anomaly)

    async def _watch_crashes(self) -> None:
        while True:
            await trio.sleep(0.5)
            exits = await trio.to_thread.run_sync(
                self.cluster.unexpected_exits, frozenset(self.env.busy)
            )
            for name, code in exits.items():
                message = f"member {name} exited on its own with code {code}"
                log_path = self.cluster.member(name).log_path
                self.log(f"ANOMALY: {message} (log: {log_path})")
                self.anomalies.append(message)

    async def _heal_all(self) -> None:
        for nemesis in self.nemeses:
            try:
                await nemesis.heal_all(self.env)
            except Exception as exc:
                self.anomalies.append(f"healing {nemesis.name} failed: {exc}")
        # A member that crashed on its own is started again for the final reads.
        for member in self.cluster.members:
            if member.pid is None:
                try:
                    await self.cluster.restart_async(member.name, 30.0)
                except ClusterError as exc:
                    self.anomalies.append(f"{member.name} does not start after healing: {exc}")

    async def _recover(self) -> None:
        """Wait (bounded) for a leader and one successful linearizable read."""
        began = trio.current_time()
        recovered = False
        with trio.move_on_after(RECOVERY_TIMEOUT):
            while True:
                try:
                    await self.cluster.wait_for_leader_async(5.0)
                    async with self._new_client() as client:
                        await client.get("jepsen/health")
                except (ClusterError, KvError):
                    await trio.sleep(0.5)
                    continue
                recovered = True
                break
        seconds = round(trio.current_time() - began, 3)
        self.recovery = {"recovered": recovered, "seconds": seconds}
        if recovered:
            self.log(f"cluster recovered in {seconds:g}s")
        else:
            message = f"the cluster did not recover within {RECOVERY_TIMEOUT:g}s after healing"
            self.log(f"ANOMALY: {message}")
            self.anomalies.append(message)

    async def _tear_down(self) -> None:
        for nemesis in self.nemeses:
            try:
                await nemesis.heal_all(self.env)
            except Exception as exc:
                self.log(f"healing {nemesis.name} failed: {exc}")
        for nemesis in self.nemeses:
            await nemesis.close(self.env)
        self.down_at_end = [m.name for m in self.cluster.members if m.pid is None]
        await self.cluster.stop_async()
        self.log("members stopped")

    # -- Results ----------------------------------------------------------------------

    def _report(self, reports: dict[str, CheckerReport]) -> RunOutcome:
        cfg = self.config
        history = self.recorder.history
        history_format.dump(history, cfg.out / "history.jsonl")
        counts = _outcome_counts(history)
        valid = bool(reports) and all(r.valid for r in reports.values()) and not self.anomalies
        fault_counts = Counter(f"{e.kind}:{e.outcome}" for e in self.faults)
        results: dict[str, Any] = {
            "valid": valid,
            "workload": cfg.workload,
            "nemeses": [n.name for n in self.nemeses],
            "nemeses_skipped": self.skipped,
            "time": cfg.time,
            "seed": cfg.seed,
            "nodes": cfg.nodes,
            "concurrency": cfg.concurrency,
            "addresses": self.cluster.addresses,
            "command": cfg.command,
            "checkers": {
                name: {
                    "valid": r.valid,
                    "counts": r.counts,
                    "anomalies": r.anomalies,
                    "details": r.details,
                }
                for name, r in reports.items()
            },
            "operations": counts,
            "faults": [e.as_json() for e in self.faults],
            "schedule": [dataclasses.asdict(f) for f in self.schedule],
            "fault_counts": dict(sorted(fault_counts.items())),
            "anomalies": self.anomalies,
            "recovery": self.recovery,
            "members_down_at_end": self.down_at_end,
            "timeline": {k: round(v, 3) for k, v in self.timeline.items()},
        }
        for nemesis in self.nemeses:
            if isinstance(nemesis, PartitionNemesis):
                results["partition"] = {
                    "chain": nemesis.firewall.chain,
                    "rules_installed": nemesis.rules_installed,
                    "packets_dropped": nemesis.packets_dropped,
                    "chain_reinstalled": nemesis.firewall.repairs,
                }
            if isinstance(nemesis, CorruptNemesis):
                results["corruption"] = dict(sorted(nemesis.tally.items()))
        (cfg.out / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
        title = (
            f"{cfg.workload} / {','.join(results['nemeses']) or 'none'} / seed {cfg.seed}"
            f" / {'valid' if valid else 'INVALID'}"
        )
        plot_note = plot_latency(history, self.faults, cfg.out / "latency.png", title)
        summary = self._summary(results, reports, plot_note)
        return RunOutcome(valid, results, summary)

    def _summary(
        self, results: dict[str, Any], reports: dict[str, CheckerReport], plot_note: str | None
    ) -> list[str]:
        ops = results["operations"]
        lines = [
            f"operations: {ops['total']} ({ops['ok']} ok, {ops['fail']} fail, {ops['info']} info)",
        ]
        if self.faults:
            by_kind = ", ".join(f"{k} {n}" for k, n in results["fault_counts"].items())
            lines.append(f"faults: {len(self.faults)} ({by_kind})")
        else:
            lines.append("faults: none")
        if "partition" in results:
            p = results["partition"]
            lines.append(
                f"partition: {p['rules_installed']} rules installed, "
                f"{p['packets_dropped']} packets dropped"
            )
        if "corruption" in results:
            tally = ", ".join(f"{k} {n}" for k, n in results["corruption"].items()) or "none"
            lines.append(f"corruption: {tally}")
        if self.down_at_end:
            lines.append(f"members down at the end: {', '.join(self.down_at_end)}")
        for name, skipped in self.skipped.items():
            lines.append(f"nemesis {name}: {skipped}")
        recovery = results["recovery"]
        if recovery:
            lines.append(
                f"recovery: {'ok' if recovery['recovered'] else 'FAILED'} "
                f"after {recovery['seconds']:g}s"
            )
        for name, report in reports.items():
            lines.append(
                f"checker {name}: {'valid' if report.valid else 'INVALID'} {report.counts}"
            )
            lines.extend(f"  {line}" for a in report.anomalies[:5] for line in a.splitlines())
        for anomaly in self.anomalies:
            lines.append(f"anomaly: {anomaly}")
        out = self.config.out
        lines.append(f"outputs: {out / 'history.jsonl'}, {out / 'results.json'}")
        lines.append(plot_note or f"plot: {out / 'latency.png'}")
        return lines


def _outcome_counts(history: Sequence[history_format.Operation]) -> dict[str, Any]:
    pending: dict[int, str] = {}
    totals: Counter[str] = Counter()
    by_f: dict[str, Counter[str]] = {}
    for ev in history:
        if ev.type == "invoke":
            pending[ev.process] = ev.f
            continue
        pending.pop(ev.process, None)
        totals[ev.type] += 1
        by_f.setdefault(ev.f, Counter())[ev.type] += 1
    for f in pending.values():  # never completed: unknown outcome
        totals["info"] += 1
        by_f.setdefault(f, Counter())["info"] += 1
    return {
        "total": sum(totals.values()),
        "ok": totals["ok"],
        "fail": totals["fail"],
        "info": totals["info"],
        "by_f": {f: dict(c) for f, c in sorted(by_f.items())},
    }


def remove_leftovers(first_address: str, chain: str | None, out: Path | None) -> list[str]:
    """``python -m jepsen_like clean``: remove our chain and, given ``out``, stop
    members a killed harness left running there.  Returns what was done."""
    from jepsen_like.nemesis.iptables import Firewall, FirewallError, unavailable_reason

    done: list[str] = []
    name = chain or chain_name(first_address)
    reason = unavailable_reason()
    if reason is not None:
        done.append(reason.replace("partition nemesis skipped", "iptables not cleaned"))
    else:
        try:
            removed = Firewall(name).remove()
        except FirewallError as exc:
            raise RunError(str(exc)) from None
        done.append(f"iptables chain {name}: {'removed' if removed else 'not present'}")
    if out is not None:
        done.extend(_stop_leftover_members(out / "data"))
    return done


def _stop_leftover_members(data_dir: Path) -> list[str]:
    """SIGKILL the members recorded in ``data_dir/cluster.json`` that still run
    the recorded command line (so a reused pid is never touched)."""
    try:
        state = json.loads((data_dir / "cluster.json").read_text())
    except (OSError, ValueError):
        return [f"no cluster state in {data_dir}"]
    done = []
    for member in state.get("members", []):
        pid, command = member.get("pid"), member.get("command")
        if not isinstance(pid, int) or not isinstance(command, list):
            continue
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[:-1]
        except OSError:
            continue
        if [part.decode(errors="replace") for part in cmdline] != command:
            continue
        try:
            os.kill(pid, signal.SIGCONT)
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            continue
        done.append(f"stopped leftover member {member.get('name')} (pid {pid})")
    return done or [f"no leftover members of {data_dir}"]
