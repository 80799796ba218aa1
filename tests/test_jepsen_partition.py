"""The partition nemesis really cuts a member off: it neither sends nor receives.

Real member processes on 127.0.0.11-13; the partition nemesis isolates the
leader with iptables.  While it holds: sockets bound to the isolated address
cannot reach the others' peer ports and the others cannot reach its peer port
(while the majority still reach each other), the drop counters grow, the
majority elects a leader and commits a write the isolated member does not see
in a serializable read.  After healing it catches up.

Needs root and iptables; skipped with the reason otherwise, except when
``JEPSEN_REQUIRE_PARTITION=1`` (set by ``.ci/run`` as root), where a missing
iptables fails the test instead.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import trio

from jepsen_like.cluster import AddressedCluster, free_shared_port
from jepsen_like.nemesis.base import NemesisEnv, PlannedFault
from jepsen_like.nemesis.iptables import chain_name, unavailable_reason
from jepsen_like.nemesis.partition import PartitionNemesis
from jepsen_like.workload import Recorder
from kvstore.client import Client

ADDRESSES = ["127.0.0.11", "127.0.0.12", "127.0.0.13"]
REQUIRED = os.environ.get("JEPSEN_REQUIRE_PARTITION") == "1"
REASON = unavailable_reason()

pytestmark = pytest.mark.skipif(REASON is not None and not REQUIRED, reason=str(REASON))


def connects(source: str, destination: tuple[str, int], timeout: float = 1.0) -> bool:
    """Whether a TCP connection from ``source`` to ``destination`` is established."""
    with socket.socket() as sock:
        sock.bind((source, 0))
        sock.settimeout(timeout)
        try:
            sock.connect(destination)
        except OSError:
            return False
        return True


def test_an_isolated_member_neither_sends_nor_receives_and_catches_up(tmp_path: Path) -> None:
    assert REASON is None, REASON  # only reached without iptables when it is required
    port = free_shared_port(ADDRESSES)
    cluster = AddressedCluster(
        tmp_path / "data", ADDRESSES, base_port=port, tick_ms=50, die_with_parent=True
    )
    nemesis = PartitionNemesis(chain_name(ADDRESSES[0]))
    env = NemesisEnv(cluster, Recorder(), log=lambda line: None)
    observed: dict[str, object] = {}

    async def during_partition(isolated: str, hold: float) -> None:
        others = [n for n in cluster.names if n != isolated]
        iso_addr = cluster.address_of(isolated)
        with trio.fail_after(hold - 1):
            while not await trio.to_thread.run_sync(nemesis.firewall.counters):
                await trio.sleep(0.05)
            peer = port + 1
            for other in others:
                addr = cluster.address_of(other)
                assert not await trio.to_thread.run_sync(connects, iso_addr, (addr, peer))
                assert not await trio.to_thread.run_sync(connects, addr, (iso_addr, peer))
            a, b = (cluster.address_of(o) for o in others)
            assert await trio.to_thread.run_sync(connects, a, (b, peer))
            # The majority elects one of its own and commits a write.
            while True:
                statuses = [await trio.to_thread.run_sync(cluster.status, o) for o in others]
                leaders = {s.leader for s in statuses if s is not None}
                names = {cluster.name_of(leader) for leader in leaders}
                if len(statuses) == 2 and len(leaders) == 1 and names <= set(others):
                    break
                await trio.sleep(0.1)
            majority = [cluster.member(o).client_address for o in others]
            async with Client(majority, request_timeout=5) as client:
                await client.put("partitioned/write", "committed by the majority")
            iso_endpoint = cluster.member(isolated).client_address
            async with Client([iso_endpoint], request_timeout=2) as client:
                stale = await client.get("partitioned/write", serializable=True)
            observed["isolated_read"] = [kv.value for kv in stale.kvs]
            counters = await trio.to_thread.run_sync(nemesis.firewall.counters)
            observed["dropped"] = sum(c.packets for c in counters)
            observed["rules"] = sorted((c.source, c.destination) for c in counters)

    async def main() -> None:
        await cluster.start_async(timeout=30)
        await nemesis.prepare(env)
        isolated = await cluster.leader_async()
        assert isolated is not None
        hold = 12.0
        fault = PlannedFault(0, "partition", {"shape": "isolate", "target": "leader"}, hold)
        events = []
        async with trio.open_nursery() as nursery:

            async def apply() -> None:
                events.append(await nemesis.apply(env, fault))

            nursery.start_soon(apply)
            await during_partition(isolated, hold)
        (event,) = events
        assert event.outcome == "applied" and event.targets == sorted(cluster.names)
        assert observed["isolated_read"] == []
        assert isinstance(observed["dropped"], int) and observed["dropped"] > 0
        iso = cluster.address_of(isolated)
        assert observed["rules"] == sorted(
            [(iso, cluster.address_of(o)) for o in cluster.names if o != isolated]
            + [(cluster.address_of(o), iso) for o in cluster.names if o != isolated]
        )
        assert event.details["packets_dropped"] >= observed["dropped"]
        assert not await trio.to_thread.run_sync(nemesis.firewall.counters)  # healed
        # Healed: the isolated member catches up.
        endpoint = cluster.member(isolated).client_address
        with trio.fail_after(20):
            while True:
                async with Client([endpoint], request_timeout=2) as client:
                    resp = await client.get("partitioned/write", serializable=True)
                if resp.kvs:
                    assert resp.kvs[0].value == b"committed by the majority"
                    break
                await trio.sleep(0.2)

    try:
        trio.run(main)
    finally:
        trio.run(nemesis.close, env)
        cluster.stop()
    assert not nemesis.firewall.exists()
