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
import subprocess
import sys
from pathlib import Path

import pytest

from jepsen_like.cluster import free_shared_port
from jepsen_like.nemesis.iptables import unavailable_reason

ROOT = Path(__file__).resolve().parent.parent
REQUIRED = os.environ.get("JEPSEN_REQUIRE_PARTITION") == "1"
RUN_SECONDS = 20
ADDRESSES = ["127.0.0.11", "127.0.0.12", "127.0.0.13"]

RUNS = [
    pytest.param("register", "partition", 1, id="register+partition"),
    pytest.param("register", "kill", 2, id="register+kill"),
    pytest.param("set", "pause", 3, id="set+pause"),
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
