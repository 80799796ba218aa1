"""Membership changes on real members over loopback TCP (in-process, disk storage).

A cluster grows from one member to five and shrinks back to three while a
client writes without pause: every acknowledged write is read back at the end.
Plus the rules around it: learners are promoted only once caught up, removing
the leader hands leadership over first, ids are never reused, move-leader.
"""

from __future__ import annotations

import trio

from kvstore.api import Error, ErrorCode, MemberListRequest
from kvstore.client import Client, InvalidRequest, KvError
from kvstore.testing import InProcessCluster, in_process_cluster
from raft.ready import Role


async def promote_when_ready(client: Client, member_id: int, timeout: float = 20.0) -> None:
    """Promote a learner, retrying while it is still catching up."""
    with trio.fail_after(timeout):
        while True:
            try:
                await client.member_promote(member_id)
                return
            except InvalidRequest as error:
                assert error.code is ErrorCode.FAILED_PRECONDITION, error
                await trio.sleep(0.05)


async def add_member(cluster: InProcessCluster, client: Client, name: str) -> int:
    peer_url = cluster.peers[name][0] + f":{cluster.peers[name][1]}"
    added = await client.member_add(name, peer_url, learner=True)
    assert added.member.is_learner and added.member.name == name
    await cluster.join(name, added.member.id, added.cluster_id)
    await promote_when_ready(client, added.member.id)
    return added.member.id


def test_grow_from_one_to_five_and_shrink_to_three_while_writing() -> None:
    async def main() -> None:
        async with in_process_cluster(size=1) as cluster:
            for name in ("n2", "n3", "n4", "n5"):
                cluster.reserve(name)
            acknowledged: dict[str, str] = {}
            # The client knows every endpoint from the start, joined or not.
            async with cluster.client(request_timeout=10.0) as client:
                done = trio.Event()

                async def writer() -> None:
                    n = 0
                    while not done.is_set():
                        key, value = f"k{n:05d}", f"v{n}"
                        try:
                            await client.put(key, value)
                        except KvError:
                            pass  # not acknowledged (may or may not be there)
                        else:
                            acknowledged[key] = value
                        n += 1

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(writer)
                    ids = {"n1": cluster.members["n1"].id}
                    for name in ("n2", "n3", "n4", "n5"):
                        ids[name] = await add_member(cluster, client, name)
                    listed = await client.member_list()
                    assert {m.id for m in listed.members} == set(ids.values())
                    assert not any(m.is_learner for m in listed.members)
                    assert all(m.status == "started" for m in listed.members)
                    for member in cluster.members.values():
                        assert member.node is not None
                        assert member.node.conf_state().voters == tuple(sorted(ids.values()))
                    # Shrink: the original member (the leader until now) and one more.
                    for name in ("n1", "n2"):
                        await client.member_remove(ids[name])
                        await cluster.forget(name)
                    listed = await client.member_list()
                    assert {m.name for m in listed.members} == {"n3", "n4", "n5"}
                    writes_before = len(acknowledged)
                    with trio.fail_after(10):
                        while len(acknowledged) < writes_before + 20:
                            await trio.sleep(0.01)
                    done.set()
            assert len(acknowledged) > 50
            async with cluster.client() as reader:
                response = await reader.get("k", prefix=True)
                present = {kv.key.decode(): kv.value.decode() for kv in response.kvs}
            missing = {k for k, v in acknowledged.items() if present.get(k) != v}
            assert not missing, f"{len(missing)} acknowledged writes lost"

    trio.run(main)


def test_learner_is_not_promoted_before_it_catches_up() -> None:
    async def main() -> None:
        async with in_process_cluster(size=3) as cluster:
            peer_url = cluster.reserve("n4")
            async with cluster.client() as client:
                for n in range(20):
                    await client.put(f"k{n}", "v")
                added = await client.member_add("n4", peer_url, learner=True)
                # Not started yet: it holds nothing of the leader's log.
                try:
                    await client.member_promote(added.member.id)
                except InvalidRequest as error:
                    assert error.code is ErrorCode.FAILED_PRECONDITION
                    assert "not ready" in str(error)
                else:
                    raise AssertionError("a learner that holds nothing was promoted")
                listed = await client.member_list()
                learner = next(m for m in listed.members if m.id == added.member.id)
                assert learner.is_learner and learner.status == "unstarted"
                # Voters cannot be promoted; unknown ids are not found.
                voter = cluster.members["n1"].id
                for target, code in (
                    (voter, ErrorCode.FAILED_PRECONDITION),
                    (12345, ErrorCode.MEMBER_NOT_FOUND),
                ):
                    try:
                        await client.member_promote(target)
                    except InvalidRequest as error:
                        assert error.code is code
                    else:
                        raise AssertionError(f"promoting {target:x} was accepted")
                member = await cluster.join("n4", added.member.id, added.cluster_id)
                await promote_when_ready(client, added.member.id)
                with trio.fail_after(10):
                    while member.state.status().keys < 20:
                        await trio.sleep(0.01)
                assert member.node is not None
                assert added.member.id in member.node.conf_state().voters

    trio.run(main)


