"""``kvctl cluster up``: a local cluster of real member processes, in the foreground.

It starts the members (``kvctl server`` each) with
:class:`kvstore.local_cluster.ProcessCluster`, waits until they agree on a
leader, prints the endpoints and a command to try, then watches: it prints
leader changes and members that die.  SIGINT (Ctrl-C), SIGTERM or SIGHUP stops
every member cleanly and exits 0.  The data stays in ``--data-dir``; running
``cluster up`` again on it brings the same cluster back with its data.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path
from types import FrameType

import click

from cli.errors import CliError
from kvstore.local_cluster import ClusterError, ProcessCluster

_WATCH_INTERVAL = 0.5
_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class _Stop(BaseException):
    """Raised by the signal handler to end the watch (or an unfinished start)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


@click.group("cluster")
def cluster() -> None:
    """Run a local cluster of member processes."""


@cluster.command("up")
@click.option("--size", type=click.IntRange(1, 9), default=3, show_default=True)
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("kvstore-data"),
    show_default=True,
    help="Holds each member's data (DATA/n1, ...) and log (DATA/n1.log).",
)
@click.option(
    "--base-port",
    type=click.IntRange(1, 65000),
    default=2379,
    show_default=True,
    help="Member i serves clients on BASE+10*i, peers on BASE+10*i+1, metrics on BASE+10*i+2.",
)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--tick-ms", type=click.IntRange(min=1), help="Raft tick of each member.")
@click.option("--election-ticks", type=click.IntRange(min=2), hidden=True)
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"]),
    default="info",
    show_default=True,
    help="The members' log level (their logs are in DATA/NAME.log).",
)
@click.option("--startup-timeout", type=click.FloatRange(min=1), default=20.0, hidden=True)
def up(
    size: int,
    data_dir: Path,
    base_port: int,
    host: str,
    tick_ms: int | None,
    election_ticks: int | None,
    log_level: str,
    startup_timeout: float,
) -> None:
    """Start a local cluster and keep it running until Ctrl-C."""
    local = ProcessCluster(
        data_dir,
        size,
        host=host,
        base_port=base_port,
        tick_ms=tick_ms,
        election_ticks=election_ticks,
        log_level=log_level,
        die_with_parent=True,
    )
    previous = {sig: signal.signal(sig, _raise_stop) for sig in _STOP_SIGNALS}
    try:
        try:
            _run(local, startup_timeout)
        except _Stop as stop:
            _say(f"received {signal.Signals(stop.signum).name}: stopping the cluster")
        finally:
            for sig in _STOP_SIGNALS:
                signal.signal(sig, signal.SIG_IGN)  # let the clean stop finish
            codes = local.stop()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    unclean = {name: code for name, code in codes.items() if code != 0}
    if unclean:
        raise CliError(f"members did not stop cleanly: {_codes_text(unclean)}")
    _say("cluster stopped")


def _raise_stop(signum: int, frame: FrameType | None) -> None:
    raise _Stop(signum)


def _run(local: ProcessCluster, startup_timeout: float) -> None:
    _say(f"starting {local.size} members in {local.data_dir}")
    try:
        leader = local.start(startup_timeout)
    except ClusterError as exc:
        raise CliError(str(exc)) from None
    for m in local.members:
        metrics = f"  metrics http://{m.metrics_address}/metrics" if m.metrics_address else ""
        _say(
            f"  {m.name}  pid {m.pid}  client {m.client_address}  peer {m.peer_address}"
            f"{metrics}  log {m.log_path}"
        )
    endpoints = ",".join(local.endpoints)
    status = local.status(leader)
    term = f" (term {status.raft_term})" if status is not None else ""
    _say(f"cluster ready: leader is {leader}{term}")
    _say(f"endpoints: {endpoints}")
    _say(f"try: kvctl --endpoints {endpoints} put hello world")
    _say("Ctrl-C stops the cluster")
    _watch(local, leader)


def _watch(local: ProcessCluster, leader: str | None) -> None:
    """Report leader changes and dead members until a stop signal."""
    while True:
        time.sleep(_WATCH_INTERVAL)
        for name, code in local.exited().items():
            log_path = local.member(name).log_path
            _say(f"member {name} exited ({_exit_text(code)}); see {log_path}")
        current = local.leader(timeout=0.3)
        if current != leader:
            if current is None:
                _say("no leader")
            else:
                status = local.status(current, timeout=0.3)
                term = f" (term {status.raft_term})" if status is not None else ""
                _say(f"leader is now {current}{term}")
            leader = current


def _exit_text(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def _codes_text(codes: dict[str, int]) -> str:
    return ", ".join(f"{name}: {_exit_text(code)}" for name, code in codes.items())


def _say(text: str) -> None:
    click.echo(f"{time.strftime('%H:%M:%S')} {text}")


COMMANDS = [cluster]
