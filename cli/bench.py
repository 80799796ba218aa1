"""``kvctl bench put|get|txn``: load from C concurrent workers, then throughput and latency.

Workers share ``--conns`` client connections (worker ``j`` uses connection
``j % conns``; connection ``k`` starts at endpoint ``k % len(endpoints)``) and
take operation numbers from one counter until ``--total`` are done, so the run
is bounded.  Operation ``i`` works on key ``i % key_space``, zero-padded to
``--key-size`` characters.

* ``put``: a put per operation (by default every key is new).
* ``get``: a get per operation, linearizable unless ``--consistency s``; the
  keys are written first, outside the timing.
* ``txn``: a compare-and-put per operation: if the key's version is below 2^31,
  put it (the compare always holds; it is evaluated in the store).

Prints ops/s and latency percentiles; ``-w json`` prints one JSON object.  A
progress bar is shown only when stdout is a terminal.
"""

from __future__ import annotations

import math
import random
import string
import sys
import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Any

import click
import trio

from cli.context import Settings, pass_settings
from cli.errors import CliError
from cli.output import echo_json
from kvstore.client import Client, Compare, KvError, Op

MAX_ERRORS = 100
"""A run stops after this many failed operations."""


@dataclass(frozen=True)
class BenchSpec:
    """What to run."""

    op: str
    clients: int = 1
    conns: int = 1
    total: int = 10_000
    key_size: int = 8
    val_size: int = 8
    key_space: int = 0
    """Distinct keys (0: as many as operations for put/txn, 1000 for get)."""
    serializable: bool = False

    @property
    def keys(self) -> int:
        if self.key_space:
            return self.key_space
        return min(self.total, 1000) if self.op == "get" else self.total

    def key(self, i: int) -> bytes:
        return str(i % self.keys).zfill(self.key_size).encode()


@dataclass
class BenchResult:
    """What happened: per-operation latencies (seconds) and the wall time."""

    spec: BenchSpec
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    first_error: str = ""

    @property
    def ops_per_second(self) -> float:
        return len(self.latencies) / self.seconds if self.seconds > 0 else 0.0

    def percentile(self, p: float) -> float:
        """The ``p``-th percentile latency in milliseconds (nearest rank)."""
        if not self.latencies:
            return 0.0
        ordered = sorted(self.latencies)
        rank = max(1, math.ceil(p / 100 * len(ordered)))
        return ordered[rank - 1] * 1000

    def as_json(self) -> dict[str, Any]:
        spec = self.spec
        return {
            "op": spec.op,
            "clients": spec.clients,
            "conns": spec.conns,
            "total": spec.total,
            "succeeded": len(self.latencies),
            "errors": self.errors,
            "seconds": round(self.seconds, 4),
            "ops_per_sec": round(self.ops_per_second, 1),
            "latency_ms": {
                "p50": round(self.percentile(50), 3),
                "p90": round(self.percentile(90), 3),
                "p99": round(self.percentile(99), 3),
                "max": round(self.percentile(100), 3),
                "mean": round(
                    1000 * sum(self.latencies) / len(self.latencies) if self.latencies else 0.0,
                    3,
                ),
            },
            "key_size": spec.key_size,
            "val_size": spec.val_size,
            "consistency": "s" if spec.serializable else "l",
        }

    def text(self) -> str:
        spec = self.spec
        lines = [
            f"{spec.op}: {len(self.latencies)} ops in {self.seconds:.3f}s "
            f"({spec.clients} clients, {spec.conns} connections)",
            f"  throughput  {self.ops_per_second:,.1f} ops/s",
            f"  latency ms  p50 {self.percentile(50):.3f}  p90 {self.percentile(90):.3f}  "
            f"p99 {self.percentile(99):.3f}  max {self.percentile(100):.3f}",
        ]
        if self.errors:
            lines.append(f"  errors      {self.errors} (first: {self.first_error})")
        return "\n".join(lines)


Progress = Callable[[int], None]


