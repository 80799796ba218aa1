"""Sessions, locks, elections and service discovery against a real cluster.

Every test runs a 3-member in-process cluster (20 ms ticks: election timeout
0.2 s, so the minimum lease TTL is 1 s).  Tests synchronize on watch events
and trio events; the only real time that passes on purpose is a 1-second TTL
running out.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextlib import aclosing

import pytest
import trio

from kvstore.api import EventType, KeyValue
from kvstore.client import Client, KvError, Op, Watch
from kvstore.concurrency import Election, LockLost, Mutex, NotLeader, Session, SessionExpired
from kvstore.discovery import ChangeKind, ServiceChange, ServiceRegistry
from kvstore.testing import InProcessCluster, in_process_cluster


def run(test: Callable[[InProcessCluster, trio.Nursery], Awaitable[None]]) -> None:
    async def main() -> None:
        with trio.fail_after(15):
            async with in_process_cluster(3) as cluster, trio.open_nursery() as nursery:
                await test(cluster, nursery)
                nursery.cancel_scope.cancel()

    trio.run(main)


def client_for(cluster: InProcessCluster, i: int) -> Client:
    """A client whose first endpoint is member ``i``, so clients spread out."""
    endpoints = cluster.endpoints
    return Client(endpoints[i:] + endpoints[:i], request_timeout=3.0)


async def wait_for_put(client: Client, key: bytes, after_revision: int) -> KeyValue:
    """Wait until ``key`` is put in a revision after ``after_revision``."""
    async with client.watch(key, start_revision=after_revision + 1) as watch:
        async for event in watch.events():
            if event.type is EventType.PUT:
                return event.kv
    raise AssertionError("watch ended")


# -- The client's watch on a real cluster -------------------------------------------------


def test_a_watch_survives_the_death_of_its_member_without_gap_or_duplicate() -> None:
    """The member serving the watch is killed mid-stream; the client resumes on
    another.  The oracle: a fresh watch replaying the same range from history."""

    async def collect(watch: Watch, into: list[tuple[int, bytes, EventType]]) -> None:
        async for event in watch.events():
            into.append((event.kv.mod_revision, event.kv.key, event.type))
            if event.kv.key == b"w/done":
                return

    async def test(cluster: InProcessCluster, nursery: trio.Nursery) -> None:
        # A write in flight when a leader dies stays unanswered until the
        # writer's timeout: keep that short.
        writer_endpoints = cluster.endpoints[1:] + cluster.endpoints[:1]
        async with (
            client_for(cluster, 0) as watcher,
            Client(writer_endpoints, request_timeout=0.5) as writer,
        ):
            start = (await writer.get("w/")).header.revision + 1
            seen: list[tuple[int, bytes, EventType]] = []
            halfway = trio.Event()

            async def write() -> None:
                for i in range(40):
                    if i == 10:
                        await halfway.wait()
                    while True:
                        try:
                            await writer.put(f"w/{i:02}", "x")
                            break
                        except KvError:  # maybe applied: a second put is in the history too
                            await trio.sleep(0.05)
                await writer.put("w/done", "")

            async with watcher.watch("w/", prefix=True, start_revision=start) as watch:
                await watcher.get("w/")  # connected: the watch's member is known
                victim = cluster.names[cluster.endpoints.index(watcher.endpoint or "")]
                async with trio.open_nursery() as tasks:
                    tasks.start_soon(write)
                    async for event in watch.events():
                        seen.append((event.kv.mod_revision, event.kv.key, event.type))
                        if len(seen) == 10:
                            await cluster.kill(victim)
                            halfway.set()
                        if event.kv.key == b"w/done":
                            break
            assert watch.resumes >= 1
            replayed: list[tuple[int, bytes, EventType]] = []
            async with writer.watch("w/", prefix=True, start_revision=start) as replay:
                await collect(replay, replayed)
            assert seen == replayed
            assert len({key for _, key, _ in seen}) == 41

    run(test)


# -- Session -------------------------------------------------------------------------------


def test_session_keeps_its_lease_alive_and_close_revokes_it() -> None:
    async def test(cluster: InProcessCluster, nursery: trio.Nursery) -> None:
        async with cluster.client() as client:
            async with Session(client, ttl=1) as session:
                await client.put("owned", "x", lease=session.lease_id)
                # Two TTLs pass: the keep-alives keep the key.
                await trio.sleep(2.0)
                assert not session.lost.is_set()
                assert (await client.get("owned")).kvs
            assert session.lost.is_set()
            assert not (await client.get("owned")).kvs
            assert (await client.lease_time_to_live(session.lease_id)).ttl == -1

    run(test)


def test_session_learns_its_lease_was_revoked_elsewhere() -> None:
    async def test(cluster: InProcessCluster, nursery: trio.Nursery) -> None:
        async with cluster.client() as client, Session(client, ttl=1) as session:
            start = trio.current_time()
            await client.lease_revoke(session.lease_id)
            await session.wait_lost()
            assert trio.current_time() - start < 1.0  # within about a third of the TTL

    run(test)


# -- Mutex ---------------------------------------------------------------------------------


def test_contenders_never_hold_the_mutex_at_once_and_tokens_increase() -> None:
    contenders, rounds = 3, 4
    log: list[tuple[str, int, int]] = []

    async def contend(cluster: InProcessCluster, i: int) -> None:
        async with client_for(cluster, i) as client, Session(client, ttl=5) as session:
            mutex = Mutex(session, "locks/shared")
            for _ in range(rounds):
                async with mutex:
                    log.append(("enter", i, mutex.fencing_token))
                    # Real work while holding: a write, conditional on the lock.
                    response = await client.txn([mutex.is_owner()], [Op.put("owner", str(i))])
                    assert response.succeeded
                    log.append(("exit", i, mutex.fencing_token))

    async def test(cluster: InProcessCluster, nursery: trio.Nursery) -> None:
        async with trio.open_nursery() as contending:
            for i in range(contenders):
                contending.start_soon(contend, cluster, i)
        assert len(log) == 2 * contenders * rounds
        for enter, leave in zip(log[::2], log[1::2], strict=True):
            assert enter[0] == "enter" and leave[0] == "exit"
            assert enter[1:] == leave[1:]  # nobody entered before the holder left
        tokens = [token for _, _, token in log[::2]]
        assert tokens == sorted(set(tokens))  # strictly increasing
        assert len({i for _, i, _ in log}) == contenders

    run(test)


def test_try_lock_does_not_wait_and_leaves_nothing_behind() -> None:
    async def test(cluster: InProcessCluster, nursery: trio.Nursery) -> None:
        async with (
            cluster.client() as client,
            Session(client, ttl=5) as a,
            Session(client, ttl=5) as b,
        ):
            holder, other = Mutex(a, "locks/t"), Mutex(b, "locks/t")
            assert await holder.try_lock()
            assert not await other.try_lock()
            assert [kv.key for kv in (await client.get("locks/t/", prefix=True)).kvs] == [
                holder.key
            ]
            await holder.unlock()
            assert await other.try_lock()
            assert other.fencing_token > 0

    run(test)


def test_a_waiter_cancelled_while_waiting_leaves_no_key_behind() -> None:
    async def test(cluster: InProcessCluster, nursery: trio.Nursery) -> None:
        async with (
            cluster.client() as client,
            Session(client, ttl=5) as a,
            Session(client, ttl=5) as b,
        ):
            holder, waiter = Mutex(a, "locks/c"), Mutex(b, "locks/c")
            await holder.lock()
            revision = (await client.get("locks/c")).header.revision
            with trio.CancelScope() as scope:
                async with trio.open_nursery() as waiting:
                    waiting.start_soon(waiter.lock)
                    await wait_for_put(client, waiter.key, revision)
                    scope.cancel()
            assert not waiter.held
            keys = [kv.key for kv in (await client.get("locks/c/", prefix=True)).kvs]
            assert keys == [holder.key]

    run(test)


def test_a_waiter_whose_key_vanished_gets_lock_lost_not_the_lock() -> None:
    """The etcd#11456 check: after waiting, the waiter re-reads its own key."""

    async def test(cluster: InProcessCluster, nursery: trio.Nursery) -> None:
        async with (
            cluster.client() as client,
            Session(client, ttl=5) as a,
            Session(client, ttl=5) as b,
        ):
            holder, waiter = Mutex(a, "locks/w"), Mutex(b, "locks/w")
            await holder.lock()
            outcome: list[str] = []
            done = trio.Event()

            async def wait_for_lock() -> None:
                try:
                    await waiter.lock()
                    outcome.append("acquired")
                except LockLost:
                    outcome.append("lost")
                done.set()

            revision = (await client.get("locks/w")).header.revision
            nursery.start_soon(wait_for_lock)
            await wait_for_put(client, waiter.key, revision)
            # The waiter's key goes (as if its lease expired unnoticed), then the holder leaves.
            await client.delete(waiter.key)
            await holder.unlock()
            await done.wait()
            assert outcome == ["lost"] and not waiter.held
            assert not b.lost.is_set()  # it was the re-check that caught it

    run(test)


