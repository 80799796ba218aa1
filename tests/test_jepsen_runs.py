"""Short harness runs through the real CLI: 3 members, about 20 s each.

Each run must exit 0 with a valid ``results.json`` and must really have applied
its faults (for partition: rules installed and packets dropped).  Add a
combination by adding a line to ``RUNS``.

The partition run needs root and iptables; it is skipped with the reason
otherwise, except when ``JEPSEN_REQUIRE_PARTITION=1`` (``.ci/run`` as root),
where it must run.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from jepsen_like.cluster import free_shared_port
from jepsen_like.nemesis.iptables import Firewall, chain_name, unavailable_reason

ROOT = Path(__file__).resolve().parent.parent
REQUIRED = os.environ.get("JEPSEN_REQUIRE_PARTITION") == "1"
RUN_SECONDS = 20
ADDRESSES = ["127.0.0.11", "127.0.0.12", "127.0.0.13"]

RUNS = [
    pytest.param("register", "partition", 1, id="register+partition"),
    pytest.param("register", "kill", 2, id="register+kill"),
    pytest.param("set", "pause", 3, id="set+pause"),
    pytest.param("watch", "kill", 4, id="watch+kill"),
    pytest.param("register", "membership", 7, id="register+membership"),
]


@pytest.mark.parametrize(("workload", "nemesis", "seed"), RUNS)
def test_short_run_is_valid_and_applies_its_faults(
    workload: str, nemesis: str, seed: int, tmp_path: Path
) -> None:
    if nemesis == "partition" and not REQUIRED and unavailable_reason() is not None:
        pytest.skip(str(unavailable_reason()))
    out = tmp_path / "run"
    command = [
        sys.executable,
        "-m",
        "jepsen_like",
        "run",
        "--workload",
        workload,
        "--nemesis",
        nemesis,
        "--time",
        str(RUN_SECONDS),
        "--seed",
        str(seed),
        "--out",
        str(out),
        "--first-address",
        ADDRESSES[0],
        "--base-port",
        str(free_shared_port(ADDRESSES)),
    ]
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=RUN_SECONDS + 150, cwd=ROOT, check=False
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert done.stdout.strip().splitlines()[-1] == "VERDICT: valid", output
    results = json.loads((out / "results.json").read_text())
    assert results["valid"] is True
    assert all(checker["valid"] for checker in results["checkers"].values())
    assert results["anomalies"] == []
    assert results["operations"]["ok"] > 100
    applied = [f for f in results["faults"] if f["kind"] == nemesis and f["outcome"] == "applied"]
    assert applied, output
    assert all(f["end"] is not None and f["end"] > f["start"] for f in applied)
    if nemesis == "partition":
        assert results["partition"]["rules_installed"] > 0, output
        assert results["partition"]["packets_dropped"] > 0, output
    history = (out / "history.jsonl").read_text().splitlines()
    assert len(history) >= 2 * results["operations"]["ok"]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_an_interrupted_run_removes_its_chain_and_stops_its_members(
    signum: int, tmp_path: Path
) -> None:
    addresses = ["127.0.0.61", "127.0.0.62", "127.0.0.63"]
    partition = REQUIRED or unavailable_reason() is None
    firewall = Firewall(chain_name(addresses[0]))
    out = tmp_path / "run"
    command = [
        sys.executable,
        "-m",
        "jepsen_like",
        "run",
        "-w",
        "register",
        "-n",
        "partition,pause" if partition else "pause",
        "--time",
        "120",
        "--out",
        str(out),
        "--first-address",
        addresses[0],
        "--base-port",
        str(free_shared_port(addresses)),
    ]
    harness = subprocess.Popen(
        command,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        # A shell's background job ignores SIGINT; the harness must get it as a terminal would.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        assert harness.stdout is not None
        for line in harness.stdout:  # wait until the workload runs
            if line.startswith("workload running"):
                break
        state = json.loads((out / "data" / "cluster.json").read_text())
        pids = [member["pid"] for member in state["members"]]
        assert all(isinstance(pid, int) for pid in pids)
        assert not partition or firewall.exists()
        harness.send_signal(signum)
        rest, _ = harness.communicate(timeout=60)
    finally:
        if harness.poll() is None:
            harness.kill()
            harness.wait()
    assert harness.returncode == 1
    assert "Error: interrupted by " + signal.Signals(signum).name in rest
    assert "Traceback" not in rest
    assert not firewall.exists()
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists() or _is_zombie(pid), f"member pid {pid} survived"


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1].startswith("Z")
    except OSError:
        return True
