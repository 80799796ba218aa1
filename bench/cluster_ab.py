"""The issue's performance figures for one source tree, run so that two trees
can be compared in the same time window (A/B) on a shared machine.

For each suite it starts a fresh local cluster (``kvctl cluster up``) with the
tree's code, runs ``kvctl bench`` against it with the leader as the first
endpoint, and prints one line: ops/s, latency percentiles, and the CPU time
per operation of the bench client and of each member (from ``/proc``; the
client's includes its start-up; a member's with its system share), and of the
whole machine (every process and kernel thread, from ``/proc/stat``).  Suites:

* ``seq``: ``bench put --clients 1 --total 3000`` (sequential put latency);
* ``put``: ``bench put --clients 64 --total 30000``;
* ``get``: ``bench get --clients 64 --total 40000`` (linearizable);
* ``sget``: the same with ``--consistency s``;
* ``snap``: ``bench put --clients 8 --total 25000`` (crosses two automatic
  snapshots: watch p99 and max);
* ``rss``: ``bench put --clients 64 --total 100000 --val-size 100``, then the
  members' resident memory (VmRSS) two seconds later.

Run, alternating trees: ``python3 bench/cluster_ab.py /work/main 23000 put get``
then ``python3 bench/cluster_ab.py /work/wt-x 23300 put get``, several times.
"""

from __future__ import annotations

import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any

SUITES: dict[str, list[str]] = {
    "seq": ["put", "--clients", "1", "--total", "3000"],
    "put": ["put", "--clients", "64", "--total", "30000"],
    "get": ["get", "--clients", "64", "--total", "40000"],
    "sget": ["get", "--clients", "64", "--total", "40000", "--consistency", "s"],
    "snap": ["put", "--clients", "8", "--total", "25000"],
    "rss": ["put", "--clients", "64", "--total", "100000", "--val-size", "100"],
}


def _cpu_seconds(pid: int) -> tuple[float, float]:
    """User and system CPU seconds of ``pid``."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def _machine_busy_seconds() -> float:
    """CPU seconds the whole machine spent neither idle nor waiting on I/O
    (kernel threads such as the journal's included)."""
    with open("/proc/stat") as stat:
        ticks = [int(field) for field in stat.readline().split()[1:]]
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) / 1024
    return 0.0


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_suite(tree: str, port: int, suite: str) -> str:
    env = dict(os.environ, PYTHONPATH=tree)
    data = tempfile.mkdtemp(prefix="cluster-ab-")
    up = ["cluster", "up", "--data-dir", data, "--base-port", str(port)]
    cluster = subprocess.Popen(
        [sys.executable, "-m", "cli", *up],
        cwd=tree,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        members: dict[str, tuple[int, str]] = {}
        leader = ""
        assert cluster.stdout is not None
        for line in cluster.stdout:
            if match := re.search(r"(n\d+)\s+pid (\d+)\s+client (\S+)", line):
                members[match[1]] = (int(match[2]), match[3])
            if match := re.search(r"leader is (n\d+)", line):
                leader = match[1]
            if "endpoints:" in line:
                break
        if not leader:
            return f"{suite}: the cluster did not start"
        endpoints = [members[leader][1]] + [e for n, (_, e) in members.items() if n != leader]
        cpu_before = {name: _cpu_seconds(pid) for name, (pid, _) in members.items()}
        client_before = _children_cpu()
        machine_before = _machine_busy_seconds()
        command = [sys.executable, "-m", "cli", "--endpoints", ",".join(endpoints), "-w", "json"]
        bench = subprocess.run(
            [*command, "bench", *SUITES[suite]],
            cwd=tree,
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        if bench.returncode:
            return f"{suite}: bench failed: {bench.stderr.strip()}"
        result: dict[str, Any] = json.loads(bench.stdout.strip().splitlines()[-1])
        ops = max(result["succeeded"], 1)
        machine_us = 1e6 * (_machine_busy_seconds() - machine_before) / ops
        client_us = 1e6 * (_children_cpu() - client_before) / ops
        member_us: dict[str, str] = {}
        for name, (pid, _) in members.items():
            (user, system), (user_before, system_before) = _cpu_seconds(pid), cpu_before[name]
            user_us = round(1e6 * (user - user_before) / ops)
            system_us = round(1e6 * (system - system_before) / ops)
            member_us[name] = f"{user_us + system_us} ({system_us} sys)"
        latency = result["latency_ms"]
        line = (
            f"{suite:5s} {result['ops_per_sec']:9.1f} ops/s  p50 {latency['p50']:.3f} "
            f"p90 {latency['p90']:.3f} p99 {latency['p99']:.3f} max {latency['max']:.3f} ms  "
            f"errors {result['errors']}  cpu us/op: client {client_us:.0f}, "
            f"leader {member_us.pop(leader)}, followers {sorted(member_us.values())}, "
            f"machine {machine_us:.0f}"
        )
        if suite == "rss":
            time.sleep(2)
            rss = {name: round(_rss_mb(pid), 1) for name, (pid, _) in members.items()}
            line += f"  RSS MB {rss} (leader {leader})"
        return line
    finally:
        cluster.send_signal(signal.SIGINT)
        try:
            cluster.wait(30)
        except subprocess.TimeoutExpired:
            cluster.kill()
        shutil.rmtree(data, ignore_errors=True)


def main() -> None:
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    tree, port = os.path.abspath(sys.argv[1]), int(sys.argv[2])
    for suite in sys.argv[3:] or ["seq", "put", "get"]:
        if suite not in SUITES:
            sys.exit(f"unknown suite {suite!r}; one of {', '.join(SUITES)}")
        print(f"{os.path.basename(tree):12s} {run_suite(tree, port, suite)}", flush=True)


if __name__ == "__main__":
    main()
