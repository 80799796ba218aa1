"""``kvctl lease``: grant, revoke, timetolive, list and keep-alive, as etcdctl.

Lease ids are hexadecimal on the command line and in the output (``%016x``,
as etcdctl prints them; a leading ``0x`` is accepted on input).  Simple
output, line for line as etcdctl::

    lease 694d77aa9e38260f granted with TTL(10s)
    lease 694d77aa9e38260f revoked
    lease 694d77aa9e38260f granted with TTL(10s), remaining(8s)
    lease 694d77aa9e38260f granted with TTL(10s), remaining(8s), attached keys([a b])
    lease 694d77aa9e38260f already expired
    found 2 leases
    lease 694d77aa9e38260f keepalived with TTL(10)
    lease 694d77aa9e38260f expired or revoked.

``-w json`` prints one object per response with the gateway's field names
(``header``, ``ID``, ``TTL``, ``grantedTTL``, ``keys`` base64, ``leases``),
zero fields left out.

``keep-alive`` renews the lease every third of its TTL until Ctrl-C (exit 0).
When the lease is gone (expired or revoked) it prints etcdctl's "expired or
revoked." line and exits 1.  While the cluster cannot be reached it warns on
stderr and keeps trying, until a whole TTL has passed since the last renewal
(the lease is then surely gone): one error line, exit 1.
"""

from __future__ import annotations

import base64
import time
from typing import Any

import click
import trio

from cli.context import Settings, pass_settings
from cli.errors import CliError, describe
from cli.output import echo_json, header_json
from cli.streaming import Interrupt, exit_with, run_until_interrupted, sleep_unless_interrupted
from kvstore.api import (
    ErrorCode,
    LeaseGrantResponse,
    LeaseKeepAliveResponse,
    LeaseLeasesResponse,
    LeaseRevokeResponse,
    LeaseTimeToLiveResponse,
    ResponseHeader,
)
from kvstore.client import Client, InvalidRequest, KvError

MIN_RENEW_INTERVAL = 0.2
"""Seconds between keep-alives at least, whatever the TTL."""


def parse_lease_id(text: str) -> int:
    """A lease id given in hex (``694d77aa9e38260f`` or ``0x...``), as etcdctl takes it."""
    digits = text.strip().lower().removeprefix("0x")
    try:
        value = int(digits, 16)
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a hexadecimal lease id") from None
    if not 0 <= value < 2**63:
        raise click.BadParameter(f"lease id {text!r} is out of range")
    return value


def lease_id_callback(ctx: click.Context, param: click.Parameter, value: str | None) -> int:
    """A click callback turning a hexadecimal lease id parameter into an int."""
    if value is None:
        return 0
    try:
        return parse_lease_id(value)
    except click.BadParameter as exc:
        exc.ctx, exc.param = ctx, param
        raise


def hex_id(lease_id: int) -> str:
    """A lease id as etcdctl prints it."""
    return f"{lease_id:016x}"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _without_zeros(fields: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in fields.items() if v not in (0, False, "", None, [], {})}


def lease_json(
    response: LeaseGrantResponse
    | LeaseRevokeResponse
    | LeaseKeepAliveResponse
    | LeaseTimeToLiveResponse
    | LeaseLeasesResponse,
) -> dict[str, Any]:
    """A lease response with the gateway's field names, zero fields left out."""
    fields: dict[str, Any] = {"header": header_json(response.header)}
    if isinstance(response, LeaseGrantResponse | LeaseKeepAliveResponse):
        fields.update(ID=response.id, TTL=response.ttl)
    elif isinstance(response, LeaseTimeToLiveResponse):
        keys = [_b64(key) for key in response.keys]
        fields.update(ID=response.id, TTL=response.ttl, grantedTTL=response.granted_ttl, keys=keys)
    elif isinstance(response, LeaseLeasesResponse):
        fields.update(leases=[{"ID": lease} for lease in response.leases])
    return _without_zeros(fields)


def time_to_live_text(response: LeaseTimeToLiveResponse, lease_id: int, keys: bool) -> str:
    """etcdctl's ``lease timetolive`` line."""
    if response.ttl == -1:
        return f"lease {hex_id(lease_id)} already expired"
    text = (
        f"lease {hex_id(lease_id)} granted with TTL({response.granted_ttl}s),"
        f" remaining({response.ttl}s)"
    )
    if keys:
        names = " ".join(key.decode("utf-8", errors="replace") for key in response.keys)
        text += f", attached keys([{names}])"
    return text


