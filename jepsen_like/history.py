"""History format of the jepsen_like harness, and pairing into complete operations.

A *history* is the list of :class:`Operation` events the clients recorded, in
the order they happened (one JSON object per line in ``history.jsonl``).  Each
client operation appears twice: once as an ``invoke`` (what was asked), once as
a completion (what came back):

* ``ok``   -- the operation took effect; ``result`` / ``succeeded`` /
  ``revision`` hold what the server returned.
* ``fail`` -- the operation definitely did *not* take effect (a definite
  error such as a failed precondition or "not leader" before proposing).
* ``info`` -- the outcome is unknown (timeout, connection lost): the operation
  may or may not have taken effect, at any time after its invocation.

An invocation without any completion at the end of the history is treated like
``info``.  :func:`complete_operations` pairs events into :class:`CompleteOp`
records with a call and a return time; indefinite operations get
``ret = math.inf``, and ``fail`` ones are dropped (unless asked for), because a
definitely-failed operation constrains nothing.

Conventions for ``value`` (the input) and ``result`` (the output) by ``f``:

========== ========================== ===================================
f          invoke ``value``            completion
========== ========================== ===================================
read       --                          ``result`` = value read (None: absent)
write      value written               --
cas        ``[expected, new]``         ``succeeded`` = whether it swapped
delete     --                          --
add        element added               --
========== ========================== ===================================

Times are monotonic nanoseconds from one clock shared by all clients of a run.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import msgspec

OpType = Literal["invoke", "ok", "fail", "info"]
Outcome = Literal["ok", "info", "fail"]


class Operation(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One history event: an invocation or a completion of a client operation."""

    process: int
    type: OpType
    f: str
    time_ns: int
    key: str | None = None
    value: Any = None
    result: Any = None
    succeeded: bool | None = None
    revision: int | None = None
    node: str | None = None
    error: str | None = None


class HistoryError(ValueError):
    """The history is malformed (e.g. a completion without an invocation)."""


@dataclass(frozen=True, slots=True)
class CompleteOp:
    """An invocation paired with its completion.

    ``call`` is the invocation time, ``ret`` the completion time (``math.inf``
    when the outcome is unknown).  ``index`` is the position of the invocation
    in the history, which makes every operation distinguishable in reports.
    """

    index: int
    process: int
    f: str
    key: str | None
    value: Any
    call: int
    ret: float
    outcome: Outcome
    result: Any = None
    succeeded: bool | None = None
    revision: int | None = None
    node: str | None = None
    error: str | None = None

    @property
    def indefinite(self) -> bool:
        """True when the operation may or may not have taken effect."""
        return self.outcome == "info"

    def describe(self) -> str:
        """A one-line human-readable rendering, e.g. ``p1 cas k [1, 2] -> False``."""
        parts = [f"p{self.process}", self.f]
        if self.key is not None:
            parts.append(repr(self.key))
        if self.value is not None:
            parts.append(repr(self.value))
        if self.outcome == "info":
            parts.append("-> ?")
        elif self.f == "read":
            parts.append(f"-> {self.result!r}")
        elif self.succeeded is not None:
            parts.append(f"-> {self.succeeded}")
        if self.outcome == "fail":
            parts.append("(fail)")
        ret = "inf" if math.isinf(self.ret) else f"{self.ret / 1e6:.3f}"
        parts.append(f"[{self.call / 1e6:.3f}ms .. {ret}ms]")
        if self.revision is not None:
            parts.append(f"rev={self.revision}")
        if self.node is not None:
            parts.append(f"@{self.node}")
        return " ".join(parts)


def complete_operations(
    history: Iterable[Operation], *, include_failed: bool = False
) -> list[CompleteOp]:
    """Pair invocations with completions.

    Each process must have at most one outstanding invocation, and a
    completion must match the pending invocation's ``f``.  Invocations still
    pending at the end become ``info`` operations.  ``fail`` operations are
    dropped unless ``include_failed``.  The result is ordered by call time.

    Raises :class:`HistoryError` on a malformed history.
    """
    pending: dict[int, tuple[int, Operation]] = {}
    out: list[CompleteOp] = []
    for i, ev in enumerate(history):
        if ev.type == "invoke":
            if ev.process in pending:
                raise HistoryError(
                    f"event {i}: process {ev.process} invoked {ev.f} while "
                    f"{pending[ev.process][1].f} is outstanding"
                )
            pending[ev.process] = (i, ev)
            continue
        if ev.process not in pending:
            raise HistoryError(f"event {i}: {ev.type} of process {ev.process} without invoke")
        j, inv = pending.pop(ev.process)
        if inv.f != ev.f:
            raise HistoryError(f"event {i}: completion {ev.f!r} does not match invoke {inv.f!r}")
        if ev.time_ns < inv.time_ns:
            raise HistoryError(f"event {i}: completion before its invocation")
        if ev.type == "fail" and not include_failed:
            continue
        definite = ev.type != "info"
        out.append(
            CompleteOp(
                index=j,
                process=inv.process,
                f=inv.f,
                key=inv.key,
                value=inv.value,
                call=inv.time_ns,
                ret=ev.time_ns if definite else math.inf,
                outcome=ev.type,
                result=ev.result if definite else None,
                succeeded=ev.succeeded if definite else None,
                revision=ev.revision if definite else None,
                node=ev.node if ev.node is not None else inv.node,
                error=ev.error,
            )
        )
    for j, inv in pending.values():
        out.append(
            CompleteOp(
                index=j,
                process=inv.process,
                f=inv.f,
                key=inv.key,
                value=inv.value,
                call=inv.time_ns,
                ret=math.inf,
                outcome="info",
                node=inv.node,
            )
        )
    out.sort(key=lambda op: (op.call, op.index))
    return out


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(Operation)


def dumps_jsonl(history: Sequence[Operation]) -> bytes:
    """Encode a history as JSON Lines (one event per line)."""
    return b"".join(_encoder.encode(ev) + b"\n" for ev in history)


def loads_jsonl(data: bytes | str) -> list[Operation]:
    """Decode JSON Lines produced by :func:`dumps_jsonl`; blank lines are skipped."""
    if isinstance(data, str):
        data = data.encode()
    return [_decoder.decode(line) for line in data.splitlines() if line.strip()]


def dump(history: Sequence[Operation], path: str | Path) -> None:
    """Write a history to ``path`` as JSON Lines."""
    Path(path).write_bytes(dumps_jsonl(history))


def load(path: str | Path) -> list[Operation]:
    """Read a history written by :func:`dump`."""
    return loads_jsonl(Path(path).read_bytes())
