"""etcdctl's text format for a transaction, as ``kvctl txn`` reads it from stdin.

Three sections, each ended by a blank line (or the end of input)::

    mod("key1") > "0"
    value("key2") = "hello"

    put key1 "new value"
    get key2

    del key1 --prev-kv

First the compares, one per line: ``TARGET("key") OP "value"`` (or
``TARGET("key", "range_end")`` for a range), with TARGET one of ``value``
(``val``), ``version`` (``ver``), ``create`` (``c``), ``mod`` (``m``) and
``lease``, and OP one of ``=``, ``!=``, ``<``, ``>``.  Strings are quoted as in
Go (backslash escapes, ``\\xNN`` for a raw byte); numbers may be quoted or not;
a lease id is hexadecimal, as etcdctl prints it.

Then the operations to run if every compare holds, then those to run
otherwise: ``put KEY VALUE``, ``get KEY [RANGE_END]``, ``del KEY [RANGE_END]``,
with the flags of the matching kvctl commands (``--prefix``, ``--prev-kv``,
``--limit``, ...) and shell-style quoting.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import click

from cli.context import to_bytes
from cli.lease_command import lease_id_callback
from kvstore import api
from kvstore.api import CompareResult, CompareTarget, SortOrder, SortTarget
from kvstore.txn import Op

PROMPTS = (
    "compares:",
    "success requests (get, put, del):",
    "failure requests (get, put, del):",
)
"""What ``kvctl txn -i`` prints before each section, as etcdctl does."""


class TxnParseError(ValueError):
    """A line of the txn text is malformed; the message quotes it."""


@dataclass
class ParsedTxn:
    compare: list[api.Compare] = field(default_factory=list)
    success: list[api.RequestOp] = field(default_factory=list)
    failure: list[api.RequestOp] = field(default_factory=list)


def read_txn(lines: Iterator[str], prompt: Callable[[str], None] | None = None) -> ParsedTxn:
    """Parse the three sections from ``lines``; ``prompt`` announces each (``-i``)."""
    sections: list[list[str]] = []
    for title in PROMPTS:
        if prompt is not None:
            prompt(title)
        sections.append(list(_section(lines)))
    compares, success, failure = sections
    return ParsedTxn(
        compare=[parse_compare(line) for line in compares],
        success=[parse_op(line) for line in success],
        failure=[parse_op(line) for line in failure],
    )


def _section(lines: Iterator[str]) -> Iterator[str]:
    for raw in lines:
        line = raw.strip()
        if not line:
            return
        yield line


# -- Compares -------------------------------------------------------------------------

_TARGETS = {
    "value": CompareTarget.VALUE,
    "val": CompareTarget.VALUE,
    "version": CompareTarget.VERSION,
    "ver": CompareTarget.VERSION,
    "create": CompareTarget.CREATE,
    "c": CompareTarget.CREATE,
    "mod": CompareTarget.MOD,
    "m": CompareTarget.MOD,
    "lease": CompareTarget.LEASE,
}
_OPERATORS = {
    "=": CompareResult.EQUAL,
    "==": CompareResult.EQUAL,
    "!=": CompareResult.NOT_EQUAL,
    "<": CompareResult.LESS,
    ">": CompareResult.GREATER,
}
_HEAD = re.compile(r"\s*([A-Za-z]+)\s*\(\s*")
_OPERATOR = re.compile(r"\s*(==|!=|=|<|>)\s*")
_BARE = re.compile(r"[^\s\"]+")


def parse_compare(line: str) -> api.Compare:
    """One compare line, e.g. ``mod("k") > "3"`` or ``value("a", "c") = "x"``."""
    head = _HEAD.match(line)
    if head is None or head.group(1).lower() not in _TARGETS:
        targets = ", ".join(sorted({"value", "version", "create", "mod", "lease"}))
        raise TxnParseError(f'malformed compare {line!r}: expected one of {targets}("key")')
    target = _TARGETS[head.group(1).lower()]
    key, pos = scan_quoted(line, head.end(), line)
    range_end = b""
    pos = _skip_space(line, pos)
    if line.startswith(",", pos):
        range_end, pos = scan_quoted(line, _skip_space(line, pos + 1), line)
        pos = _skip_space(line, pos)
    if not line.startswith(")", pos):
        raise TxnParseError(f"malformed compare {line!r}: expected ')' after the key")
    operator = _OPERATOR.match(line, pos + 1)
    if operator is None:
        raise TxnParseError(f"malformed compare {line!r}: expected =, !=, < or >")
    pos = operator.end()
    if line.startswith('"', pos) or line.startswith("`", pos):
        raw, pos = scan_quoted(line, pos, line)
    else:
        bare = _BARE.match(line, pos)
        if bare is None:
            raise TxnParseError(f"malformed compare {line!r}: no value after the operator")
        raw, pos = to_bytes(bare.group(0)), bare.end()
    if line[pos:].strip():
        raise TxnParseError(f"malformed compare {line!r}: unexpected {line[pos:].strip()!r}")
    return api.Compare(
        key=key,
        target=target,
        result=_OPERATORS[operator.group(1)],
        value=_compare_value(target, raw, line),
        range_end=range_end,
    )


def _compare_value(target: CompareTarget, raw: bytes, line: str) -> int | bytes:
    if target is CompareTarget.VALUE:
        return raw
    text = raw.decode("utf-8", errors="replace").strip()
    try:
        return int(text, 16) if target is CompareTarget.LEASE else int(text, 10)
    except ValueError:
        kind = "a hexadecimal lease id" if target is CompareTarget.LEASE else "an integer"
        raise TxnParseError(f"malformed compare {line!r}: {text!r} is not {kind}") from None


def _skip_space(text: str, pos: int) -> int:
    while pos < len(text) and text[pos].isspace():
        pos += 1
    return pos


_ESCAPES = {
    "a": b"\a",
    "b": b"\b",
    "f": b"\f",
    "n": b"\n",
    "r": b"\r",
    "t": b"\t",
    "v": b"\v",
    "\\": b"\\",
    '"': b'"',
    "'": b"'",
}


def scan_quoted(text: str, pos: int, line: str) -> tuple[bytes, int]:
    """The Go-quoted string at ``text[pos]`` (``"..."`` or raw backquotes) as bytes,
    and the position after it."""
    if text.startswith("`", pos):
        end = text.find("`", pos + 1)
        if end < 0:
            raise TxnParseError(f"malformed compare {line!r}: unterminated `string`")
        return to_bytes(text[pos + 1 : end]), end + 1
    if not text.startswith('"', pos):
        raise TxnParseError(f"malformed compare {line!r}: expected a quoted string")
    out = bytearray()
    i = pos + 1
    while i < len(text):
        char = text[i]
        if char == '"':
            return bytes(out), i + 1
        if char != "\\":
            out += to_bytes(char)
            i += 1
            continue
        escape = text[i + 1 : i + 2]
        if escape in _ESCAPES:
            out += _ESCAPES[escape]
            i += 2
        elif escape == "x" and re.fullmatch(r"[0-9A-Fa-f]{2}", text[i + 2 : i + 4]):
            out.append(int(text[i + 2 : i + 4], 16))
            i += 4
        elif escape in ("u", "U"):
            digits = 4 if escape == "u" else 8
            code = text[i + 2 : i + 2 + digits]
            if not re.fullmatch(rf"[0-9A-Fa-f]{{{digits}}}", code):
                raise TxnParseError(f"malformed compare {line!r}: bad \\{escape} escape")
            out += chr(int(code, 16)).encode("utf-8", errors="surrogatepass")
            i += 2 + digits
        else:
            raise TxnParseError(f"malformed compare {line!r}: unknown escape \\{escape}")
    raise TxnParseError(f"malformed compare {line!r}: unterminated string")


# -- Operations -----------------------------------------------------------------------

SORT_TARGETS = {
    "KEY": SortTarget.KEY,
    "VERSION": SortTarget.VERSION,
    "CREATE": SortTarget.CREATE,
    "MODIFY": SortTarget.MOD,
    "VALUE": SortTarget.VALUE,
}


def sort_options(order: str | None, sort_by: str | None) -> tuple[SortOrder, SortTarget]:
    """etcdctl's rule: a sort target alone sorts ascending; an order alone sorts by key."""
    if order is None and sort_by is None:
        return SortOrder.NONE, SortTarget.KEY
    sort_order = SortOrder[order.upper()] if order else SortOrder.ASCEND
    return sort_order, SORT_TARGETS[sort_by.upper()] if sort_by else SortTarget.KEY


