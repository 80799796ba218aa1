"""``kvctl server``: run one member in the foreground until SIGINT or SIGTERM.

Logs go to stderr.  The first SIGINT/SIGTERM stops the member cleanly (its WAL
closed) and the process exits 0; a bad flag, an address in use or a corrupt
data directory is one ``Error:`` line and exit code 1.

For profiling, ``--cpu-profile FILE`` (or the environment variable
``KVCTL_CPU_PROFILE_DIR``, which writes ``DIR/<name>.prof``) runs the member
under cProfile and writes the statistics on exit; read them with
``python -m pstats FILE``.
"""

from __future__ import annotations

import cProfile
import ctypes
import errno
import logging
import os
import signal
import socket
from collections.abc import Callable
from pathlib import Path

import click
import trio

from cli.errors import CliError
from cli.member_command import member_id_callback
from kvstore.config import MemberConfig, format_address, parse_address, parse_initial_cluster
from kvstore.server import Member
from raft.errors import SafetyViolation

log = logging.getLogger("kvctl.server")

LOG_LEVELS = ("debug", "info", "warning", "error")


@click.command("server")
@click.option("--name", default="default", show_default=True, help="This member's name.")
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Where the WAL and snapshots live.  [default: ./NAME.kvstore]",
)
@click.option(
    "--listen-client",
    default="127.0.0.1:2379",
    show_default=True,
    help="HOST:PORT to serve clients on.",
)
@click.option(
    "--listen-peer",
    default="127.0.0.1:2380",
    show_default=True,
    help="HOST:PORT to talk to the other members on.",
)
@click.option(
    "--listen-metrics",
    help="HOST:PORT to serve HTTP /metrics and /health on.  [default: not served]",
)
@click.option(
    "--initial-cluster",
    help="NAME=HOST:PORT,... peer address of every initial member.  [default: NAME=listen-peer]",
)
@click.option("--initial-cluster-token", default="kvstore", show_default=True)
@click.option(
    "--initial-cluster-state",
    type=click.Choice(["new", "existing"]),
    default="new",
    show_default=True,
    envvar="KVCTL_INITIAL_CLUSTER_STATE",
    help="'existing' to join a running cluster this member was added to "
    "('kvctl member add' prints the flags).",
)
@click.option(
    "--member-id",
    callback=member_id_callback,
    envvar="KVCTL_MEMBER_ID",
    help="With --initial-cluster-state existing: the id 'member add' gave this member (hex).",
)
@click.option(
    "--cluster-id",
    callback=member_id_callback,
    envvar="KVCTL_CLUSTER_ID",
    help="With --initial-cluster-state existing: the id of the cluster joined (hex).",
)
@click.option("--tick-ms", type=click.IntRange(min=1), default=100, show_default=True)
@click.option("--election-ticks", type=click.IntRange(min=2), default=10, show_default=True)
@click.option(
    "--snapshot-count",
    type=click.IntRange(min=1),
    default=10_000,
    show_default=True,
    help="Applied entries between snapshots.",
)
@click.option(
    "--auto-compaction-retention",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Keep this many revisions of history (0: keep all).",
)
@click.option("--log-level", type=click.Choice(LOG_LEVELS), default="info", show_default=True)
@click.option(
    "--cpu-profile",
    type=click.Path(dir_okay=False, path_type=Path),
    hidden=True,
    help="Run under cProfile and write the statistics to this file on exit.",
)
def server(
    name: str,
    data_dir: Path | None,
    listen_client: str,
    listen_peer: str,
    listen_metrics: str | None,
    initial_cluster: str | None,
    initial_cluster_token: str,
    initial_cluster_state: str,
    member_id: int,
    cluster_id: int,
    tick_ms: int,
    election_ticks: int,
    snapshot_count: int,
    auto_compaction_retention: int,
    log_level: str,
    cpu_profile: Path | None,
) -> None:
    """Run one member in the foreground (Ctrl-C stops it cleanly)."""
    peer = parse_address(listen_peer)
    config = MemberConfig(
        name=name,
        data_dir=data_dir if data_dir is not None else Path(f"{name}.kvstore"),
        listen_client=parse_address(listen_client),
        listen_peer=peer,
        initial_cluster=(
            parse_initial_cluster(initial_cluster) if initial_cluster else {name: peer}
        ),
        cluster_token=initial_cluster_token,
        initial_cluster_state=initial_cluster_state,
        join_member_id=member_id,
        join_cluster_id=cluster_id,
        tick_interval=tick_ms / 1000,
        election_ticks=election_ticks,
        snapshot_count=snapshot_count,
        auto_compaction_retention=auto_compaction_retention,
        listen_metrics=parse_address(listen_metrics) if listen_metrics else None,
    )
    _setup_logging(log_level)
    _return_large_buffers_to_the_os()
    profile_dir = os.environ.get("KVCTL_CPU_PROFILE_DIR")
    if cpu_profile is None and profile_dir:
        cpu_profile = Path(profile_dir) / f"{name}.prof"
    try:
        if cpu_profile is None:
            trio.run(serve, config)
        else:
            _profiled(cpu_profile, config)
    except Exception as exc:
        if _leaf_matching(exc, _is_address_in_use) is not None:
            raise CliError(f"address already in use: {_busy(config)}") from None
        violation = _leaf_matching(exc, _is_safety_violation)
        if violation is not None:
            # The log on disk disagrees with what this member told its peers
            # (e.g. a WAL that lost fsynced records): stop, as etcd does, and
            # say what to do rather than print a traceback.
            raise CliError(
                f"member {config.name} stopped: {violation}; its data directory "
                f"{config.data_dir} lost entries it had acknowledged (truncated or "
                "damaged WAL?). Do not restart it as it is: remove the member "
                "(kvctl member remove) and add it back with an empty data directory"
            ) from None
        raise


