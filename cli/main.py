"""The ``kvctl`` entry point: the click group, its global options and its commands.

Global options (before the command, as in etcdctl)::

    kvctl --endpoints 127.0.0.1:2379,127.0.0.1:2389 -w json get --prefix app/

``--endpoints`` falls back to ``$KVCTL_ENDPOINTS``, then to ``127.0.0.1:2379``
(the first member of ``kvctl cluster up``).
"""

from __future__ import annotations

import click

from cli import (
    bench,
    cluster_command,
    elect_command,
    endpoint,
    kv_commands,
    lease_command,
    lock_command,
    member_command,
    server_command,
    service_command,
    snapshot_command,
    watch_command,
)
from cli.context import DEFAULT_ENDPOINT, OUTPUT_FORMATS, Settings, parse_endpoints
from cli.errors import KvctlGroup


@click.group(cls=KvctlGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--endpoints",
    envvar="KVCTL_ENDPOINTS",
    default=DEFAULT_ENDPOINT,
    show_default=True,
    help="Comma-separated HOST:PORT of the members (env KVCTL_ENDPOINTS).",
)
@click.option(
    "--command-timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=5.0,
    show_default=True,
    help="Seconds a command may take, fail-over and retries included.",
)
@click.option(
    "--dial-timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=2.0,
    show_default=True,
    help="Seconds one connection attempt may take.",
)
@click.option(
    "-w",
    "--write-out",
    type=click.Choice(OUTPUT_FORMATS),
    default="simple",
    show_default=True,
    help="Output format.",
)
@click.version_option(package_name="kvstore", prog_name="kvctl")
@click.pass_context
def cli(
    ctx: click.Context,
    endpoints: str,
    command_timeout: float,
    dial_timeout: float,
    write_out: str,
) -> None:
    """kvctl: the command line of kvstore, shaped like etcdctl."""
    ctx.obj = Settings(
        endpoints=parse_endpoints(endpoints),
        command_timeout=command_timeout,
        dial_timeout=dial_timeout,
        write_out=write_out,
    )


for _module in (
    kv_commands,
    watch_command,
    lease_command,
    lock_command,
    elect_command,
    service_command,
    member_command,
    endpoint,
    snapshot_command,
    server_command,
    cluster_command,
    bench,
):
    for _command in _module.COMMANDS:
        cli.add_command(_command)


def main() -> None:
    """The console script ``kvctl`` (and ``python -m cli``)."""
    cli.main(prog_name="kvctl")