def test_a_waiter_whose_session_expires_gets_lock_lost_never_the_lock() -> None:
    async def test(cluster: InProcessCluster, nursery: trio.Nursery) -> None:
        async with (
            cluster.client() as client,
            Session(client, ttl=5) as a,
            Session(client, ttl=1) as b,
        ):
            holder, waiter = Mutex(a, "locks/e"), Mutex(b, "locks/e")
            await holder.lock()
            revision = (await client.get("locks/e")).header.revision
            outcome: list[BaseException | None] = []
            done = trio.Event()

            async def wait_for_lock() -> None:
                try:
                    await waiter.lock()
                    outcome.append(None)
                except LockLost as lost:
                    outcome.append(lost)
                done.set()

            nursery.start_soon(wait_for_lock)
            await wait_for_put(client, waiter.key, revision)
            await client.lease_revoke(b.lease_id)  # the waiter's lease ends on the server
            await done.wait()
            assert isinstance(outcome[0], LockLost)
            assert b.lost.is_set()
            # The holder still holds, and the next session can queue normally.
            assert (await client.txn([holder.is_owner()])).succeeded
            await holder.unlock()
            with pytest.raises(SessionExpired):
                await waiter.lock()

    run(test)


def test_fencing_rejects_a_holder_whose_session_expired() -> None:
    """A paused holder still believes it holds the lock; is_owner() does not."""

    async def test(cluster: InProcessCluster, nursery: trio.Nursery) -> None:
        async with (
            cluster.client() as client,
            Session(client, ttl=1) as a,
            Session(client, ttl=5) as b,
        ):
            stale, fresh = Mutex(a, "locks/f"), Mutex(b, "locks/f")
            await stale.lock()
            a.orphan()  # the holder "pauses": no more keep-alives, the lease expires
            await fresh.lock()  # waits for the expiry
            assert fresh.fencing_token > stale.fencing_token
            stale_write = await client.txn([stale.is_owner()], [Op.put("data", "stale")])
            fresh_write = await client.txn([fresh.is_owner()], [Op.put("data", "fresh")])
            assert not stale_write.succeeded and fresh_write.succeeded
            assert (await client.get("data")).kvs[0].value == b"fresh"

    run(test)


