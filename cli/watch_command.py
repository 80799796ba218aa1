"""``kvctl watch``: stream the changes to a key, a range or a prefix until Ctrl-C.

Output, as etcdctl prints it:

* **simple**: per event, its type (``PUT`` or ``DELETE``), then the key's line,
  then the value's line (empty for a delete).  With ``--prev-kv``, the
  previous key and value come between the type and the new key and value,
  when the key had a previous version::

      PUT
      app/x
      old
      app/x
      new

* **json** (and **table**, which has no table form): one JSON object per
  response, shaped as etcdctl's ``-w json`` (Go's encoding of its
  ``clientv3.WatchResponse``: capitalized ``Header``, ``Events``,
  ``CompactRevision``, ``Canceled``, ``Created``; each event has ``kv`` and
  ``prev_kv`` with base64 keys and values, and ``"type": 1`` for a delete).

The watch survives a fail-over to another member without a gap or a duplicate
(the client resumes it).  A start revision (``--rev``) whose events were
compacted prints one error line naming the compaction revision, and exits 1
(also if the history a resuming watch needs was compacted meanwhile).
Ctrl-C (or SIGTERM) ends the watch with exit code 0.
"""

from __future__ import annotations

from typing import Any

import click

from cli.context import Settings, pass_settings
from cli.errors import CliError
from cli.output import echo_json, header_json, kv_json
from cli.streaming import Interrupt, exit_with, run_until_interrupted
from cli.txn_parser import range_args
from kvstore.api import Event, EventType, KeyValue, WatchResponse
from kvstore.client import Client, CompactedError


def event_json(event: Event) -> dict[str, Any]:
    """One event as Go's JSON encoding of etcd's ``mvccpb.Event`` (zero fields left out)."""
    out: dict[str, Any] = {}
    if event.type != EventType.PUT:
        out["type"] = int(event.type)
    out["kv"] = kv_json(event.kv)
    if event.prev_kv is not None:
        out["prev_kv"] = kv_json(event.prev_kv)
    return out


def watch_response_json(response: WatchResponse) -> dict[str, Any]:
    """A watch response as etcdctl's ``watch -w json`` prints it."""
    return {
        "Header": header_json(response.header),
        "Events": [event_json(event) for event in response.events],
        "CompactRevision": response.compact_revision,
        "Canceled": response.canceled,
        "Created": response.created,
    }


def _echo_kv(kv: KeyValue) -> None:
    click.echo(kv.key)
    click.echo(kv.value)


def print_events(response: WatchResponse, write_out: str) -> None:
    """Print a response's events in ``write_out`` format (progress notifications: nothing)."""
    if not response.events:
        return
    if write_out == "simple":
        for event in response.events:
            click.echo(event.type.name)
            if event.prev_kv is not None:
                _echo_kv(event.prev_kv)
            _echo_kv(event.kv)
    else:
        echo_json(watch_response_json(response))


@click.command("watch")
@click.argument("key")
@click.argument("range_end", required=False)
@click.option("--prefix", is_flag=True, help="Watch every key with the prefix KEY.")
@click.option("--from-key", is_flag=True, help="Watch every key >= KEY.")
@click.option(
    "--rev",
    type=click.IntRange(min=0),
    default=0,
    help="Start from this revision, inclusive (0 = the next revision).",
)
@click.option("--prev-kv", is_flag=True, help="Also print each key's previous key and value.")
@pass_settings
def watch(
    settings: Settings,
    key: str,
    range_end: str | None,
    prefix: bool,
    from_key: bool,
    rev: int,
    prev_kv: bool,
) -> None:
    """Print the changes to KEY, or to the keys in [KEY, RANGE_END), until Ctrl-C.

    Each event is three lines: PUT or DELETE, the key, the value.
    """
    start, end = range_args(key, range_end, prefix, from_key)

    async def body(client: Client, interrupt: Interrupt) -> int:
        stream = client.watch(
            start, end, prefix=prefix, from_key=from_key, start_revision=rev, prev_kv=prev_kv
        )
        with interrupt.cancels():
            try:
                async with stream:
                    async for response in stream:
                        print_events(response, settings.write_out)
            except CompactedError as exc:
                raise CliError(
                    f"watch canceled: the events from revision {stream.next_revision or rev}"
                    f" are compacted (history compacted through revision {exc.compact_revision});"
                    " get the keys, then watch from the revision after that read"
                ) from None
        return 0

    exit_with(run_until_interrupted(settings, body))


COMMANDS = [watch]
