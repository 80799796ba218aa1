"""The global options every kvctl command shares, and running async code with a client."""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import click
import trio

from kvstore.client import Client, normalize_endpoint

T = TypeVar("T")

DEFAULT_ENDPOINT = "127.0.0.1:2379"
"""The first endpoint of ``kvctl cluster up`` with its default base port."""

OUTPUT_FORMATS = ("simple", "json", "table")


@dataclass(frozen=True)
class Settings:
    """The global options, as given on the command line or in the environment."""

    endpoints: tuple[str, ...] = (DEFAULT_ENDPOINT,)
    command_timeout: float = 5.0
    dial_timeout: float = 2.0
    write_out: str = "simple"

    def client(self, endpoints: Sequence[str] | None = None) -> Client:
        """A client over ``endpoints`` (all of the global ones by default)."""
        return Client(
            list(endpoints or self.endpoints),
            request_timeout=self.command_timeout,
            connect_timeout=min(self.dial_timeout, self.command_timeout),
        )

    def with_client(self, action: Callable[[Client], Awaitable[T]]) -> T:
        """Run ``action(client)`` in a fresh trio loop and return its result."""

        async def main() -> T:
            async with self.client() as client:
                return await action(client)

        result: T = trio.run(main)
        return result


def pass_settings(command: Callable[..., T]) -> Callable[..., T]:
    """Hand ``command`` the :class:`Settings` as its first argument.

    As in etcdctl, the global options may also follow the command
    (``kvctl get k -w json``); given there, they override the group's.
    """

    @functools.wraps(command)
    def wrapper(
        *args: Any,
        write_out: str | None,
        endpoints: str | None,
        command_timeout: float | None,
        **kwargs: Any,
    ) -> T:
        settings = click.get_current_context().find_object(Settings) or Settings()
        if write_out is not None:
            settings = dataclasses.replace(settings, write_out=write_out)
        if endpoints is not None:
            settings = dataclasses.replace(settings, endpoints=parse_endpoints(endpoints))
        if command_timeout is not None:
            settings = dataclasses.replace(settings, command_timeout=command_timeout)
        return command(settings, *args, **kwargs)

    for option in (
        click.option(
            "--command-timeout",
            type=click.FloatRange(min=0, min_open=True),
            hidden=True,
        ),
        click.option("--endpoints", hidden=True),
        click.option("-w", "--write-out", type=click.Choice(OUTPUT_FORMATS), help="Output format."),
    ):
        wrapper = option(wrapper)
    return wrapper


def parse_endpoints(text: str) -> tuple[str, ...]:
    """``"h1:p1,h2:p2"`` as normalized endpoints; a usage error if malformed or empty."""
    try:
        endpoints = tuple(
            dict.fromkeys(normalize_endpoint(item) for item in text.split(",") if item.strip())
        )
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="'--endpoints'") from None
    if not endpoints:
        raise click.BadParameter("no endpoint given", param_hint="'--endpoints'")
    return endpoints


def to_bytes(text: str) -> bytes:
    """A command-line argument as the bytes the user typed (undoing surrogate escapes)."""
    return os.fsencode(text)
