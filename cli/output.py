"""Printing responses as etcdctl does: ``simple`` text, ``json`` and ``table``.

* **simple**: put prints ``OK``; get prints each key's line then its value's
  line; delete prints the number deleted; txn prints ``SUCCESS`` or ``FAILURE``
  then each operation's result after a blank line.
* **json**: one JSON object per response, shaped like etcdctl's: ``header``
  (``cluster_id``, ``member_id``, ``revision``, ``raft_term``), ``kvs`` with
  ``key`` and ``value`` base64-encoded, ``count``, ``more``, ... with zero and
  false fields left out, as proto3 JSON does.  Integers stay JSON numbers, as
  in etcdctl's output.
* **table**: an ASCII table for ``get``, ``endpoint status`` and ``endpoint
  health``; the other commands print their simple form.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import click

from kvstore import api
from kvstore.api import (
    CompactionResponse,
    DeleteRangeResponse,
    KeyValue,
    PutResponse,
    RangeResponse,
    ResponseHeader,
    StatusResponse,
    TxnResponse,
)

JsonObject = dict[str, Any]

# -- JSON -----------------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _without_zeros(fields: Iterable[tuple[str, Any]]) -> JsonObject:
    """The fields whose value is not zero, false, empty or None (proto3 JSON)."""
    return {name: value for name, value in fields if value not in (0, False, "", None, [], {})}


def header_json(header: ResponseHeader) -> JsonObject:
    return _without_zeros(
        [
            ("cluster_id", header.cluster_id),
            ("member_id", header.member_id),
            ("revision", header.revision),
            ("raft_term", header.raft_term),
        ]
    )


def kv_json(kv: KeyValue) -> JsonObject:
    return _without_zeros(
        [
            ("key", _b64(kv.key)),
            ("create_revision", kv.create_revision),
            ("mod_revision", kv.mod_revision),
            ("version", kv.version),
            ("value", _b64(kv.value)),
            ("lease", kv.lease),
        ]
    )


def response_json(response: api.Response) -> JsonObject:
    """A KV response as etcdctl's ``-w json`` shows it."""
    header = ("header", header_json(response.header))
    if isinstance(response, RangeResponse):
        kvs = [kv_json(kv) for kv in response.kvs]
        return _without_zeros(
            [header, ("kvs", kvs), ("more", response.more), ("count", response.count)]
        )
    if isinstance(response, PutResponse):
        prev = kv_json(response.prev_kv) if response.prev_kv is not None else None
        return _without_zeros([header, ("prev_kv", prev)])
    if isinstance(response, DeleteRangeResponse):
        prev_kvs = [kv_json(kv) for kv in response.prev_kvs]
        return _without_zeros([header, ("deleted", response.deleted), ("prev_kvs", prev_kvs)])
    if isinstance(response, TxnResponse):
        responses = [{_RESPONSE_OP_NAMES[type(r)]: response_json(r)} for r in response.responses]
        return _without_zeros([header, ("succeeded", response.succeeded), ("responses", responses)])
    if isinstance(response, StatusResponse):
        return status_json(response)
    return _without_zeros([header])


_RESPONSE_OP_NAMES: dict[type, str] = {
    RangeResponse: "response_range",
    PutResponse: "response_put",
    DeleteRangeResponse: "response_delete_range",
    TxnResponse: "response_txn",
}


def status_json(status: StatusResponse) -> JsonObject:
    """A member's status, with etcdctl's field names plus ``revision`` and ``keys``."""
    return _without_zeros(
        [
            ("header", header_json(status.header)),
            ("name", status.name),
            ("version", status.version),
            ("leader", status.leader),
            ("raftIndex", status.raft_index),
            ("raftTerm", status.raft_term),
            ("raftAppliedIndex", status.raft_applied_index),
            ("revision", status.revision),
            ("compactRevision", status.compact_revision),
            ("keys", status.keys),
            ("isLearner", status.is_learner),
        ]
    )


def echo_json(value: Any) -> None:
    """One JSON value on one line."""
    click.echo(json.dumps(value, separators=(",", ":")))


# -- Tables ---------------------------------------------------------------------------


