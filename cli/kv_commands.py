"""The key-value commands: ``put``, ``get``, ``del``, ``txn`` and ``compaction``."""

from __future__ import annotations

import sys

import click

from cli.context import Settings, pass_settings, to_bytes
from cli.errors import CliError
from cli.lease_command import lease_id_callback
from cli.output import GetStyle, print_compaction, print_response
from cli.txn_parser import SORT_TARGETS, TxnParseError, range_args, read_txn, sort_options
from kvstore.client import Client

_range_end_help = "End of the range [KEY, RANGE_END) (exclusive)."


@click.command("put")
@click.argument("key")
@click.argument("value", required=False)
@click.option("--prev-kv", is_flag=True, help="Also print the key's previous key-value pair.")
@click.option("--ignore-value", is_flag=True, help="Keep the key's current value.")
@click.option("--ignore-lease", is_flag=True, help="Keep the key's current lease.")
@click.option(
    "--lease",
    "lease_id",
    default="0",
    callback=lease_id_callback,
    help="Attach the key to this lease (hex id, as 'lease grant' prints it; 0 = none).",
)
@pass_settings
def put(
    settings: Settings,
    key: str,
    value: str | None,
    prev_kv: bool,
    ignore_value: bool,
    ignore_lease: bool,
    lease_id: int,
) -> None:
    """Put KEY with VALUE (read from stdin when VALUE is left out).

    Prints OK.  A value that starts with '-' needs '--' first:
    kvctl put -- KEY -VALUE.  With --lease, the key is deleted when the
    lease expires or is revoked.
    """
    if lease_id and ignore_lease:
        raise click.UsageError("--lease and --ignore-lease exclude each other")
    if value is not None:
        data = to_bytes(value)
    elif ignore_value:
        data = b""
    elif sys.stdin.isatty():
        raise click.UsageError("put needs a VALUE (or the value on stdin)")
    else:
        data = sys.stdin.buffer.read()

    async def action(client: Client) -> None:
        response = await client.put(
            to_bytes(key),
            data,
            lease=lease_id,
            prev_kv=prev_kv,
            ignore_value=ignore_value,
            ignore_lease=ignore_lease,
        )
        print_response(response, settings.write_out)

    settings.with_client(action)


@click.command("get")
@click.argument("key")
@click.argument("range_end", required=False)
@click.option("--prefix", is_flag=True, help="Get every key with the prefix KEY.")
@click.option("--from-key", is_flag=True, help="Get every key >= KEY.")
@click.option("--limit", type=click.IntRange(min=0), default=0, help="At most this many keys.")
@click.option(
    "--rev", type=click.IntRange(min=0), default=0, help="Read at this revision (0 = latest)."
)
@click.option("--keys-only", is_flag=True, help="Print only the keys.")
@click.option("--count-only", is_flag=True, help="Print only the number of keys.")
@click.option("--print-value-only", is_flag=True, help="Print only the values.")
@click.option(
    "--consistency",
    type=click.Choice(["l", "s"]),
    default="l",
    show_default=True,
    help="l: linearizable; s: serializable (local, maybe stale).",
)
@click.option("--order", type=click.Choice(["ASCEND", "DESCEND"], case_sensitive=False))
@click.option("--sort-by", type=click.Choice(list(SORT_TARGETS), case_sensitive=False))
@click.option("--min-mod-revision", type=click.IntRange(min=0), default=0)
@click.option("--max-mod-revision", type=click.IntRange(min=0), default=0)
@click.option("--min-create-revision", type=click.IntRange(min=0), default=0)
@click.option("--max-create-revision", type=click.IntRange(min=0), default=0)
@pass_settings
def get(
    settings: Settings,
    key: str,
    range_end: str | None,
    prefix: bool,
    from_key: bool,
    limit: int,
    rev: int,
    keys_only: bool,
    count_only: bool,
    print_value_only: bool,
    consistency: str,
    order: str | None,
    sort_by: str | None,
    min_mod_revision: int,
    max_mod_revision: int,
    min_create_revision: int,
    max_create_revision: int,
) -> None:
    """Get KEY, or the keys in [KEY, RANGE_END).

    Prints each key's line, then its value's line.
    """
    start, end = range_args(key, range_end, prefix, from_key)
    if keys_only and print_value_only:
        raise click.UsageError("--keys-only and --print-value-only exclude each other")
    sort_order, sort_target = sort_options(order, sort_by)
    style = GetStyle(keys_only=keys_only, value_only=print_value_only, count_only=count_only)

    async def action(client: Client) -> None:
        response = await client.get(
            start,
            end,
            prefix=prefix,
            from_key=from_key,
            limit=limit,
            revision=rev,
            sort_order=sort_order,
            sort_target=sort_target,
            serializable=consistency == "s",
            keys_only=keys_only,
            count_only=count_only,
            min_mod_revision=min_mod_revision,
            max_mod_revision=max_mod_revision,
            min_create_revision=min_create_revision,
            max_create_revision=max_create_revision,
        )
        print_response(response, settings.write_out, style)

    settings.with_client(action)


@click.command("del")
@click.argument("key")
@click.argument("range_end", required=False)
@click.option("--prefix", is_flag=True, help="Delete every key with the prefix KEY.")
@click.option("--from-key", is_flag=True, help="Delete every key >= KEY.")
@click.option("--prev-kv", is_flag=True, help="Also print the deleted key-value pairs.")
@pass_settings
def delete(
    settings: Settings,
    key: str,
    range_end: str | None,
    prefix: bool,
    from_key: bool,
    prev_kv: bool,
) -> None:
    """Delete KEY, or the keys in [KEY, RANGE_END).  Prints the number deleted."""
    start, end = range_args(key, range_end, prefix, from_key)

    async def action(client: Client) -> None:
        response = await client.delete(
            start, end, prefix=prefix, from_key=from_key, prev_kv=prev_kv
        )
        print_response(response, settings.write_out)

    settings.with_client(action)


@click.command("txn")
@click.option("-i", "--interactive", is_flag=True, help="Prompt for each section.")
@pass_settings
def txn(settings: Settings, interactive: bool) -> None:
    """Run a transaction read from stdin, in etcdctl's format.

    Three sections, each ended by a blank line: compares such as
    mod("k") > "3" or value("k") = "v"; the requests to run if all hold
    (put k v, get k, del k); the requests to run otherwise.
    Prints SUCCESS or FAILURE, then each request's result.
    """
    prompt = click.echo if interactive else None
    try:
        parsed = read_txn(iter(sys.stdin.readline, ""), prompt)
    except TxnParseError as exc:
        raise CliError(str(exc)) from None

    async def action(client: Client) -> None:
        response = await client.txn(parsed.compare, parsed.success, parsed.failure)
        print_response(response, settings.write_out)

    settings.with_client(action)


@click.command("compaction")
@click.argument("revision", type=click.IntRange(min=1))
@click.option("--physical", is_flag=True, help="Wait until the history is really dropped.")
@pass_settings
def compaction(settings: Settings, revision: int, physical: bool) -> None:
    """Discard the history before REVISION; reads below it fail as compacted."""

    async def action(client: Client) -> None:
        response = await client.compact(revision, physical=physical)
        print_compaction(response, revision, settings.write_out)

    settings.with_client(action)


COMMANDS = [put, get, delete, txn, compaction]