def test_removing_the_leader_hands_over_and_ids_are_never_reused() -> None:
    async def main() -> None:
        async with in_process_cluster(size=3) as cluster, cluster.client() as client:
            await client.put("before", "1")
            leader_name = await cluster.leader()
            leader_id = cluster.members[leader_name].id
            leader_changes = {
                n: m.node.leader_changes for n, m in cluster.members.items() if m.node
            }
            await client.member_remove(leader_id)
            await cluster.forget(leader_name)
            new_leader = await cluster.leader()
            assert new_leader != leader_name
            # Handed over (TimeoutNow) rather than lost to an election timeout:
            # normally exactly one leader change (more only if a loaded machine
            # stalled a member past an election timeout meanwhile).
            for name, member in cluster.members.items():
                assert member.node is not None
                assert member.node.leader_changes >= leader_changes[name] + 1
                assert leader_id not in member.node.conf_state().voters
                assert leader_id in member.state.members.removed
            await client.put("after", "2")
            # The removed id is gone for good.
            try:
                await client.member_remove(leader_id)
            except InvalidRequest as error:
                assert error.code is ErrorCode.MEMBER_NOT_FOUND
                assert "was removed" in str(error)
            else:
                raise AssertionError("removing a removed member was accepted")
            # A new member (even with the old name and address) gets a new id.
            peer = cluster.peers[leader_name]
            added = await client.member_add(leader_name, f"{peer[0]}:{peer[1]}", learner=True)
            assert added.member.id != leader_id
            assert added.member.id not in {m.id for m in cluster.members.values()}

    trio.run(main)


def test_move_leader() -> None:
    async def main() -> None:
        async with in_process_cluster(size=3) as cluster:
            peer_url = cluster.reserve("n4")
            async with cluster.client() as client:
                leader = await cluster.leader()
                target = next(n for n in cluster.members if n != leader)
                moved = await client.move_leader(cluster.members[target].id)
                assert moved.leader == cluster.members[target].id
                assert await cluster.leader() == target
                node = cluster.members[target].node
                assert node is not None and node.role is Role.LEADER
                added = await client.member_add("n4", peer_url, learner=True)
                for bad, code in (
                    (added.member.id, ErrorCode.FAILED_PRECONDITION),
                    (987654321, ErrorCode.MEMBER_NOT_FOUND),
                ):
                    try:
                        await client.move_leader(bad)
                    except InvalidRequest as error:
                        assert error.code is code
                    else:
                        raise AssertionError(f"moving leadership to {bad:x} was accepted")
                assert await cluster.leader() == target

    trio.run(main)


def test_followers_send_membership_requests_to_the_leader() -> None:
    """A follower answers not_leader naming the leader's client address; the
    client follows it, even when it was given the follower alone."""

    async def main() -> None:
        async with in_process_cluster(size=3) as cluster:
            leader = await cluster.leader()
            follower = next(n for n in cluster.members if n != leader)
            answer = await cluster.members[follower].handle(MemberListRequest())
            assert isinstance(answer, Error) and answer.code is ErrorCode.NOT_LEADER
            assert answer.leader == cluster.endpoints[cluster.names.index(leader)]
            async with Client([cluster.endpoints[cluster.names.index(follower)]]) as client:
                listed = await client.member_list()
                assert listed.leader == cluster.members[leader].id
                assert len(listed.members) == 3

    trio.run(main)


def test_new_member_catches_up_through_a_snapshot_and_survives_a_restart() -> None:
    """The leader has compacted its log: the member joins through
    InstallSnapshot (Raft configuration from the snapshot metadata, member
    table from the state machine image), then restarts from its own disk."""

    async def main() -> None:
        options = {"snapshot_count": 40, "snapshot_catchup_entries": 5}
        async with in_process_cluster(size=3, **options) as cluster:
            peer_url = cluster.reserve("n4")
            async with cluster.client() as client:
                for n in range(120):
                    await client.put(f"k{n:03d}", str(n))
                leader = cluster.members[await cluster.leader()]
                assert leader.node is not None
                assert leader.node.storage.first_index() > 1, "the log was compacted"
                member_id = await add_member_with(cluster, client, "n4", peer_url)
                member = cluster.members["n4"]
                assert member.node is not None
                with trio.fail_after(10):
                    while member.state.status().keys < 120:
                        await trio.sleep(0.01)
                assert {m.name for m in member.member_table().members} == {"n1", "n2", "n3", "n4"}
                await cluster.kill("n4")
                member = await cluster.restart("n4")
                assert member.id == member_id
                assert member.node is not None
                assert member_id in member.node.conf_state().voters
                await client.put("after-restart", "x")
                with trio.fail_after(10):
                    while member.state.status().keys < 121:
                        await trio.sleep(0.01)

    trio.run(main)


async def add_member_with(
    cluster: InProcessCluster, client: Client, name: str, peer_url: str
) -> int:
    added = await client.member_add(name, peer_url, learner=True)
    await cluster.join(name, added.member.id, added.cluster_id)
    await promote_when_ready(client, added.member.id)
    return added.member.id