def render_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """An ASCII table with a ruled header; numbers and booleans right-aligned."""
    cells = [[_cell_text(value) for value in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    rule = "+" + "+".join("-" * (w + 2) for w in widths) + "+"

    def line(values: Sequence[str], aligns: Sequence[str]) -> str:
        parts = [_align(v, w, a) for v, w, a in zip(values, widths, aligns, strict=True)]
        return "| " + " | ".join(parts) + " |"

    out = [rule, line(list(headers), ["^"] * len(headers)), rule]
    for raw, row in zip(rows, cells, strict=True):
        aligns = [">" if isinstance(v, int | float) else "<" for v in raw]
        out.append(line(row, aligns))
    if rows:
        out.append(rule)
    return "\n".join(out)


def _cell_text(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


def _align(text: str, width: int, how: str) -> str:
    if how == "^":
        return text.center(width)
    return text.rjust(width) if how == ">" else text.ljust(width)


# -- Simple text ----------------------------------------------------------------------


@dataclass(frozen=True)
class GetStyle:
    """How ``get`` prints its keys: all fields, keys only, values only, the count."""

    keys_only: bool = False
    value_only: bool = False
    count_only: bool = False


def _echo_kv(kv: KeyValue, value_only: bool = False) -> None:
    if not value_only:
        click.echo(kv.key)
    click.echo(kv.value)


def _simple(response: api.Response, style: GetStyle = GetStyle()) -> None:
    if isinstance(response, PutResponse):
        click.echo("OK")
        if response.prev_kv is not None:
            _echo_kv(response.prev_kv)
    elif isinstance(response, RangeResponse):
        if style.count_only:
            click.echo(str(response.count))
            return
        for kv in response.kvs:
            _echo_kv(kv, style.value_only)
    elif isinstance(response, DeleteRangeResponse):
        click.echo(str(response.deleted))
        for kv in response.prev_kvs:
            _echo_kv(kv)
    elif isinstance(response, TxnResponse):
        click.echo("SUCCESS" if response.succeeded else "FAILURE")
        for op_response in response.responses:
            click.echo("")
            _simple(op_response)
    elif isinstance(response, CompactionResponse):
        click.echo("OK")


# -- Entry points ---------------------------------------------------------------------


def print_response(response: api.Response, write_out: str, style: GetStyle = GetStyle()) -> None:
    """Print a put, get, delete or txn response in ``write_out`` format."""
    if write_out == "json":
        echo_json(response_json(response))
    elif write_out == "table" and isinstance(response, RangeResponse) and not style.count_only:
        click.echo(kv_table(response.kvs, style))
    else:
        _simple(response, style)


def kv_table(kvs: Sequence[KeyValue], style: GetStyle = GetStyle()) -> str:
    if style.keys_only:
        return render_table(["KEY"], [[kv.key] for kv in kvs])
    if style.value_only:
        return render_table(["VALUE"], [[kv.value] for kv in kvs])
    headers = ["KEY", "VALUE", "CREATE REVISION", "MOD REVISION", "VERSION", "LEASE"]
    rows = [
        [kv.key, kv.value, kv.create_revision, kv.mod_revision, kv.version, f"{kv.lease:x}"]
        for kv in kvs
    ]
    return render_table(headers, rows)


def print_compaction(response: CompactionResponse, revision: int, write_out: str) -> None:
    if write_out == "json":
        echo_json(response_json(response))
    else:
        click.echo(f"compacted revision {revision}")


STATUS_HEADERS = [
    "ENDPOINT",
    "ID",
    "LEADER",
    "VERSION",
    "IS LEADER",
    "RAFT TERM",
    "RAFT INDEX",
    "RAFT APPLIED INDEX",
    "REVISION",
    "KEYS",
]


def status_row(endpoint: str, status: StatusResponse) -> list[object]:
    """One member's status: the columns of :data:`STATUS_HEADERS`."""
    member = status.header.member_id
    return [
        endpoint,
        f"{member:x}",
        f"{status.leader:x}",
        status.version,
        status.leader == member and member != 0,
        status.raft_term,
        status.raft_index,
        status.raft_applied_index,
        status.revision,
        status.keys,
    ]


def print_status(statuses: Sequence[tuple[str, StatusResponse]], write_out: str) -> None:
    if write_out == "json":
        echo_json([{"Endpoint": ep, "Status": status_json(s)} for ep, s in statuses])
        return
    rows = [status_row(ep, s) for ep, s in statuses]
    if write_out == "table":
        click.echo(render_table(STATUS_HEADERS, rows))
        return
    for row in rows:
        click.echo(", ".join(_cell_text(v) for v in row))


@dataclass(frozen=True)
class Health:
    """The outcome of one endpoint's health check."""

    endpoint: str
    healthy: bool
    took: float
    """Seconds the check took."""
    error: str = ""

    @property
    def took_text(self) -> str:
        return _duration(self.took)


def _duration(seconds: float) -> str:
    if seconds < 1.0:
        return f"{seconds * 1000:.1f}ms"
    return f"{seconds:.3f}s"


def print_health(results: Sequence[Health], write_out: str) -> None:
    if write_out == "json":
        echo_json(
            [
                {
                    "endpoint": r.endpoint,
                    "health": r.healthy,  # false is an answer, not a default to leave out
                    **_without_zeros([("took", r.took_text), ("error", r.error)]),
                }
                for r in results
            ]
        )
        return
    if write_out == "table":
        rows = [[r.endpoint, r.healthy, r.took_text, r.error] for r in results]
        click.echo(render_table(["ENDPOINT", "HEALTH", "TOOK", "ERROR"], rows))
        return
    for r in results:
        if r.healthy:
            click.echo(
                f"{r.endpoint} is healthy: successfully committed proposal: took = {r.took_text}"
            )
        else:
            click.echo(f"{r.endpoint} is unhealthy: failed to commit proposal: {r.error}", err=True)