def range_args(
    key: str, range_end: str | None, prefix: bool, from_key: bool
) -> tuple[bytes, bytes | None]:
    """Validate how a range was given: at most one of RANGE_END, --prefix, --from-key."""
    if (range_end is not None) + prefix + from_key > 1:
        raise click.UsageError("give at most one of RANGE_END, --prefix and --from-key")
    return to_bytes(key), None if range_end is None else to_bytes(range_end)


@click.command("put")
@click.argument("key")
@click.argument("value")
@click.option("--prev-kv", is_flag=True)
@click.option("--ignore-value", is_flag=True)
@click.option("--ignore-lease", is_flag=True)
@click.option("--lease", "lease_id", default="0", callback=lease_id_callback)
def _put_op(
    key: str, value: str, prev_kv: bool, ignore_value: bool, ignore_lease: bool, lease_id: int
) -> api.RequestOp:
    return Op.put(
        to_bytes(key),
        to_bytes(value),
        lease=lease_id,
        prev_kv=prev_kv,
        ignore_value=ignore_value,
        ignore_lease=ignore_lease,
    )


@click.command("get")
@click.argument("key")
@click.argument("range_end", required=False)
@click.option("--prefix", is_flag=True)
@click.option("--from-key", is_flag=True)
@click.option("--limit", type=click.IntRange(min=0), default=0)
@click.option("--rev", type=click.IntRange(min=0), default=0)
@click.option("--keys-only", is_flag=True)
@click.option("--count-only", is_flag=True)
@click.option("--order", type=click.Choice(["ASCEND", "DESCEND"], case_sensitive=False))
@click.option("--sort-by", type=click.Choice(list(SORT_TARGETS), case_sensitive=False))
def _get_op(
    key: str,
    range_end: str | None,
    prefix: bool,
    from_key: bool,
    limit: int,
    rev: int,
    keys_only: bool,
    count_only: bool,
    order: str | None,
    sort_by: str | None,
) -> api.RequestOp:
    start, end = range_args(key, range_end, prefix, from_key)
    sort_order, sort_target = sort_options(order, sort_by)
    return Op.get(
        start,
        end,
        prefix=prefix,
        from_key=from_key,
        limit=limit,
        revision=rev,
        keys_only=keys_only,
        count_only=count_only,
        sort_order=sort_order,
        sort_target=sort_target,
    )


