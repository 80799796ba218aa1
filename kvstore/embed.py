"""Run a member inside your own trio program, with a client connected to it.

    import trio
    from kvstore.embed import embedded_member

    async def main():
        async with embedded_member("solo", data_dir="./solo-data") as embedded:
            await embedded.client.put("greeting", "hello")
            print((await embedded.client.get("greeting")).kvs[0].value)

    trio.run(main)

By default the member is a one-member cluster on ephemeral loopback ports
(``embedded.endpoint`` says where clients can reach it).  Pass
``initial_cluster`` and fixed addresses to join peers instead.

Its metrics are always kept in ``embedded.member.metrics.registry`` (a
``prometheus_client`` registry of its own); pass
``listen_metrics=("127.0.0.1", 0)`` to also serve HTTP ``/metrics`` and
``/health`` (``embedded.member.metrics_address`` says where).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from kvstore.client import Client
from kvstore.config import Address, MemberConfig, format_address
from kvstore.server import Member


@dataclass(frozen=True)
class EmbeddedMember:
    member: Member
    client: Client

    @property
    def endpoint(self) -> str:
        return format_address(self.member.client_address)


@asynccontextmanager
async def embedded_member(
    name: str = "default",
    *,
    data_dir: str | Path | None = None,
    listen_client: Address = ("127.0.0.1", 0),
    listen_peer: Address = ("127.0.0.1", 0),
    initial_cluster: dict[str, Address] | None = None,
    **options: Any,
) -> AsyncIterator[EmbeddedMember]:
    """Start a member, wait until it can serve (it has a leader), and yield it
    with a connected :class:`~kvstore.client.Client`; stop both on exit.

    ``data_dir=None`` keeps everything in memory.  ``options`` are further
    :class:`~kvstore.config.MemberConfig` fields (``tick_interval``, ...).
    """
    config = MemberConfig(
        name=name,
        data_dir=Path(data_dir) if data_dir is not None else None,
        listen_client=listen_client,
        listen_peer=listen_peer,
        initial_cluster=initial_cluster or {},
        **options,
    )
    failure: BaseException | None = None
    async with trio.open_nursery() as nursery:
        member: Member = await nursery.start(Member(config).run)
        assert member.node is not None
        await member.node.wait_for_leader()
        async with Client([format_address(member.client_address)]) as client:
            try:
                yield EmbeddedMember(member, client)
            except BaseException as error:  # re-raised below, unwrapped by the nursery
                failure = error
        nursery.cancel_scope.cancel()
    if failure is not None:
        raise failure
