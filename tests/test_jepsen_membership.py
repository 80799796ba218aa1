"""The membership nemesis against real member processes.

One fault removes a member, waits for it to exit by itself, wipes it, adds it
back under its name as a learner with a new id, starts it and promotes it; the
cluster object then knows the new id, so a later SIGKILL and restart of that
member (the kill nemesis's move) rejoins it with its data.  A run that ends
during the hold still gets the member back (the re-add is shielded).
"""

from __future__ import annotations

import signal
from pathlib import Path

import trio

from jepsen_like.cluster import AddressedCluster, free_shared_port
from jepsen_like.nemesis.base import NemesisEnv, PlannedFault
from jepsen_like.nemesis.membership import MembershipNemesis
from jepsen_like.workload import Recorder
from kvstore.client import Client

ADDRESSES = ["127.0.0.81", "127.0.0.82", "127.0.0.83"]


def _cluster(tmp_path: Path) -> AddressedCluster:
    return AddressedCluster(
        tmp_path / "data",
        ADDRESSES,
        base_port=free_shared_port(ADDRESSES),
        tick_ms=50,
        die_with_parent=True,
    )


async def _voters(cluster: AddressedCluster) -> dict[str, int]:
    async with Client(cluster.endpoints) as client:
        members = (await client.member_list()).members
    assert not any(m.is_learner for m in members), members
    return {m.name: m.id for m in members}


async def _read_on(cluster: AddressedCluster, name: str, expected: int) -> None:
    """Wait (bounded) until member ``name`` serves all ``expected`` keys itself."""
    endpoint = cluster.member(name).client_address
    with trio.fail_after(20):
        while True:
            async with Client([endpoint], request_timeout=2) as client:
                resp = await client.get("k/", prefix=True, serializable=True)
            if len(resp.kvs) == expected:
                return
            await trio.sleep(0.1)


def test_remove_wipe_readd_promote_then_kill_and_restart(tmp_path: Path) -> None:
    cluster = _cluster(tmp_path)
    nemesis = MembershipNemesis()
    env = NemesisEnv(cluster, Recorder(), log=lambda line: None)

    async def main() -> None:
        await cluster.start_async(timeout=30)
        async with Client(cluster.endpoints) as client:
            for i in range(20):
                await client.put(f"k/{i:02d}", f"v{i}")
        before = await _voters(cluster)
        old_id = cluster.member("n2").member_id
        assert before["n2"] == old_id

        event = await nemesis.apply(env, PlannedFault(0, "membership", {"target": "n2"}, 0.5))

        assert (event.outcome, event.anomaly, event.targets) == ("applied", None, ["n2"]), event
        steps = event.details["steps"]
        assert [s["step"] for s in steps] == ["remove", "stop", "add", "start", "promote"]
        assert all(s["outcome"] == "ok" and s["end"] >= s["start"] for s in steps), steps
        assert steps[1]["stopped_by"] == "itself" and steps[1]["exit_code"] == 0
        assert steps[4]["tries"] >= 1
        assert event.end is not None and event.end >= steps[-1]["end"]
        new_id = cluster.member("n2").member_id
        assert new_id != old_id and event.details["new_id"] == f"{new_id:x}"
        after = await _voters(cluster)
        assert after == {**before, "n2": new_id}
        assert env.busy == set()
        await _read_on(cluster, "n2", 20)

        # The kill nemesis's move on the re-added member: it restarts with its data.
        await cluster.kill_async("n2", signal.SIGKILL)
        async with Client(cluster.endpoints) as client:
            await client.put("k/20", "v20")
        await cluster.restart_async("n2", 30)
        await _read_on(cluster, "n2", 21)
        assert await _voters(cluster) == after

    try:
        trio.run(main)
    finally:
        cluster.stop()


def test_a_member_removed_when_the_run_ends_is_added_back(tmp_path: Path) -> None:
    cluster = _cluster(tmp_path)
    nemesis = MembershipNemesis()
    env = NemesisEnv(cluster, Recorder(), log=lambda line: None)

    async def main() -> None:
        await cluster.start_async(timeout=30)
        before = await _voters(cluster)
        with trio.move_on_after(3):  # the run ends during the 60 s hold
            await nemesis.apply(env, PlannedFault(0, "membership", {"target": "leader"}, 60))
        after = await _voters(cluster)
        assert len(after) == 3 and set(after) == set(before)
        assert len(set(after.values()) - set(before.values())) == 1
        assert all(cluster.pid_of(name) is not None for name in cluster.names)
        await nemesis.heal_all(env)  # nothing left to do
        assert await _voters(cluster) == after

    try:
        trio.run(main)
    finally:
        cluster.stop()