@click.command("del")
@click.argument("key")
@click.argument("range_end", required=False)
@click.option("--prefix", is_flag=True)
@click.option("--from-key", is_flag=True)
@click.option("--prev-kv", is_flag=True)
def _del_op(
    key: str, range_end: str | None, prefix: bool, from_key: bool, prev_kv: bool
) -> api.RequestOp:
    start, end = range_args(key, range_end, prefix, from_key)
    return Op.delete(start, end, prefix=prefix, from_key=from_key, prev_kv=prev_kv)


_OPS: dict[str, click.Command] = {
    "put": _put_op,
    "get": _get_op,
    "range": _get_op,
    "del": _del_op,
    "delete": _del_op,
}


def parse_op(line: str) -> api.RequestOp:
    """One operation line, e.g. ``put k "a value"`` or ``get k --prefix``."""
    try:
        words = shlex.split(line)
    except ValueError as exc:
        raise TxnParseError(f"malformed request {line!r}: {exc}") from None
    if not words or words[0].lower() not in _OPS:
        raise TxnParseError(f"malformed request {line!r}: expected put, get or del")
    command = _OPS[words[0].lower()]
    try:
        with command.make_context(words[0], words[1:]) as ctx:
            op: api.RequestOp = command.invoke(ctx)
    except click.ClickException as exc:
        raise TxnParseError(f"malformed request {line!r}: {exc.format_message()}") from None
    except click.exceptions.Exit:
        raise TxnParseError(f"malformed request {line!r}") from None
    return op
