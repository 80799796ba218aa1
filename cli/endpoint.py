"""``kvctl endpoint status`` and ``kvctl endpoint health``: one line or row per endpoint."""

from __future__ import annotations

import time

import click
import trio

from cli.context import Settings, pass_settings
from cli.errors import CliError, describe
from cli.output import Health, print_health, print_status
from kvstore.api import StatusResponse
from kvstore.client import KvError
from kvstore.health import HEALTH_KEY


@click.group("endpoint")
def endpoint() -> None:
    """Ask each endpoint for its status or health."""


@endpoint.command("status")
@pass_settings
def status(settings: Settings) -> None:
    """Each endpoint's member id, leader id, term, raft index, applied index,
    revision and number of keys.  Exits 1 if an endpoint did not answer."""
    results = trio.run(_statuses, settings)
    answered = [(ep, s) for ep, s in results if isinstance(s, StatusResponse)]
    failed = [(ep, s) for ep, s in results if isinstance(s, str)]
    if answered:
        print_status(answered, settings.write_out)
    for ep, reason in failed:
        click.echo(f"Failed to get the status of endpoint {ep} ({reason})", err=True)
    if failed:
        raise CliError(f"{len(failed)} of {len(results)} endpoints did not answer")


async def _statuses(settings: Settings) -> list[tuple[str, StatusResponse | str]]:
    results: dict[str, StatusResponse | str] = {}
    async with settings.client() as client:

        async def ask(ep: str) -> None:
            try:
                results[ep] = await client.status(ep)
            except (KvError, OSError) as exc:
                results[ep] = describe(exc) or str(exc)

        async with trio.open_nursery() as nursery:
            for ep in settings.endpoints:
                nursery.start_soon(ask, ep)
    return [(ep, results[ep]) for ep in settings.endpoints]


@endpoint.command("health")
@pass_settings
def health(settings: Settings) -> None:
    """Whether each endpoint is healthy: it knows a leader and serves a
    linearizable read within --command-timeout.

    Exits 1 if any endpoint is unhealthy.
    """
    results = trio.run(_health_checks, settings)
    print_health(results, settings.write_out)
    if not all(r.healthy for r in results):
        raise CliError("unhealthy cluster")


async def _health_checks(settings: Settings) -> list[Health]:
    results: dict[str, Health] = {}

    async def check(ep: str) -> None:
        start = time.perf_counter()
        error = await _check_endpoint(settings, ep)
        results[ep] = Health(ep, error is None, time.perf_counter() - start, error or "")

    async with trio.open_nursery() as nursery:
        for ep in settings.endpoints:
            nursery.start_soon(check, ep)
    return [results[ep] for ep in settings.endpoints]


async def _check_endpoint(settings: Settings, ep: str) -> str | None:
    """Why ``ep`` is unhealthy, or ``None`` if it is healthy.

    Its status must name a leader, then a linearizable read on it (one
    ReadIndex round through the leader) must succeed, all within the command
    timeout.  The client is given only ``ep``, so nothing fails over elsewhere.
    """
    timeout = settings.command_timeout
    with trio.move_on_after(timeout):
        try:
            async with settings.client([ep]) as client:
                status = await client.status(ep)
                if status.leader == 0:
                    return "no leader"
                await client.get(HEALTH_KEY, count_only=True)
        except (KvError, OSError) as exc:
            return describe(exc) or str(exc)
        return None
    return f"no healthy answer within {timeout:g}s"


COMMANDS = [endpoint]