# -- Election ------------------------------------------------------------------------------


def test_election_fails_over_when_the_leaders_session_expires() -> None:
    async def test(cluster: InProcessCluster, nursery: trio.Nursery) -> None:
        async with (
            client_for(cluster, 0) as client,
            Session(client, ttl=1) as a,
            Session(client, ttl=5) as b,
            Session(client, ttl=5) as watcher,
            trio.open_nursery() as tasks,  # ends before the client closes
        ):
            first, second = Election(a, "elect/svc"), Election(b, "elect/svc")
            await first.campaign("a")
            assert first.is_leader
            seen_send, seen = trio.open_memory_channel[KeyValue](16)

            async def observe() -> None:
                async with aclosing(Election(watcher, "elect/svc").observe()) as leaders:
                    async for leader in leaders:
                        await seen_send.send(leader)

            tasks.start_soon(observe)
            assert (await seen.receive()).value == b"a"
            won = trio.Event()

            async def campaign() -> None:
                await second.campaign("b")
                won.set()

            tasks.start_soon(campaign)
            with pytest.raises(NotLeader):
                await second.proclaim("too early")
            a.orphan()  # the leader dies: its lease expires after its TTL
            await won.wait()
            assert (await seen.receive()).value == b"b"
            leader = await second.leader()
            assert leader is not None and leader.value == b"b"
            await second.proclaim("b2")
            assert (await seen.receive()).value == b"b2"
            with pytest.raises(NotLeader):
                await first.proclaim("a is back")
            await second.resign()
            assert await second.leader() is None
            tasks.cancel_scope.cancel()

    run(test)


