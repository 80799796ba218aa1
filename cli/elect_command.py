"""``kvctl elect NAME [PROPOSAL]``: campaign for leadership, or ``--listen``, as etcdctl.

* ``kvctl elect NAME PROPOSAL`` campaigns with PROPOSAL as its value
  (:class:`kvstore.concurrency.Election` on a session of ``--ttl`` seconds).
  Once elected it prints the leader key (``NAME/<lease hex>``) and the value,
  two lines as etcdctl does, and leads until Ctrl-C (or SIGTERM): then it
  resigns, so the next candidate takes over at once, and exits 0.  If the
  session is lost while leading, it says so in one error line and exits 1.
  Ctrl-C while still campaigning withdraws the candidacy (exit 0).
* ``kvctl elect --listen NAME`` prints the leader's key and value now (if
  there is one) and again each time the leader changes, until Ctrl-C.

With ``-w json`` each leader is one line ``{"kvs": [<kv>], "count": 1}``,
the key-value as ``get -w json`` shows it.
"""

from __future__ import annotations

from contextlib import aclosing

import click

from cli.context import Settings, pass_settings, to_bytes
from cli.errors import CliError
from cli.output import echo_json, kv_json
from cli.streaming import Interrupt, exit_with, first_of, run_until_interrupted
from kvstore.api import KeyValue
from kvstore.client import Client, KvError
from kvstore.concurrency import Election, Session, SessionExpired


def print_leader(kv: KeyValue, write_out: str) -> None:
    """The leader's key and value: two lines, or one JSON object."""
    if write_out == "json":
        echo_json({"kvs": [kv_json(kv)], "count": 1})
    else:
        click.echo(kv.key)
        click.echo(kv.value)


@click.command("elect")
@click.option("-l", "--listen", is_flag=True, help="Observe: print each new leader.")
@click.option(
    "--ttl",
    type=click.IntRange(min=1),
    default=10,
    show_default=True,
    help="Seconds of the session's lease: how long leadership outlives a stalled kvctl.",
)
@click.argument("name")
@click.argument("proposal", required=False)
@pass_settings
def elect(settings: Settings, listen: bool, ttl: int, name: str, proposal: str | None) -> None:
    """Campaign in election NAME with PROPOSAL; lead until Ctrl-C, then resign.

    With --listen, print the leader and every change of leader instead.
    """
    if listen and proposal is not None:
        raise click.UsageError("--listen takes no PROPOSAL")
    if not listen and proposal is None:
        raise click.UsageError("give a PROPOSAL to campaign with, or --listen")

    async def body(client: Client, interrupt: Interrupt) -> int:
        if listen:
            return await _listen(client, to_bytes(name), settings.write_out, interrupt)
        assert proposal is not None
        return await _campaign(client, ttl, to_bytes(name), to_bytes(proposal), settings, interrupt)

    exit_with(run_until_interrupted(settings, body))


async def _campaign(
    client: Client,
    ttl: int,
    name: bytes,
    proposal: bytes,
    settings: Settings,
    interrupt: Interrupt,
) -> int:
    async with Session(client, ttl=ttl) as session:
        election = Election(session, name)
        with interrupt.cancels():
            try:
                await election.campaign(proposal)
            except SessionExpired as exc:
                raise CliError(f"elect: {exc}") from None
        if not election.is_leader:  # interrupted while campaigning
            return 0
        try:
            mine = await client.get(election.key)
            fallback = KeyValue(election.key, election.revision, election.revision, 1, proposal)
            print_leader(mine.kvs[0] if mine.kvs else fallback, settings.write_out)
            why = await first_of(interrupted=interrupt.wait, lost=session.wait_lost)
            if why == "lost":
                raise CliError(f"elect: session {session.lease_id:x} expired; leadership lost")
        finally:
            if not session.is_lost:
                try:
                    await election.resign()
                except KvError as exc:
                    click.echo(f"warning: could not resign: {exc.message}", err=True)
    return 0


async def _listen(client: Client, name: bytes, write_out: str, interrupt: Interrupt) -> int:
    # Observing needs no lease: the session is never started.
    election = Election(Session(client), name)
    with interrupt.cancels():
        async with aclosing(election.observe()) as leaders:
            async for leader in leaders:
                print_leader(leader, write_out)
    return 0


COMMANDS = [elect]
