"""Running a user's command while kvctl holds something (a lock) for it.

The child inherits kvctl's standard input, output and error, and its
environment plus the variables given.  How it ends:

* It exits by itself: its exit code is returned (``128 + N`` if a signal N
  killed it, as shells report it).
* kvctl gets SIGTERM: the child gets SIGTERM at once.  kvctl gets SIGINT:
  when Ctrl-C was typed in a terminal, the child got the same SIGINT from the
  terminal already, so kvctl first gives it :data:`SIGINT_GRACE` seconds to
  exit by itself, and only then forwards SIGINT (when someone signalled kvctl
  alone).  Either way kvctl then waits for the child to exit and returns its
  exit code.
* What kvctl holds is lost (``revoked`` returns first): the child is
  terminated (SIGTERM, then SIGKILL after :data:`KILL_GRACE` seconds), since
  it must not go on believing it is protected; :attr:`ChildResult.revoked`
  tells the caller.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass

import trio

from cli.streaming import Interrupt, first_of

SIGINT_GRACE = 0.5
"""Seconds a child may take to exit on its own after a SIGINT before kvctl forwards one."""

KILL_GRACE = 5.0
"""Seconds between SIGTERM and SIGKILL when the child must be stopped."""


@dataclass(frozen=True)
class ChildResult:
    """How the child ended."""

    exit_code: int
    """Its exit code (``128 + N`` if killed by signal N)."""
    revoked: bool = False
    """Whether it was terminated because what protected it was lost."""


def exit_code_of(returncode: int) -> int:
    """A ``Popen.returncode`` as a shell's exit status (``-N`` becomes ``128 + N``)."""
    return 128 - returncode if returncode < 0 else returncode


async def run_child(
    argv: Sequence[str],
    extra_env: Mapping[str, str],
    interrupt: Interrupt,
    revoked: Callable[[], Awaitable[object]],
    on_revoked: Callable[[], None] = lambda: None,
) -> ChildResult:
    """Run ``argv`` to its end as described in the module docstring.

    ``revoked`` returns when the protection is lost; ``on_revoked`` is called
    then, before the child is stopped (to say so on stderr).  Raises
    ``OSError`` if the command cannot be started.
    """
    env = {**os.environ, **extra_env}
    process = await trio.lowlevel.open_process(list(argv), env=env, stdin=None)
    try:
        why = await first_of(exited=process.wait, interrupted=interrupt.wait, revoked=revoked)
        if why == "revoked":
            on_revoked()
            await _stop(process)
            return ChildResult(exit_code_of(await process.wait()), revoked=True)
        if why == "interrupted":
            await _pass_on(process, interrupt.signum or signal.SIGINT)
            why = await first_of(exited=process.wait, revoked=revoked)
            if why == "revoked":
                on_revoked()
                await _stop(process)
                return ChildResult(exit_code_of(await process.wait()), revoked=True)
        return ChildResult(exit_code_of(await process.wait()))
    finally:
        if process.returncode is None:  # cancelled from outside: never leave it behind
            with trio.CancelScope(shield=True):
                await _stop(process)


async def _pass_on(process: trio.Process, signum: int) -> None:
    """Forward a stop signal to the child (see the module docstring)."""
    if signum == signal.SIGINT:
        with trio.move_on_after(SIGINT_GRACE):
            await process.wait()
    if process.returncode is None:
        process.send_signal(signum)


async def _stop(process: trio.Process) -> None:
    """SIGTERM, then SIGKILL if it is still there after :data:`KILL_GRACE` seconds."""
    if process.returncode is None:
        process.terminate()
    with trio.move_on_after(KILL_GRACE):
        await process.wait()
    if process.returncode is None:
        process.kill()
        await process.wait()
