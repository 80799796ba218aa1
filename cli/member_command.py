"""``kvctl member add|promote|remove|list`` and ``kvctl move-leader``, as etcdctl.

Member ids are hexadecimal on the command line and in the output (``%016x``,
as etcdctl prints them; a leading ``0x`` is accepted).  ``member add`` prints
the new member's id and how to start it, as etcdctl prints the ``ETCD_*``
variables::

    Member 3f1a8e0c9b2d4e67 added to cluster 5c0e2bb1d2c3a4f5

    KVCTL_NAME="n4"
    KVCTL_INITIAL_CLUSTER="n1=127.0.0.1:2380,n2=127.0.0.1:2390,n4=127.0.0.1:2410"
    KVCTL_INITIAL_CLUSTER_STATE="existing"
    KVCTL_MEMBER_ID="3f1a8e0c9b2d4e67"
    KVCTL_CLUSTER_ID="5c0e2bb1d2c3a4f5"

    Start it with:
    kvctl server --name n4 --listen-peer 127.0.0.1:2410 --listen-client HOST:PORT ...

``member list`` prints one line per member (``ID, STATUS, NAME, PEER ADDRS,
CLIENT ADDRS, IS LEARNER``), an ASCII table with ``-w table``, or the
gateway's JSON with ``-w json``.
"""

from __future__ import annotations

import shlex
from typing import Any

import click

from cli.context import Settings, pass_settings
from cli.output import echo_json, header_json, render_table
from kvstore.api import Member, ResponseHeader
from kvstore.client import Client
from kvstore.config import ConfigError, format_address, parse_address


def parse_member_id(text: str) -> int:
    """A member id given in hex (``3f1a8e0c9b2d4e67`` or ``0x...``)."""
    digits = text.strip().lower().removeprefix("0x")
    try:
        value = int(digits, 16)
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a hexadecimal member id") from None
    if not 0 < value < 2**63:
        raise click.BadParameter(f"member id {text!r} is out of range")
    return value


def member_id_callback(ctx: click.Context, param: click.Parameter, value: str | None) -> int:
    if value is None:
        return 0
    try:
        return parse_member_id(value)
    except click.BadParameter as exc:
        exc.ctx, exc.param = ctx, param
        raise


def hex_id(member_id: int) -> str:
    return f"{member_id:016x}"


def member_json(member: Member) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "ID": member.id,
        "name": member.name,
        "peerURLs": [member.peer_url],
        "clientURLs": [member.client_url] if member.client_url else [],
    }
    if member.is_learner:
        fields["isLearner"] = True
    return fields


def members_json(header: ResponseHeader, members: list[Member], **extra: Any) -> dict[str, Any]:
    return {"header": header_json(header), **extra, "members": [member_json(m) for m in members]}


def member_row(member: Member) -> list[object]:
    return [
        hex_id(member.id),
        member.status or "unstarted",
        member.name,
        member.peer_url,
        member.client_url,
        member.is_learner,
    ]


MEMBER_HEADERS = ["ID", "STATUS", "NAME", "PEER ADDRS", "CLIENT ADDRS", "IS LEARNER"]


def _peer_url(value: str) -> str:
    try:
        return format_address(parse_address(value))
    except ConfigError as exc:
        raise click.BadParameter(str(exc), param_hint="'--peer-urls'") from None


@click.group("member")
def member() -> None:
    """Add, promote, remove and list the members of the cluster."""


@member.command("add")
@click.argument("name")
@click.option("--peer-urls", required=True, help="HOST:PORT the new member listens on for peers.")
@click.option("--learner", is_flag=True, help="Add it as a learner (non-voting) first.")
@pass_settings
def add(settings: Settings, name: str, peer_urls: str, learner: bool) -> None:
    """Add member NAME; prints its id and the flags to start it with."""
    peer_url = _peer_url(peer_urls)

    async def action(client: Client) -> None:
        response = await client.member_add(name, peer_url, learner=learner)
        if settings.write_out == "json":
            echo_json(
                members_json(response.header, response.members, member=member_json(response.member))
            )
            return
        initial = ",".join(f"{m.name}={m.peer_url}" for m in response.members)
        new = response.member
        click.echo(
            f"Member {hex_id(new.id)} added to cluster {hex_id(response.cluster_id)}"
            + (" as a learner" if new.is_learner else "")
        )
        click.echo()
        click.echo(f'KVCTL_NAME="{name}"')
        click.echo(f'KVCTL_INITIAL_CLUSTER="{initial}"')
        click.echo('KVCTL_INITIAL_CLUSTER_STATE="existing"')
        click.echo(f'KVCTL_MEMBER_ID="{hex_id(new.id)}"')
        click.echo(f'KVCTL_CLUSTER_ID="{hex_id(response.cluster_id)}"')
        click.echo()
        click.echo("Start it with:")
        command = [
            "kvctl", "server", "--name", name, "--listen-peer", peer_url,
            "--listen-client", "HOST:PORT", "--data-dir", f"{name}.kvstore",
            "--initial-cluster-state", "existing", "--initial-cluster", initial,
            "--member-id", hex_id(new.id), "--cluster-id", hex_id(response.cluster_id),
        ]  # fmt: skip
        click.echo(shlex.join(command))

    settings.with_client(action)


@member.command("promote")
@click.argument("member_id", metavar="ID", callback=member_id_callback)
@pass_settings
def promote(settings: Settings, member_id: int) -> None:
    """Make learner ID a voter (refused until it has caught up)."""

    async def action(client: Client) -> None:
        response = await client.member_promote(member_id)
        if settings.write_out == "json":
            echo_json(members_json(response.header, response.members))
        else:
            click.echo(f"Member {hex_id(member_id)} promoted in cluster")

    settings.with_client(action)


@member.command("remove")
@click.argument("member_id", metavar="ID", callback=member_id_callback)
@pass_settings
def remove(settings: Settings, member_id: int) -> None:
    """Remove member ID (the leader hands leadership over first if it is ID)."""

    async def action(client: Client) -> None:
        response = await client.member_remove(member_id)
        if settings.write_out == "json":
            echo_json(members_json(response.header, response.members))
        else:
            click.echo(f"Member {hex_id(member_id)} removed from cluster")

    settings.with_client(action)


@member.command("list")
@pass_settings
def list_members(settings: Settings) -> None:
    """List the members: id, status, name, peer and client addresses, learner."""

    async def action(client: Client) -> None:
        response = await client.member_list()
        if settings.write_out == "json":
            echo_json(members_json(response.header, response.members, leader=response.leader))
        elif settings.write_out == "table":
            click.echo(render_table(MEMBER_HEADERS, [member_row(m) for m in response.members]))
        else:
            for m in response.members:
                click.echo(
                    ", ".join(
                        str(v).lower() if isinstance(v, bool) else str(v) for v in member_row(m)
                    )
                )

    settings.with_client(action)


@click.command("move-leader")
@click.argument("target", metavar="ID", callback=member_id_callback)
@pass_settings
def move_leader(settings: Settings, target: int) -> None:
    """Hand leadership to voting member ID."""

    async def action(client: Client) -> None:
        response = await client.move_leader(target)
        if settings.write_out == "json":
            echo_json({"header": header_json(response.header), "leader": response.leader})
        else:
            click.echo(f"Leadership transferred to {hex_id(response.leader)}")

    settings.with_client(action)


COMMANDS = [member, move_leader]