def _profiled(path: Path, config: MemberConfig) -> None:
    profiler = cProfile.Profile()
    try:
        profiler.runcall(trio.run, serve, config)
    finally:
        profiler.dump_stats(path)
        log.info("CPU profile written to %s", path)


def _leaf_matching(
    exc: BaseException, match: Callable[[BaseException], bool]
) -> BaseException | None:
    """The first exception in ``exc`` (itself, or inside exception groups)
    that ``match`` accepts."""
    if isinstance(exc, BaseExceptionGroup):
        found = (_leaf_matching(inner, match) for inner in exc.exceptions)
        return next((leaf for leaf in found if leaf is not None), None)
    return exc if match(exc) else None


def _is_safety_violation(exc: BaseException) -> bool:
    return isinstance(exc, SafetyViolation)


_M_MMAP_THRESHOLD = -3
"""glibc's ``mallopt`` parameter number (malloc.h)."""


def _return_large_buffers_to_the_os() -> None:
    """Make glibc map every allocation over 1 MiB on its own, and unmap it when
    freed.  By default glibc raises that threshold to the largest block freed
    so far (up to 32 MiB), so after the first snapshot (a buffer as large as
    the whole state) later ones come from the heaps -- one per worker thread --
    and stay in the member's resident memory.  Elsewhere than glibc: nothing."""
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt(_M_MMAP_THRESHOLD, 1 << 20)


def _is_address_in_use(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno == errno.EADDRINUSE


def _busy(config: MemberConfig) -> str:
    """Which of the member's addresses cannot be bound now (for the error message)."""
    busy = []
    roles = [("client", config.listen_client), ("peer", config.listen_peer)]
    if config.listen_metrics is not None:
        roles.append(("metrics", config.listen_metrics))
    for role, address in roles:
        family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(address)
            except OSError:
                busy.append(f"{role} address {format_address(address)}")
    return " and ".join(busy) or "the client or peer address"


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


async def serve(config: MemberConfig) -> None:
    """Run a member until the first SIGINT or SIGTERM, then stop it cleanly."""
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:

            async def run_member(
                task_status: trio.TaskStatus[Member] = trio.TASK_STATUS_IGNORED,
            ) -> None:
                running = Member(config)
                await running.run(task_status=task_status)
                if running.removed:
                    log.warning("member %s was removed from the cluster", config.name)
                nursery.cancel_scope.cancel()

            member: Member = await nursery.start(run_member)
            log.info(
                "member %s ready (id %x, cluster %x)", member.name, member.id, member.cluster_id
            )
            if member.metrics_address is not None:
                log.info(
                    "metrics on http://%s/metrics, health on http://%s/health",
                    format_address(member.metrics_address),
                    format_address(member.metrics_address),
                )
            async for signum in signals:
                log.info("received %s: stopping", signal.Signals(signum).name)
                nursery.cancel_scope.cancel()
                break
    log.info("member %s stopped", config.name)


COMMANDS = [server]