async def run_bench(settings: Settings, spec: BenchSpec, progress: Progress | None) -> BenchResult:
    """Run ``spec`` against the cluster; ``progress(n)`` is told of completed operations."""
    value = "".join(random.choices(string.ascii_letters + string.digits, k=spec.val_size))
    endpoints = list(settings.endpoints)
    clients = [
        settings.client(endpoints[k % len(endpoints) :] + endpoints[: k % len(endpoints)])
        for k in range(spec.conns)
    ]
    result = BenchResult(spec)
    async with AsyncExitStack() as stack:
        for client in clients:
            await stack.enter_async_context(client)
        await clients[0].status()  # fail fast when nothing answers
        if spec.op == "get":
            await _populate(clients, spec, value)
        operation = _operation(spec, value)
        next_op = iter(range(spec.total))
        failed = trio.Event()

        async def worker(client: Client) -> None:
            for i in next_op:
                start = time.perf_counter()
                try:
                    await operation(client, i)
                except KvError as exc:
                    result.errors += 1
                    result.first_error = result.first_error or exc.message
                    if result.errors >= MAX_ERRORS:
                        failed.set()
                        return
                else:
                    result.latencies.append(time.perf_counter() - start)

        started = time.perf_counter()
        async with trio.open_nursery() as nursery:
            if progress is not None:
                nursery.start_soon(_report_progress, result, progress)
            async with trio.open_nursery() as workers:
                nursery.start_soon(_cancel_on, failed, workers.cancel_scope)
                for j in range(spec.clients):
                    workers.start_soon(worker, clients[j % len(clients)])
            result.seconds = time.perf_counter() - started
            nursery.cancel_scope.cancel()
    if failed.is_set():
        raise CliError(f"bench stopped after {result.errors} errors; first: {result.first_error}")
    return result


async def _cancel_on(event: trio.Event, scope: trio.CancelScope) -> None:
    await event.wait()
    scope.cancel()


async def _report_progress(result: BenchResult, progress: Progress) -> None:
    reported = 0
    while True:
        await trio.sleep(0.1)
        done = len(result.latencies) + result.errors
        progress(done - reported)
        reported = done


def _operation(spec: BenchSpec, value: str) -> Callable[[Client, int], Awaitable[object]]:
    if spec.op == "put":

        async def put(client: Client, i: int) -> object:
            return await client.put(spec.key(i), value)

        return put
    if spec.op == "get":

        async def get(client: Client, i: int) -> object:
            return await client.get(spec.key(i), serializable=spec.serializable)

        return get

    async def txn(client: Client, i: int) -> object:
        key = spec.key(i)
        return await client.txn([Compare.version(key) < 2**31], [Op.put(key, value)])

    return txn


async def _populate(clients: list[Client], spec: BenchSpec, value: str) -> None:
    keys = iter(range(spec.keys))

    async def writer(client: Client) -> None:
        for i in keys:
            await client.put(spec.key(i), value)

    async with trio.open_nursery() as nursery:
        for j in range(max(spec.clients, 1)):
            nursery.start_soon(writer, clients[j % len(clients)])


def _common_options(command: Callable[..., None]) -> Callable[..., None]:
    options = [
        click.option(
            "--clients",
            type=click.IntRange(min=1),
            default=1,
            show_default=True,
            help="Concurrent workers.",
        ),
        click.option(
            "--conns",
            type=click.IntRange(min=1),
            default=1,
            show_default=True,
            help="Client connections the workers share.",
        ),
        click.option(
            "--total",
            type=click.IntRange(min=1),
            default=10_000,
            show_default=True,
            help="Operations in all.",
        ),
        click.option("--key-size", type=click.IntRange(min=1), default=8, show_default=True),
        click.option("--val-size", type=click.IntRange(min=0), default=8, show_default=True),
        click.option(
            "--key-space-size",
            type=click.IntRange(min=1),
            help="Distinct keys (default: --total for put/txn, 1000 for get).",
        ),
    ]
    for option in reversed(options):
        command = option(command)
    return command


@click.group("bench")
def bench() -> None:
    """Measure throughput and latency against the cluster."""


def _run(settings: Settings, spec: BenchSpec) -> None:
    show_bar = sys.stdout.isatty() and settings.write_out != "json"
    if show_bar:
        with click.progressbar(length=spec.total, label=spec.op) as bar:
            result = trio.run(run_bench, settings, spec, bar.update)
    else:
        result = trio.run(run_bench, settings, spec, None)
    if settings.write_out == "json":
        echo_json(result.as_json())
    else:
        click.echo(result.text())


def _make_command(op: str, doc: str) -> click.Command:
    @_common_options
    @click.option(
        "--consistency",
        type=click.Choice(["l", "s"]),
        default="l",
        show_default=True,
        help="Reads: l linearizable, s serializable.",
    )
    @pass_settings
    def command(
        settings: Settings,
        clients: int,
        conns: int,
        total: int,
        key_size: int,
        val_size: int,
        key_space_size: int | None,
        consistency: str,
    ) -> None:
        spec = BenchSpec(
            op=op,
            clients=clients,
            conns=min(conns, clients),
            total=total,
            key_size=key_size,
            val_size=val_size,
            key_space=key_space_size or 0,
            serializable=consistency == "s",
        )
        _run(settings, spec)

    command.__doc__ = doc
    return bench.command(op)(command)


_make_command("put", "Benchmark puts (each key new unless --key-space-size is smaller).")
_make_command("get", "Benchmark gets of keys written first (outside the timing).")
_make_command("txn", "Benchmark compare-and-put transactions, one key per operation.")

COMMANDS = [bench]
