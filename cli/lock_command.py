"""``kvctl lock NAME [COMMAND ARGS...]``: hold a distributed lock, as etcdctl.

The lock is :class:`kvstore.concurrency.Mutex` (etcd's algorithm: one key per
contender under ``NAME/``, first come first served) on a
:class:`~kvstore.concurrency.Session` of ``--ttl`` seconds kept alive by kvctl.

* Without a command: waits for the lock, prints the lock key (``NAME/<lease
  hex>``), and holds the lock until Ctrl-C (or SIGTERM); then releases it and
  exits 0.  Ctrl-C while still waiting just gives up (exit 0).
* With a command: waits for the lock, runs the command while holding it, with
  ``KVCTL_LOCK_KEY`` (the lock key) and ``KVCTL_LOCK_REV`` (the fencing token:
  the key's create revision, strictly greater for each later holder) in its
  environment, releases the lock when it exits, and exits with its exit code.
  Ctrl-C while waiting exits 130 without running the command; Ctrl-C while it
  runs is passed on to it (see :mod:`cli.child_process`).  A command that
  cannot be found exits 127, one that cannot be run 126, as in a shell.

**Losing the lock.**  If the session is lost while holding (no keep-alive
succeeded for a whole TTL, e.g. kvctl was paused or cut off from the
cluster, or the lease was revoked), kvctl says so on stderr and exits 1;
a running command is terminated first (SIGTERM, then SIGKILL after 5 s),
because another process may hold the lock by then.  That notice can come
too late (a paused process notices nothing while paused): a lock alone
cannot guarantee mutual exclusion.  Pass ``$KVCTL_LOCK_REV`` with every
write to the protected resource and have the resource reject tokens lower
than the highest it has seen; that closes the gap.
"""

from __future__ import annotations

import click

from cli.child_process import run_child
from cli.context import Settings, pass_settings, to_bytes
from cli.errors import CliError
from cli.output import echo_json, response_json
from cli.streaming import Interrupt, exit_with, first_of, run_until_interrupted
from kvstore.client import Client, KvError
from kvstore.concurrency import LockLost, Mutex, Session

EXIT_INTERRUPTED = 130
"""Exit code when Ctrl-C came before the lock was acquired and a command was given."""


class CommandNotFound(CliError):
    """The command does not exist (the lock was acquired, then released)."""

    exit_code = 127


class CommandNotRunnable(CliError):
    """The command exists but cannot be run (not executable, ...)."""

    exit_code = 126


def _display(key: bytes) -> str:
    return key.decode("utf-8", errors="surrogateescape")


@click.command(
    "lock",
    context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False},
)
@click.option(
    "--ttl",
    type=click.IntRange(min=1),
    default=10,
    show_default=True,
    help="Seconds of the session's lease: how long the lock outlives a stalled kvctl.",
)
@click.argument("name")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@pass_settings
def lock(settings: Settings, ttl: int, name: str, command: tuple[str, ...]) -> None:
    """Acquire the lock NAME; hold it until Ctrl-C, or run COMMAND while holding it.

    COMMAND gets KVCTL_LOCK_KEY and KVCTL_LOCK_REV (the fencing token) in its
    environment; kvctl exits with its exit code.  Options for kvctl go before
    NAME.
    """

    async def body(client: Client, interrupt: Interrupt) -> int:
        async with Session(client, ttl=ttl) as session:
            mutex = Mutex(session, to_bytes(name))
            with interrupt.cancels():
                try:
                    await mutex.lock()
                except LockLost as exc:
                    raise CliError(f"lock not acquired: {exc}") from None
            try:
                if interrupt.is_set:  # while waiting (or just as the lock was taken)
                    if command:
                        click.echo("Error: interrupted before the command ran", err=True)
                        return EXIT_INTERRUPTED
                    return 0
                if command:
                    return await _run_locked(mutex, command, interrupt)
                return await _hold(client, mutex, settings.write_out, interrupt)
            finally:
                await _release(mutex)

    exit_with(run_until_interrupted(settings, body))


async def _hold(client: Client, mutex: Mutex, write_out: str, interrupt: Interrupt) -> int:
    if write_out == "json":
        echo_json(response_json(await client.get(mutex.key)))
    else:
        click.echo(_display(mutex.key))
    why = await first_of(interrupted=interrupt.wait, lost=mutex.session.wait_lost)
    if why == "lost":
        raise CliError(f"lock lost: session {mutex.session.lease_id:x} expired")
    return 0


async def _run_locked(mutex: Mutex, command: tuple[str, ...], interrupt: Interrupt) -> int:
    env = {"KVCTL_LOCK_KEY": _display(mutex.key), "KVCTL_LOCK_REV": str(mutex.fencing_token)}

    def say_lost() -> None:
        click.echo(
            f"Error: lock lost: session {mutex.session.lease_id:x} expired;"
            f" terminating {command[0]}",
            err=True,
        )

    try:
        result = await run_child(command, env, interrupt, mutex.session.wait_lost, say_lost)
    except OSError as exc:
        # As shells, env and timeout do: 127 if not found, 126 if not executable.
        kind = CommandNotFound if isinstance(exc, FileNotFoundError) else CommandNotRunnable
        raise kind(f"cannot run {command[0]}: {exc.strerror or exc}") from None
    if result.revoked:
        return 1
    return result.exit_code


async def _release(mutex: Mutex) -> None:
    """Unlock; a failure only warns (the lease is revoked next, or expires)."""
    if mutex.session.is_lost:
        return
    try:
        await mutex.unlock()
    except KvError as exc:
        click.echo(f"warning: could not release the lock: {exc.message}", err=True)


COMMANDS = [lock]
