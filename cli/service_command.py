"""``kvctl service``: register, list and watch service instances.

Built on :class:`kvstore.discovery.ServiceRegistry`: an instance is the key
``services/<NAME>/<ID>`` with the JSON value ``{"address": ..., "metadata":
{...}}``, attached to the registering kvctl's session lease.

* ``service register NAME ADDR [--id ID] [--meta JSON] [--ttl N]`` registers
  the instance (ID defaults to ADDR), prints
  ``registered <ID> at <ADDR> in service <NAME> (lease <hex>)`` and stays
  registered until Ctrl-C (or SIGTERM): then it deregisters and exits 0.  If
  its lease is lost (kvctl stalled or cut off for a TTL) the instance is gone:
  one error line, exit 1.  ``--meta`` must be a JSON object (else a usage
  error, exit 2).
* ``service list NAME`` prints one line per instance, sorted by id:
  ``<ID>, <ADDR>, <metadata JSON>``; ``-w json`` prints a JSON list of
  ``{"id", "address", "metadata", "revision", "lease"}`` objects; ``-w table``
  a table.
* ``service watch NAME`` prints the instances present (``added`` lines) and
  then each change as it happens, until Ctrl-C:
  ``added|updated|removed <ID> <ADDR> <metadata JSON>``; ``-w json`` prints
  one ``{"change", "id", "address", "metadata", ...}`` object per line.
"""

from __future__ import annotations

import json
from contextlib import aclosing
from typing import Any

import click

from cli.context import Settings, pass_settings
from cli.errors import CliError
from cli.output import echo_json, render_table
from cli.streaming import Interrupt, exit_with, first_of, run_until_interrupted
from kvstore.client import Client
from kvstore.discovery import Instance, Registration, ServiceChange, ServiceRegistry


def parse_metadata(text: str | None) -> dict[str, Any]:
    """``--meta``: a JSON object (a usage error otherwise)."""
    if text is None:
        return {}
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise click.BadParameter(f"not valid JSON: {exc}", param_hint="'--meta'") from None
    if not isinstance(value, dict):
        raise click.BadParameter("must be a JSON object", param_hint="'--meta'")
    return value


def _check_name(what: str, value: str) -> None:
    if not value or "/" in value:
        raise click.BadParameter(
            f"{value!r}: must be non-empty and contain no '/'", param_hint=what
        )


def metadata_text(instance: Instance) -> str:
    return json.dumps(instance.metadata, separators=(",", ":"), sort_keys=True)


def instance_json(instance: Instance) -> dict[str, Any]:
    return {
        "id": instance.instance_id,
        "address": instance.address,
        "metadata": instance.metadata,
        "revision": instance.revision,
        "lease": f"{instance.lease:016x}",
    }


def change_line(change: ServiceChange) -> str:
    """One ``service watch`` line in simple format."""
    instance = change.instance
    return f"{change.kind} {instance.instance_id} {instance.address} {metadata_text(instance)}"


@click.group("service")
def service() -> None:
    """Register, list and watch the instances of a service."""


@service.command("register")
@click.argument("name")
@click.argument("address")
@click.option("--id", "instance_id", help="The instance id (default: ADDRESS).")
@click.option("--meta", help="Metadata of the instance, as a JSON object.")
@click.option(
    "--ttl",
    type=click.IntRange(min=1),
    default=10,
    show_default=True,
    help="Seconds the instance outlives a stalled or killed kvctl.",
)
@pass_settings
def register(
    settings: Settings,
    name: str,
    address: str,
    instance_id: str | None,
    meta: str | None,
    ttl: int,
) -> None:
    """Register ADDRESS as an instance of service NAME until Ctrl-C."""
    metadata = parse_metadata(meta)
    instance_id = address if instance_id is None else instance_id
    _check_name("'NAME'", name)
    _check_name("'--id' (default: ADDRESS)", instance_id)

    async def body(client: Client, interrupt: Interrupt) -> int:
        registry = ServiceRegistry(client)
        registration: Registration | None = None
        with interrupt.cancels():
            registration = await registry.register(name, instance_id, address, metadata, ttl=ttl)
        if registration is None:  # interrupted while registering
            return 0
        async with registration:
            lease = registration.session.lease_id
            if settings.write_out == "json":
                echo_json({"service": name, **instance_json(registration.instance)})
            else:
                click.echo(
                    f"registered {instance_id} at {address} in service {name} (lease {lease:016x})"
                )
            why = await first_of(interrupted=interrupt.wait, lost=registration.lost.wait)
            if why == "lost":
                raise CliError(f"registration lost: lease {lease:016x} expired")
        return 0

    exit_with(run_until_interrupted(settings, body))


@service.command("list")
@click.argument("name")
@pass_settings
def list_instances(settings: Settings, name: str) -> None:
    """The instances of service NAME: id, address and metadata, one per line."""
    _check_name("'NAME'", name)

    async def action(client: Client) -> None:
        instances = await ServiceRegistry(client).list(name)
        ordered = [instances[key] for key in sorted(instances)]
        if settings.write_out == "json":
            echo_json([instance_json(instance) for instance in ordered])
        elif settings.write_out == "table":
            rows = [[i.instance_id, i.address, metadata_text(i)] for i in ordered]
            click.echo(render_table(["ID", "ADDRESS", "METADATA"], rows))
        else:
            for i in ordered:
                click.echo(f"{i.instance_id}, {i.address}, {metadata_text(i)}")

    settings.with_client(action)


@service.command("watch")
@click.argument("name")
@pass_settings
def watch_instances(settings: Settings, name: str) -> None:
    """Print the instances of service NAME, then each one added, updated or
    removed, until Ctrl-C."""
    _check_name("'NAME'", name)

    async def body(client: Client, interrupt: Interrupt) -> int:
        with interrupt.cancels():
            changes = ServiceRegistry(client).watch(name)
            async with aclosing(changes):
                async for change in changes:
                    if settings.write_out == "json":
                        echo_json({"change": str(change.kind), **instance_json(change.instance)})
                    else:
                        click.echo(change_line(change))
        return 0

    exit_with(run_until_interrupted(settings, body))


COMMANDS = [service]
