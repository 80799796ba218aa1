"""One clear line on stderr and a non-zero exit for every expected failure.

:class:`KvctlGroup` is the click group class of kvctl: it runs a command and
turns a :class:`~kvstore.client.KvError`, a configuration error, a corrupt data
directory, an operating-system error (address in use, permission denied, ...)
or a ``ValueError`` into a :class:`CliError`, which click prints as
``Error: <message>`` with exit code 1.  Usage errors stay click's (exit code 2).

Set ``KVCTL_DEBUG=1`` to get the traceback instead, when hunting a bug.
"""

from __future__ import annotations

import errno
import os
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

import click
import trio

from kvstore.client import KvError, OutcomeUnknown
from kvstore.local_cluster import ClusterError
from raft.snapshot_file import SnapshotError
from raft.wal import WALError

EXIT_FAILURE = 1
"""Exit code of a failed command (usage errors exit with 2, as click does)."""


class CliError(click.ClickException):
    """A failure to report as ``Error: <message>`` (one line) with exit code 1."""

    exit_code = EXIT_FAILURE

    def __init__(self, message: str) -> None:
        super().__init__(one_line(message))


def one_line(text: str) -> str:
    """``text`` with its line breaks folded into spaces."""
    return " ".join(part.strip() for part in text.splitlines() if part.strip()) or text


def describe(exc: BaseException) -> str | None:
    """The one-line message for an expected failure, or ``None`` for a bug."""
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            message = describe(inner)
            if message is not None:
                return message
        return None
    if isinstance(exc, OutcomeUnknown):
        text = exc.message
        if "may" not in text:
            text += " (the write may have been applied)"
        return text
    if isinstance(exc, KvError):
        return exc.message
    if isinstance(exc, ClusterError):
        return str(exc)
    if isinstance(exc, WALError | SnapshotError):
        return f"cannot open the data directory: {exc}"
    if isinstance(exc, OSError):
        return _describe_os_error(exc)
    if isinstance(exc, trio.TooSlowError):
        return "timed out"
    if isinstance(exc, ValueError):  # includes kvstore.config.ConfigError
        return str(exc) or type(exc).__name__
    return None


def _describe_os_error(exc: OSError) -> str:
    if exc.errno == errno.EADDRINUSE:
        return "address already in use" + (f": {exc.filename}" if exc.filename else "")
    if exc.errno == errno.EADDRNOTAVAIL:
        return f"cannot bind to that address (not local to this machine): {exc}"
    if exc.filename is not None and exc.strerror:
        return f"{exc.strerror}: {exc.filename}"
    return str(exc) or type(exc).__name__


def debug_enabled() -> bool:
    return os.environ.get("KVCTL_DEBUG", "") not in ("", "0")


class KvctlGroup(click.Group):
    """A click group whose commands report expected failures as one line.

    Usage errors print ``Error: <message> (see 'kvctl CMD --help')`` and exit
    with 2; failures print ``Error: <message>`` and exit with 1.
    """

    def main(  # type: ignore[override]
        self, args: Sequence[str] | None = None, prog_name: str | None = None, **extra: Any
    ) -> NoReturn:
        try:
            result = super().main(args, prog_name, standalone_mode=False, **extra)
        except click.UsageError as exc:
            hint = ""
            if exc.ctx is not None:
                hint = f" (see '{exc.ctx.command_path} --help')"
            _fail(f"{exc.format_message()}{hint}", exc.exit_code)
        except click.ClickException as exc:
            _fail(exc.format_message(), exc.exit_code)
        except click.Abort:
            _fail("aborted", 130)
        except BrokenPipeError:
            # The reader went away (``kvctl get --prefix "" | head``): not an error worth a line.
            _silence_stdout()
            sys.exit(EXIT_FAILURE)
        sys.exit(result if isinstance(result, int) else 0)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except Exception as exc:  # ExceptionGroup included
            if _is_broken_pipe(exc):
                # The reader went away (``kvctl watch ... | head``): main() handles it.
                raise BrokenPipeError from None
            message = describe(exc)
            if message is None or debug_enabled():
                raise
            raise CliError(message) from None


def _is_broken_pipe(exc: BaseException) -> bool:
    if isinstance(exc, BaseExceptionGroup):
        return all(_is_broken_pipe(inner) for inner in exc.exceptions)
    return isinstance(exc, BrokenPipeError)


def _fail(message: str, code: int) -> NoReturn:
    click.echo(f"Error: {one_line(message)}", err=True)
    sys.exit(code)


def _silence_stdout() -> None:
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