@click.group("lease")
def lease() -> None:
    """Grant, revoke, inspect and keep alive leases (ids in hex)."""


@lease.command("grant")
@click.argument("ttl", type=click.IntRange(min=1))
@pass_settings
def grant(settings: Settings, ttl: int) -> None:
    """Grant a lease of TTL seconds (the server raises it to its minimum).

    Prints the id and the TTL granted.
    """

    async def action(client: Client) -> None:
        response = await client.lease_grant(ttl)
        if settings.write_out == "json":
            echo_json(lease_json(response))
        else:
            click.echo(f"lease {hex_id(response.id)} granted with TTL({response.ttl}s)")

    settings.with_client(action)


@lease.command("revoke")
@click.argument("lease_id", metavar="ID", callback=lease_id_callback)
@pass_settings
def revoke(settings: Settings, lease_id: int) -> None:
    """Revoke lease ID: every key attached to it is deleted."""

    async def action(client: Client) -> None:
        response = await client.lease_revoke(lease_id)
        if settings.write_out == "json":
            echo_json(lease_json(response))
        else:
            click.echo(f"lease {hex_id(lease_id)} revoked")

    settings.with_client(action)


@lease.command("timetolive")
@click.argument("lease_id", metavar="ID", callback=lease_id_callback)
@click.option("--keys", is_flag=True, help="Also list the keys attached to the lease.")
@pass_settings
def timetolive(settings: Settings, lease_id: int, keys: bool) -> None:
    """The TTL lease ID was granted with and the seconds it has left."""

    async def action(client: Client) -> None:
        response = await client.lease_time_to_live(lease_id, keys=keys)
        if settings.write_out == "json":
            echo_json(lease_json(response))
        else:
            click.echo(time_to_live_text(response, lease_id, keys))

    settings.with_client(action)


@lease.command("list")
@pass_settings
def list_leases(settings: Settings) -> None:
    """Every live lease: their number, then one id per line."""

    async def action(client: Client) -> None:
        response = await client.lease_leases()
        if settings.write_out == "json":
            echo_json(lease_json(response))
            return
        click.echo(f"found {len(response.leases)} leases")
        for lease_id in response.leases:
            click.echo(hex_id(lease_id))

    settings.with_client(action)


@lease.command("keep-alive")
@click.argument("lease_id", metavar="ID", callback=lease_id_callback)
@pass_settings
def keep_alive(settings: Settings, lease_id: int) -> None:
    """Keep lease ID alive until Ctrl-C, printing each renewal.

    Exits 1 once the lease has expired or been revoked.
    """

    async def body(client: Client, interrupt: Interrupt) -> int:
        return await _keep_alive(client, interrupt, lease_id, settings.write_out)

    exit_with(run_until_interrupted(settings, body))


async def _keep_alive(client: Client, interrupt: Interrupt, lease_id: int, write_out: str) -> int:
    ttl = 0.0
    renewed_at = time.monotonic()
    while not interrupt.is_set:
        try:
            with interrupt.cancels():
                response = await client.lease_keep_alive_once(lease_id)
        except InvalidRequest as exc:
            if exc.code != ErrorCode.LEASE_NOT_FOUND:
                raise
            response = LeaseKeepAliveResponse(header=ResponseHeader(), id=lease_id, ttl=0)
        except (KvError, OSError, trio.TooSlowError) as exc:
            if ttl and time.monotonic() - renewed_at >= ttl:
                raise CliError(
                    f"lease {hex_id(lease_id)} could not be renewed for {ttl:g}s"
                    f" and has expired: {describe(exc) or exc}"
                ) from None
            if ttl == 0:
                raise
            click.echo(f"warning: keep-alive failed, retrying: {describe(exc) or exc}", err=True)
            await sleep_unless_interrupted(interrupt, MIN_RENEW_INTERVAL)
            continue
        if interrupt.is_set:
            break
        if response.ttl <= 0:
            if write_out == "simple":
                click.echo(f"lease {hex_id(lease_id)} expired or revoked.")
            else:
                echo_json(lease_json(response))
            return 1
        ttl, renewed_at = float(response.ttl), time.monotonic()
        if write_out == "simple":
            click.echo(f"lease {hex_id(lease_id)} keepalived with TTL({response.ttl})")
        else:
            echo_json(lease_json(response))
        await sleep_unless_interrupted(interrupt, max(ttl / 3, MIN_RENEW_INTERVAL))
    return 0


COMMANDS = [lease]
