"""An in-process 3-member cluster over loopback TCP, with disk storage."""

from __future__ import annotations

import trio

from kvstore.client import Client, OutcomeUnknown
from kvstore.testing import in_process_cluster


def test_writes_and_linearizable_reads_through_every_member() -> None:
    async def main() -> None:
        async with in_process_cluster() as cluster:
            for n, endpoint in enumerate(cluster.endpoints):
                async with Client([endpoint]) as client:
                    await client.put(f"key-{n}", f"value-{n}")
                    # Written through this member: a linearizable read through
                    # every other member sees it at once.
                    for other in cluster.endpoints:
                        async with Client([other]) as reader:
                            response = await reader.get(f"key-{n}")
                            assert response.kvs[0].value == f"value-{n}".encode()

    trio.run(main)


def test_leader_kill_loses_no_acknowledged_write() -> None:
    async def main() -> None:
        async with in_process_cluster() as cluster:
            acknowledged: list[int] = []
            uncertain: list[int] = []
            async with cluster.client(request_timeout=5.0) as client:

                async def writer() -> None:
                    for n in range(200):
                        try:
                            await client.put(f"k{n:04d}", str(n))
                            acknowledged.append(n)
                        except OutcomeUnknown:
                            uncertain.append(n)

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(writer)
                    while len(acknowledged) < 50:
                        await trio.sleep(0.005)
                    old_leader = await cluster.leader()
                    await cluster.kill(old_leader)
                new_leader = await cluster.leader()
                assert new_leader != old_leader
                assert len(acknowledged) + len(uncertain) == 200
                response = await client.get("k", prefix=True)
                present = {int(kv.value) for kv in response.kvs}
                assert set(acknowledged) <= present
                assert present <= set(acknowledged) | set(uncertain)
                # The killed member comes back and catches up.
                await cluster.restart(old_leader)
                member = cluster.members[old_leader]
                with trio.fail_after(10):
                    while member.state.status().keys != len(present):
                        await trio.sleep(0.01)

    trio.run(main)


def test_member_far_behind_catches_up_by_snapshot() -> None:
    async def main() -> None:
        async with in_process_cluster(snapshot_count=50, snapshot_catchup_entries=10) as cluster:
            leader = await cluster.leader()
            lagging = next(name for name in cluster.names if name != leader)
            await cluster.kill(lagging)
            async with cluster.client() as client:
                for n in range(300):
                    await client.put(f"k{n:03d}", str(n))
            await cluster.restart(lagging)
            member = cluster.members[lagging]
            with trio.fail_after(10):
                while member.state.status().keys != 300:
                    await trio.sleep(0.01)
            assert member.node is not None
            assert member.node.storage.snapshot_meta().index > 0, "should have installed a snapshot"
            async with Client([cluster.endpoints[cluster.names.index(lagging)]]) as direct:
                response = await direct.get("k", prefix=True, serializable=True)
                assert [kv.value for kv in response.kvs] == [str(n).encode() for n in range(300)]

    trio.run(main)


def test_many_requests_at_once_on_one_connection_are_each_answered() -> None:
    """Requests arriving together are batched by the member (writes in one
    turn of Raft, linearizable reads after one ReadIndex wait, serializable
    reads inline): each still gets its own answer, and a linearizable read
    sees every write acknowledged before it began."""

    async def main() -> None:
        async with in_process_cluster() as cluster, cluster.client() as client:
            revisions: dict[int, int] = {}

            async def put(n: int) -> None:
                revisions[n] = (await client.put(f"b{n:03d}", str(n))).header.revision

            async with trio.open_nursery() as nursery:
                for n in range(200):
                    nursery.start_soon(put, n)
            assert sorted(revisions.values()) == list(range(2, 202))  # one revision each

            async def read(n: int, serializable: bool) -> None:
                response = await client.get(f"b{n:03d}", serializable=serializable)
                if not serializable:
                    assert response.kvs[0].value == str(n).encode()
                    assert response.kvs[0].mod_revision == revisions[n]

            async with trio.open_nursery() as nursery:
                for n in range(200):
                    nursery.start_soon(read, n, n % 3 == 0)
            txn = await client.txn([], [], [])
            assert txn.header.revision == 201

    trio.run(main)
