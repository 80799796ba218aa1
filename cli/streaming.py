"""Running a long-lived command (watch, lock, elect, ...) until Ctrl-C.

A streaming command runs :func:`run_until_interrupted`: a fresh trio loop, a
client, and SIGINT (Ctrl-C) or SIGTERM turned into an :class:`Interrupt` the
command can wait on (``await interrupt.wait()``, to release what it holds
cleanly afterwards) or be cancelled by (``with interrupt.cancels(): ...``, for
phases such as waiting for a lock that should simply stop).  A stop signal is
not an error: the command returns its exit code (0) and prints no traceback.
"""

from __future__ import annotations

import functools
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import NoReturn

import click
import trio

from cli.context import Settings
from kvstore.client import Client

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
"""The signals that end a streaming command (cleanly, exit code 0)."""


class Interrupt:
    """A stop signal, as an event to wait on and a way to cancel the current phase."""

    def __init__(self) -> None:
        self._event = trio.Event()
        self._scopes: set[trio.CancelScope] = set()
        self.signum: int | None = None
        """The signal received, if any."""

    @property
    def is_set(self) -> bool:
        """Whether a stop signal has arrived."""
        return self._event.is_set()

    async def wait(self) -> None:
        """Return once a stop signal has arrived."""
        await self._event.wait()

    def fire(self, signum: int) -> None:
        """Record ``signum`` and cancel every phase in :meth:`cancels`."""
        if self.signum is None:
            self.signum = signum
        self._event.set()
        for scope in list(self._scopes):
            scope.cancel()

    @contextmanager
    def cancels(self) -> Iterator[trio.CancelScope]:
        """A cancel scope that a stop signal cancels (at once if one arrived already)."""
        scope = trio.CancelScope()
        if self.is_set:
            scope.cancel()
        self._scopes.add(scope)
        try:
            with scope:
                yield scope
        finally:
            self._scopes.discard(scope)


async def sleep_unless_interrupted(interrupt: Interrupt, seconds: float) -> bool:
    """Sleep ``seconds``; return False early (at once) if a stop signal arrives."""
    with interrupt.cancels():
        await trio.sleep(seconds)
        return True
    return False


Body = Callable[[Client, Interrupt], Awaitable[int]]
"""A streaming command's work: returns the exit code."""


def run_until_interrupted(settings: Settings, body: Body) -> int:
    """Run ``body(client, interrupt)`` in a fresh trio loop; return its exit code.

    Stop signals are caught from the start of the loop to its end, so Ctrl-C
    never interrupts the body halfway with a ``KeyboardInterrupt``.
    """

    async def main() -> int:
        interrupt = Interrupt()
        with trio.open_signal_receiver(*STOP_SIGNALS) as signals:
            async with settings.client() as client:
                client.start_background_task(
                    functools.partial(_relay, signals, interrupt), name="kvctl stop signals"
                )
                return await body(client, interrupt)

    code: int = trio.run(main)
    return code


async def _relay(signals: AsyncIterator[int], interrupt: Interrupt) -> None:
    async for signum in signals:
        interrupt.fire(signum)


def exit_with(code: int) -> None:
    """End the command with exit ``code`` (nothing happens for 0)."""
    if code:
        _exit(code)


def _exit(code: int) -> NoReturn:
    raise click.exceptions.Exit(code)


async def first_of(**waiters: Callable[[], Awaitable[object]]) -> str:
    """Run the ``waiters`` together; return the name of the first to finish
    (the others are cancelled).  Each must not raise."""
    winner: list[str] = []
    async with trio.open_nursery() as nursery:
        for name, waiter in waiters.items():
            nursery.start_soon(_race, name, waiter, winner, nursery.cancel_scope)
    return winner[0]


async def _race(
    name: str,
    waiter: Callable[[], Awaitable[object]],
    winner: list[str],
    scope: trio.CancelScope,
) -> None:
    await waiter()
    if not winner:
        winner.append(name)
    scope.cancel()
