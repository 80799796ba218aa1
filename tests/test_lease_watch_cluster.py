"""Leases and watches on a real in-process cluster (20 ms ticks: the election
timeout is 0.2 s and the shortest lease 1 s).

Lease expiry needs real time to pass; the bounds asserted are the documented
ones: a lease is never revoked before its TTL since its last keep-alive, and is
revoked within TTL + one election timeout (+ the expiry loop's period and
scheduling slack) after it."""

from __future__ import annotations

import trio

from kvstore import api
from kvstore.client import Client
from kvstore.testing import InProcessCluster, in_process_cluster
from raft.framing import FrameReader, encode_frame

SLACK = 1.0
"""Scheduling slack on a loaded two-core machine, on top of the documented bound."""


class RawWatch:
    """A watch over a raw connection to one member (no client-side resume)."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.reader = FrameReader(stream, api.MAX_FRAME_BYTES)

    @classmethod
    async def open(cls, address: tuple[str, int], request: api.WatchCreateRequest) -> RawWatch:
        watch = cls(await trio.open_tcp_stream(*address))
        await watch.stream.send_all(encode_frame(api.encode(api.ClientFrame(1, request))))
        created = await watch.next()
        assert created.created
        return watch

    async def next(self) -> api.WatchResponse:
        payload = await self.reader.read()
        assert payload is not None
        response = api.decode_server_frame(payload).response
        assert isinstance(response, api.WatchResponse), response
        return response


async def key_exists(client: Client, key: str) -> bool:
    return bool((await client.get(key)).kvs)


async def wait_until_gone(client: Client, key: str, limit: float) -> float:
    """Seconds until ``key`` disappears (fails after ``limit``)."""
    start = trio.current_time()
    with trio.fail_after(limit):
        while await key_exists(client, key):
            await trio.sleep(0.02)
    return trio.current_time() - start


def election_timeout(cluster: InProcessCluster) -> float:
    return cluster.config(cluster.names[0]).election_timeout


def test_lease_expires_after_its_ttl_and_not_before_deleting_keys_in_one_revision() -> None:
    async def main() -> None:
        async with in_process_cluster() as cluster, cluster.client() as client:
            grant = await client.request(api.LeaseGrantRequest(ttl=1))
            assert isinstance(grant, api.LeaseGrantResponse) and grant.ttl == 1
            for key in ("session/a", "session/b", "session/c"):
                await client.put(key, "x", lease=grant.id)
            await client.put("plain", "stays")
            leader = await cluster.leader()
            follower = next(n for n in cluster.names if n != leader)
            watch = await RawWatch.open(
                cluster.clients[follower],
                api.WatchCreateRequest(
                    key=b"session/", range_end=api.prefix_range_end(b"session/")
                ),
            )
            granted_at = trio.current_time()
            gone_after = await wait_until_gone(client, "session/a", 10)
            elapsed = trio.current_time() - granted_at
            assert elapsed >= 1.0 - 0.05  # never before the TTL (puts came after the grant)
            assert gone_after <= 1.0 + election_timeout(cluster) + SLACK
            deletes = await watch.next()
            assert [e.type for e in deletes.events] == [api.EventType.DELETE] * 3
            assert len({e.kv.mod_revision for e in deletes.events}) == 1, "one revision"
            assert await key_exists(client, "plain")
            ttl = await client.request(api.LeaseTimeToLiveRequest(id=grant.id))
            assert isinstance(ttl, api.LeaseTimeToLiveResponse) and ttl.ttl == -1

    trio.run(main)


def test_keep_alive_keeps_a_lease_and_its_keys() -> None:
    async def main() -> None:
        async with in_process_cluster() as cluster, cluster.client() as client:
            grant = await client.request(api.LeaseGrantRequest(ttl=1))
            assert isinstance(grant, api.LeaseGrantResponse)
            await client.put("kept", "x", lease=grant.id)
            leader = cluster.clients[await cluster.leader()]
            async with Client([f"{leader[0]}:{leader[1]}"]) as to_leader:
                for _ in range(12):  # 3 s, three TTLs
                    response = await to_leader.request(api.LeaseKeepAliveRequest(id=grant.id))
                    assert isinstance(response, api.LeaseKeepAliveResponse)
                    assert response.ttl == 1
                    await trio.sleep(0.25)
                    assert await key_exists(client, "kept")
                ttl = await to_leader.request(api.LeaseTimeToLiveRequest(id=grant.id, keys=True))
                assert isinstance(ttl, api.LeaseTimeToLiveResponse)
                assert ttl.granted_ttl == 1 and ttl.keys == [b"kept"]
            leases = await client.request(api.LeaseLeasesRequest())
            assert isinstance(leases, api.LeaseLeasesResponse) and grant.id in leases.leases

    trio.run(main)


def test_keep_alive_on_a_follower_points_at_the_leader() -> None:
    async def main() -> None:
        async with in_process_cluster() as cluster, cluster.client() as client:
            grant = await client.request(api.LeaseGrantRequest(ttl=5))
            assert isinstance(grant, api.LeaseGrantResponse)
            leader = await cluster.leader()
            follower = next(name for name in cluster.names if name != leader)
            member = cluster.members[follower]
            answer = await member.handle(api.LeaseKeepAliveRequest(id=grant.id))
            assert isinstance(answer, api.Error)
            assert answer.code is api.ErrorCode.NOT_LEADER and answer.definite
            host, port = cluster.clients[leader]
            assert answer.leader == f"{host}:{port}"

    trio.run(main)


def test_lease_outlives_a_leader_change_within_the_documented_bound() -> None:
    async def main() -> None:
        async with in_process_cluster() as cluster, cluster.client() as client:
            grant = await client.request(api.LeaseGrantRequest(ttl=2))
            assert isinstance(grant, api.LeaseGrantResponse)
            await client.put("held", "x", lease=grant.id)
            old_leader = await cluster.leader()
            await cluster.kill(old_leader)
            killed_at = trio.current_time()
            await cluster.leader()
            # The new leader gives the lease its full TTL again, plus one election
            # timeout: not gone early, gone within TTL + election timeout after.
            assert await key_exists(client, "held")
            await wait_until_gone(client, "held", 15)
            elapsed = trio.current_time() - killed_at
            assert elapsed >= 2.0 - 0.05
            assert elapsed <= 2.0 + 2 * election_timeout(cluster) + 2 * SLACK

    trio.run(main)


def test_watch_on_a_surviving_member_sees_every_event_once_across_a_leader_kill() -> None:
    async def main() -> None:
        async with in_process_cluster() as cluster, cluster.client() as client:
            leader = await cluster.leader()
            watcher_member = next(name for name in cluster.names if name != leader)
            watch = await RawWatch.open(
                cluster.clients[watcher_member],
                api.WatchCreateRequest(key=b"w/", range_end=api.prefix_range_end(b"w/")),
            )
            written: list[bytes] = []

            async def writer() -> None:
                for n in range(60):
                    try:
                        await client.put(f"w/{n:03d}", str(n))
                        written.append(f"w/{n:03d}".encode())
                    except Exception:
                        pass

            async with trio.open_nursery() as nursery:
                nursery.start_soon(writer)
                while len(written) < 20:
                    await trio.sleep(0.01)
                await cluster.kill(leader)
            final = await client.get("w/", prefix=True)
            committed = [kv.key for kv in final.kvs]
            seen: list[bytes] = []
            revisions: list[int] = []
            with trio.fail_after(10):
                while len(seen) < len(committed):
                    response = await watch.next()
                    revisions.extend(e.kv.mod_revision for e in response.events)
                    seen.extend(e.kv.key for e in response.events)
            assert seen == committed  # each committed write exactly once, in order
            assert revisions == sorted(revisions)
            assert set(written) <= set(committed)

    trio.run(main)


def test_watch_from_a_compacted_revision_is_cancelled_with_the_compact_revision() -> None:
    async def main() -> None:
        async with in_process_cluster() as cluster, cluster.client() as client:
            for n in range(5):
                await client.put("c", str(n))
            revision = (await client.get("c")).header.revision
            await client.compact(revision)
            stream = await trio.open_tcp_stream(*cluster.clients["n1"])
            reader = FrameReader(stream, api.MAX_FRAME_BYTES)
            request = api.WatchCreateRequest(key=b"c", start_revision=2)
            await stream.send_all(encode_frame(api.encode(api.ClientFrame(3, request))))
            payload = await reader.read()
            assert payload is not None
            response = api.decode_server_frame(payload).response
            assert isinstance(response, api.WatchResponse)
            assert response.canceled and response.compact_revision == revision

    trio.run(main)


def test_a_member_that_loses_its_leader_cancels_its_watches() -> None:
    """A watch on a member cut off from the leader would stall silently
    (etcd#8673); instead the member cancels it so the client resumes elsewhere."""

    async def main() -> None:
        async with in_process_cluster() as cluster:
            watch = await RawWatch.open(cluster.clients["n1"], api.WatchCreateRequest(key=b"x"))
            await cluster.kill("n2")
            await cluster.kill("n3")
            with trio.fail_after(10 * election_timeout(cluster) + SLACK):
                response = await watch.next()
            assert response.canceled and "no leader" in response.cancel_reason
            assert response.compact_revision == 0

    trio.run(main)
