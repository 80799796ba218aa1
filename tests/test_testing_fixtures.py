"""The helpers users test their own services with: the pytest fixture and the
in-process cluster."""

from __future__ import annotations

import signal

import pytest
import trio

from kvstore.client import InvalidRequest, SyncClient
from kvstore.embed import embedded_member
from kvstore.local_cluster import ProcessCluster
from kvstore.pytest_plugin import kvstore_cluster
from kvstore.testing import in_process_cluster

__all__ = ["kvstore_cluster"]  # the fixture, used by name below


def test_fixture_gives_a_working_cluster_that_survives_a_member_kill(
    kvstore_cluster: ProcessCluster,
) -> None:
    with SyncClient(kvstore_cluster.endpoints) as client:
        client.put("service/a", "1")
        leader = kvstore_cluster.leader(timeout=10)
        assert leader is not None
        kvstore_cluster.kill(leader, signal.SIGKILL)
        assert client.get("service/a").kvs[0].value == b"1"
        client.put("service/b", "2")
        kvstore_cluster.restart(leader)
        assert client.get("service/", prefix=True).count == 2


def test_in_process_cluster_restarts_a_member_from_its_data_dir() -> None:
    async def main() -> None:
        async with in_process_cluster() as cluster:
            async with cluster.client() as client:
                await client.put("k", "v")
            await cluster.kill("n1")
            await cluster.restart("n1")
            member = cluster.members["n1"]
            with trio.fail_after(10):
                while member.state.status().keys != 1:
                    await trio.sleep(0.01)

    trio.run(main)


def test_errors_inside_the_blocks_propagate_unwrapped() -> None:
    """A KvError raised in the body of an embedded member or a client block
    reaches the caller as itself, not wrapped in an ExceptionGroup."""

    async def main() -> None:
        with pytest.raises(InvalidRequest):
            async with embedded_member("solo") as embedded:
                await embedded.client.put("", "empty keys are refused")
        with pytest.raises(InvalidRequest):
            async with in_process_cluster(size=1) as cluster, cluster.client() as client:
                await client.put("", "x")

    trio.run(main)
