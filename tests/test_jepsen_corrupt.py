"""The corrupt nemesis against real member processes.

A flipped WAL bit makes the member refuse to start (exit status 1, an error
naming the file); with the bytes restored it starts again.  A torn write is
recovered from.  Either way the member ends up serving the committed data.
(Cutting the last record as written is covered on storage files in
test_jepsen_harness.py: whether the cut entries had been acknowledged, which
decides between recovery and a fail-stop, depends on timing.)
"""

from __future__ import annotations

from pathlib import Path

import trio

from jepsen_like.cluster import AddressedCluster, free_shared_port
from jepsen_like.nemesis.base import NemesisEnv, PlannedFault
from jepsen_like.nemesis.corrupt import CorruptNemesis
from jepsen_like.workload import Recorder
from kvstore.client import Client

ADDRESSES = ["127.0.0.71", "127.0.0.72", "127.0.0.73"]


def test_flipped_bits_are_refused_and_torn_tails_recovered(tmp_path: Path) -> None:
    cluster = AddressedCluster(
        tmp_path / "data",
        ADDRESSES,
        base_port=free_shared_port(ADDRESSES),
        tick_ms=50,
        die_with_parent=True,
    )
    nemesis = CorruptNemesis()
    env = NemesisEnv(cluster, Recorder(), log=lambda line: None)

    async def read_on_n2() -> list[bytes]:
        endpoint = cluster.member("n2").client_address
        with trio.fail_after(20):
            while True:
                async with Client([endpoint], request_timeout=2) as client:
                    resp = await client.get("k/", prefix=True, serializable=True)
                if len(resp.kvs) == 20:
                    return [kv.value for kv in resp.kvs]
                await trio.sleep(0.1)

    async def main() -> None:
        await cluster.start_async(timeout=30)
        async with Client(cluster.endpoints) as client:
            for i in range(20):
                await client.put(f"k/{i:02d}", f"v{i}")
        expected = [f"v{i}".encode() for i in range(20)]
        assert await read_on_n2() == expected
        for mode, outcome in (("flip-wal", "refused"), ("torn-write", "recovered")):
            fault = PlannedFault(0, "corrupt", {"target": "n2", "mode": mode, "seed": 7}, 0)
            event = await nemesis.apply(env, fault)
            assert event.outcome == outcome, event
            assert event.anomaly is None, event.anomaly
            if outcome == "refused":
                assert event.details["exit_code"] == 1
                assert Path(event.details["file"]).name in event.details["error"]
            assert cluster.pid_of("n2") is not None
            assert await read_on_n2() == expected
        assert dict(nemesis.tally) == {"refused": 1, "recovered": 1}

    try:
        trio.run(main)
    finally:
        cluster.stop()