def test_resigning_hands_leadership_to_the_next_candidate_in_order() -> None:
    async def test(cluster: InProcessCluster, nursery: trio.Nursery) -> None:
        async with (
            cluster.client() as client,
            Session(client, ttl=5) as a,
            Session(client, ttl=5) as b,
            Session(client, ttl=5) as c,
        ):
            elections = [Election(s, "elect/order") for s in (a, b, c)]
            await elections[0].campaign("a")
            won_send, won = trio.open_memory_channel[str](4)
            for name, election in zip("bc", elections[1:], strict=True):
                revision = (await client.get("x")).header.revision

                async def campaign(election: Election = election, name: str = name) -> None:
                    await election.campaign(name)
                    await won_send.send(name)

                nursery.start_soon(campaign)
                await wait_for_put(client, election.key, revision)
            await elections[0].resign()
            assert await won.receive() == "b"
            leader = await elections[0].leader()
            assert leader is not None and leader.value == b"b"
            await elections[1].resign()
            assert await won.receive() == "c"

    run(test)


# -- Service discovery ---------------------------------------------------------------------


def test_service_registry_register_list_watch_and_deregister() -> None:
    async def test(cluster: InProcessCluster, nursery: trio.Nursery) -> None:
        async with cluster.client() as client, trio.open_nursery() as tasks:
            registry = ServiceRegistry(client)
            one = await registry.register("billing", "b-1", "10.0.0.1:80", {"zone": "a"}, ttl=5)
            changes_send, changes = trio.open_memory_channel[ServiceChange](16)

            async def watch() -> None:
                async with aclosing(registry.watch("billing")) as stream:
                    async for change in stream:
                        await changes_send.send(change)

            tasks.start_soon(watch)

            async def expect(kind: ChangeKind, instance_id: str) -> ServiceChange:
                change = await changes.receive()
                assert (change.kind, change.instance_id) == (kind, instance_id)
                return change

            first = await expect(ChangeKind.ADDED, "b-1")  # present when watching began
            assert first.instance.address == "10.0.0.1:80"
            assert first.instance.metadata == {"zone": "a"}
            two = await registry.register("billing", "b-2", "10.0.0.2:80", ttl=1)
            await expect(ChangeKind.ADDED, "b-2")
            await registry.register("other", "o-1", "10.0.0.9:80", session=two.session)
            listed = await registry.list("billing")
            assert sorted(listed) == ["b-1", "b-2"]
            assert listed["b-2"].address == "10.0.0.2:80"
            moved = await registry.register(
                "billing", "b-1", "10.0.0.3:80", {"zone": "b"}, session=one.session
            )
            updated = await expect(ChangeKind.UPDATED, "b-1")
            assert updated.instance.address == "10.0.0.3:80"
            await moved.close()  # a shared session: only the key goes
            removed = await expect(ChangeKind.REMOVED, "b-1")
            assert removed.instance.address == "10.0.0.3:80"
            assert not one.lost.is_set()
            two.session.orphan()  # the instance dies: its lease expires
            await expect(ChangeKind.REMOVED, "b-2")
            assert await registry.list("billing") == {}
            assert await registry.list("other") == {}  # it shared the dead session
            await one.close()
            await two.close()
            tasks.cancel_scope.cancel()  # the watch ends before the client closes

    run(test)
