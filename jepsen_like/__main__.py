"""``python -m jepsen_like``: run the store under faults and check what clients saw.

::

    python -m jepsen_like run --workload register --nemesis partition,kill \\
        --time 60 --seed 1 --out runs/reg-1
    python -m jepsen_like clean [--first-address 127.0.0.11] [--out runs/reg-1]

``run`` exits 0 only when every checker says valid; the verdict is the last
line it prints.  Errors are one ``Error:`` line (exit 1), usage errors exit 2.
"""

from __future__ import annotations

import sys
from importlib.util import find_spec
from pathlib import Path

import click

from cli.errors import CliError, KvctlGroup
from jepsen_like.nemesis import NEMESES
from jepsen_like.runner import RunConfig, RunError, remove_leftovers, run
from jepsen_like.workloads import WORKLOADS


def available_workloads() -> list[str]:
    """Names of the registered workloads whose module is present."""
    return sorted(
        name for name, target in WORKLOADS.items() if find_spec(target.split(":")[0]) is not None
    )


def _echo(line: str) -> None:
    click.echo(line)
    sys.stdout.flush()


def parse_nemeses(text: str) -> list[str]:
    """``kill,pause`` -> ["kill", "pause"]; ``none`` -> []; unknown names are an error."""
    names = [part.strip() for part in text.split(",") if part.strip()]
    if names == ["none"]:
        return []
    unknown = [n for n in names if n not in NEMESES]
    if unknown or not names:
        raise click.BadParameter(
            f"unknown nemesis {', '.join(unknown) or repr(text)} "
            f"(choose from {', '.join(NEMESES)}, or none)"
        )
    return list(dict.fromkeys(names))


@click.group(cls=KvctlGroup, context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Jepsen-style tests of kvstore: real members, real faults, checked histories."""


@main.command("run")
@click.option(
    "--workload",
    "-w",
    type=click.Choice(available_workloads()),
    required=True,
    help="What the clients do (and which checker judges it).",
)
@click.option(
    "--nemesis",
    "-n",
    default="none",
    show_default=True,
    help=(
        "Comma-separated faults: kill (SIGKILL a member or the leader, restart it), "
        "pause (SIGSTOP/SIGCONT), partition (iptables between member addresses: isolate, "
        "majority/minority, bridge, one-way; needs root), corrupt (flip a bit in a stopped "
        "member's WAL or snapshot, or tear its WAL tail, restart it), membership (remove a "
        "member or the leader, wipe it, add it back as a new learner, promote it); or none."
    ),
)
@click.option("--time", "duration", type=click.FloatRange(min=1), required=True, help="Seconds.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seeds faults and workload.")
@click.option("--nodes", type=click.IntRange(1, 9), default=3, show_default=True)
@click.option("--concurrency", type=click.IntRange(1, 200), default=5, show_default=True)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="Directory for history.jsonl, results.json, latency.png and the members' data.",
)
@click.option(
    "--first-address",
    default="127.0.0.11",
    show_default=True,
    help="Loopback address of the first member; the others follow (.12, .13, ...).",
)
@click.option(
    "--base-port",
    type=click.IntRange(1, 65534),
    default=2379,
    show_default=True,
    help="Every member serves clients on this port and peers on the next, on its own address.",
)
@click.option(
    "--chain",
    default=None,
    help="iptables chain for the partition nemesis.  [default: KVJEPSEN-<first address>]",
)
@click.option("--tick-ms", type=click.IntRange(min=1), default=None, help="Members' Raft tick.")
@click.option("--election-ticks", type=click.IntRange(min=2), default=None)
@click.option(
    "--snapshot-count",
    type=click.IntRange(min=1),
    default=200,
    show_default=True,
    help="Members snapshot every this many entries (small, so snapshots happen in a run).",
)
@click.option(
    "--request-timeout",
    type=click.FloatRange(min=0.1),
    default=2.0,
    show_default=True,
    help="Seconds each client operation may take before its outcome is unknown.",
)
def run_command(
    workload: str,
    nemesis: str,
    duration: float,
    seed: int,
    nodes: int,
    concurrency: int,
    out: Path,
    first_address: str,
    base_port: int,
    chain: str | None,
    tick_ms: int | None,
    election_ticks: int | None,
    snapshot_count: int,
    request_timeout: float,
) -> None:
    """Run WORKLOAD against real members while the nemesis injects faults, then check it.

    Exits 0 only when every checker says valid; the verdict is printed last.
    """
    config = RunConfig(
        workload=workload,
        nemeses=parse_nemeses(nemesis),
        time=duration,
        seed=seed,
        out=out,
        nodes=nodes,
        concurrency=concurrency,
        first_address=first_address,
        base_port=base_port,
        chain=chain,
        tick_ms=tick_ms,
        election_ticks=election_ticks,
        snapshot_count=snapshot_count,
        request_timeout=request_timeout,
        command=["python", "-m", "jepsen_like", *sys.argv[1:]],
    )
    try:
        outcome = run(config, log=_echo)
    except RunError as exc:
        raise CliError(str(exc)) from None
    for line in outcome.summary:
        _echo(line)
    if outcome.valid:
        _echo("VERDICT: valid")
        return
    failing = [n for n, c in outcome.results["checkers"].items() if not c["valid"]]
    if outcome.results["anomalies"]:
        failing.append(f"{len(outcome.results['anomalies'])} anomalies")
    _echo(f"VERDICT: INVALID ({', '.join(failing) or 'no checker verdict'})")
    sys.exit(1)


@main.command("clean")
@click.option(
    "--first-address",
    default="127.0.0.11",
    show_default=True,
    help="The run's first member address: its chain KVJEPSEN-<address> is removed.",
)
@click.option("--chain", default=None, help="Remove this chain instead.")
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Also stop members a killed harness left running from this run directory.",
)
def clean_command(first_address: str, chain: str | None, out: Path | None) -> None:
    """Remove a run's leftovers: its iptables chain (only ours), and its members with --out."""
    try:
        for line in remove_leftovers(first_address, chain, out):
            _echo(line)
    except (RunError, ValueError) as exc:
        raise CliError(str(exc)) from None


if __name__ == "__main__":
    main()
