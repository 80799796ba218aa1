"""Health and metrics: the /metrics page, /health, bad HTTP input, ``kvctl endpoint health``.

Clusters here are real: in-process members on loopback (20 ms ticks) for most
tests, real ``kvctl server`` processes with ``--listen-metrics`` for the end to
end ones.  Conditions that take time (a leader lost, a heartbeat measured) are
awaited with a bounded deadline, never slept on.
"""

from __future__ import annotations

import json
import re
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
from click.testing import CliRunner
from prometheus_client.parser import text_string_to_metric_families

from cli.main import cli
from kvstore import metrics_http
from kvstore.client import Client, KvError
from kvstore.config import Address, MemberConfig, format_address
from kvstore.embed import embedded_member
from kvstore.metrics import Histogram
from kvstore.server import Member
from kvstore.testing import free_port, in_process_cluster, process_cluster
from raft.observer import RoundTripTimer

NO_LEADER = b'{"health": "false", "reason": "no leader"}'
METRICS = ("127.0.0.1", 0)
"""Serve metrics on any free loopback port (each member gets its own)."""


# -- A small HTTP client ---------------------------------------------------------------


async def http_exchange(address: Address, raw: bytes, limit: float = 5.0) -> bytes:
    """Send ``raw`` and read until the server closes the connection."""
    with trio.fail_after(limit):
        stream = await trio.open_tcp_stream(*address)
        async with stream:
            await stream.send_all(raw)
            data = b""
            while chunk := await stream.receive_some(65536):
                data += chunk
            return data


async def http_get(address: Address, path: str) -> tuple[int, bytes]:
    raw = f"GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n".encode()
    return parse_response(await http_exchange(address, raw))


def parse_response(data: bytes) -> tuple[int, bytes]:
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, body


async def scrape(member: Member) -> dict[str, float]:
    """The member's /metrics page, parsed: ``'name{label="v",...}'`` -> value."""
    assert member.metrics_address is not None
    status, body = await http_get(member.metrics_address, "/metrics")
    assert status == 200
    return parse_page(body.decode())


def parse_page(page: str) -> dict[str, float]:
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(page):
        assert family.name.startswith("kvstore_"), family.name
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return samples


async def wait_for(condition, limit: float = 10.0, interval: float = 0.02):  # type: ignore[no-untyped-def]
    """Poll the async ``condition`` until it returns something truthy (bounded)."""
    with trio.fail_after(limit):
        while True:
            result = await condition()
            if result:
                return result
            await trio.sleep(interval)


# -- Accumulators ----------------------------------------------------------------------


def test_histogram_buckets_are_cumulative_and_inclusive() -> None:
    histogram = Histogram([0.1, 1.0])
    for value in (0.05, 0.1, 0.5, 1.0, 3.0):
        histogram.observe(value)
    assert histogram.cumulative() == [("0.1", 2), ("1.0", 4), ("+Inf", 5)]
    assert histogram.count == 5 and histogram.sum == pytest.approx(4.65)


def test_round_trip_timer_times_one_heartbeat_at_a_time_and_forgets_lost_ones() -> None:
    now = [0.0]
    seen: list[tuple[int, float]] = []
    timer = RoundTripTimer(lambda peer, rtt: seen.append((peer, rtt)), 2.0, lambda: now[0])
    timer.sent(7)
    now[0] = 0.1
    timer.sent(7)  # a second heartbeat while the first is outstanding is not timed
    now[0] = 0.25
    timer.answered(7)
    timer.answered(7)  # the answer to the untimed one: no sample
    assert seen == [(7, pytest.approx(0.25))]
    timer.sent(7)
    timer.lost(7)
    timer.answered(7)
    assert len(seen) == 1
    timer.sent(8)
    now[0] = 10.0  # the answer never came: given up, the next heartbeat is timed
    timer.sent(8)
    now[0] = 10.5
    timer.answered(8)
    assert seen[-1] == (8, pytest.approx(0.5))


# -- The metrics page on a real cluster ---------------------------------------------------


def test_metrics_parse_and_counters_move_with_traffic() -> None:
    async def main() -> None:
        options = {"listen_metrics": METRICS, "snapshot_count": 20}
        async with in_process_cluster(3, **options) as cluster:
            leader_name = await cluster.leader()
            leader = cluster.members[leader_name]
            follower = next(m for n, m in cluster.members.items() if n != leader_name)
            before = await scrape(leader)
            endpoint = format_address(cluster.clients[leader_name])
            async with Client([endpoint]) as client:
                async with client.watch("m/", prefix=True) as watch:
                    for i in range(30):
                        await client.put(f"m/{i}", "v")
                    await client.get("m/1")
                    lease = await client.lease_grant(5)
                    await client.put("m/leased", "v", lease=lease.id)
                    received = 0
                    async for response in watch:
                        received += len(response.events)
                        if received >= 31:
                            break
                    with pytest.raises(KvError):  # a revision from the future
                        await client.compact(10**9)
                    await client.compact(5)
                    during_watch = await scrape(leader)
                after = await scrape(leader)

            def moved(name: str) -> float:
                return after.get(name, 0.0) - before.get(name, 0.0)

            assert moved('kvstore_client_requests_total{outcome="ok",type="put"}') == 31
            assert moved('kvstore_client_requests_total{outcome="ok",type="range"}') == 1
            assert moved('kvstore_client_requests_total{outcome="ok",type="lease_grant"}') == 1
            assert moved('kvstore_client_requests_total{outcome="ok",type="compaction"}') == 1
            assert (
                after['kvstore_client_requests_total{outcome="future_revision",type="compaction"}']
                == 1
            )
            assert moved('kvstore_client_request_duration_seconds_count{type="put"}') == 31
            assert moved('kvstore_client_request_duration_seconds_sum{type="put"}') > 0
            assert moved("kvstore_proposals_committed_total") >= 33
            assert after["kvstore_proposals_failed_total"] == 0
            assert after["kvstore_proposals_pending"] == 0
            assert moved("kvstore_wal_fsync_duration_seconds_count") > 0
            assert moved("kvstore_apply_duration_seconds_count") > 0
            assert after["kvstore_keys"] == before["kvstore_keys"] + 31
            assert after["kvstore_revision"] >= before["kvstore_revision"] + 31
            assert after["kvstore_compacted_revision"] == 5
            assert after["kvstore_leases"] == 1
            assert during_watch["kvstore_watchers"] == 1
            assert moved("kvstore_watch_events_sent_total") >= 31
            assert after["kvstore_has_leader"] == 1 and after["kvstore_is_leader"] == 1
            assert after["kvstore_leader_changes_total"] >= 1
            assert after["kvstore_term"] >= 1
            assert after["kvstore_commit_index"] >= after["kvstore_applied_index"] > 0
            # 20 entries between snapshots: the leader has saved at least one.
            assert after["kvstore_snapshot_save_duration_seconds_count"] >= 1
            assert after["kvstore_snapshot_size_bytes"] > 0
            peer = f"{follower.id:x}"
            assert moved(f'kvstore_peer_sent_bytes_total{{peer="{peer}"}}') > 0
            assert after[f'kvstore_peer_received_bytes_total{{peer="{peer}"}}'] > 0
            round_trips = f'kvstore_peer_round_trip_time_seconds_count{{peer="{peer}"}}'

            async def heartbeats_timed() -> bool:
                return (await scrape(leader)).get(round_trips, 0) > 0

            await wait_for(heartbeats_timed)
            follower_page = await scrape(follower)
            assert follower_page["kvstore_is_leader"] == 0
            assert follower_page["kvstore_keys"] == after["kvstore_keys"]

    trio.run(main)


def test_a_restarted_member_reports_the_snapshot_it_applied() -> None:
    async def main() -> None:
        options = {"listen_metrics": METRICS, "snapshot_count": 10}
        async with in_process_cluster(3, **options) as cluster, cluster.client() as client:
            for i in range(25):
                await client.put(f"s/{i}", "v")
            victim = cluster.names[0]
            member = cluster.members[victim]
            await wait_for(lambda: _snapshot_saved(member))  # each member snapshots on its own
            await cluster.kill(victim)
            restarted = await cluster.restart(victim)
            page = await scrape(restarted)
            assert page["kvstore_snapshot_apply_duration_seconds_count"] == 1
            assert page["kvstore_snapshot_size_bytes"] > 0

    trio.run(main)


async def _snapshot_saved(member: Member) -> bool:
    return (await scrape(member))["kvstore_snapshot_save_duration_seconds_count"] >= 1


def test_members_in_one_process_keep_separate_registries() -> None:
    async def main() -> None:
        async with in_process_cluster(2, listen_metrics=METRICS) as cluster:
            for member in cluster.members.values():
                info = [
                    name for name in await scrape(member) if name.startswith("kvstore_member_info")
                ]
                assert info == [
                    f'kvstore_member_info{{cluster_id="{member.cluster_id:x}",'
                    f'member_id="{member.id:x}",name="{member.name}",version="0.1.0"}}'
                ]

    trio.run(main)


# -- /health ---------------------------------------------------------------------------


def test_health_is_200_with_a_leader_and_503_without_one() -> None:
    async def main() -> None:
        async with in_process_cluster(3, listen_metrics=METRICS) as cluster:
            survivor = cluster.members[cluster.names[2]]
            assert survivor.metrics_address is not None
            status, body = await http_get(survivor.metrics_address, "/health")
            assert (status, json.loads(body)) == (200, {"health": "true", "reason": ""})
            for name in cluster.names[:2]:
                await cluster.kill(name)

            async def unhealthy() -> tuple[int, bytes] | None:
                assert survivor.metrics_address is not None
                answer = await http_get(survivor.metrics_address, "/health")
                return answer if answer[0] != 200 else None

            status, body = await wait_for(unhealthy)
            assert status == 503
            health = json.loads(body)
            assert health["health"] == "false" and health["reason"]

            async def leaderless() -> bool:
                assert survivor.metrics_address is not None
                status, body = await http_get(survivor.metrics_address, "/health")
                return status == 503 and json.loads(body)["reason"] == "no leader"

            # Once its election timeout passes without a quorum it names no leader.
            await wait_for(leaderless)
            assert (await scrape(survivor))["kvstore_has_leader"] == 0

    trio.run(main)


# -- Bad HTTP input ----------------------------------------------------------------------


@pytest.fixture
def short_request_timeout(monkeypatch: pytest.MonkeyPatch) -> Iterator[float]:
    monkeypatch.setattr(metrics_http, "REQUEST_TIMEOUT", 0.3)
    yield 0.3


def test_bad_http_requests_get_an_error_and_the_member_keeps_serving(
    short_request_timeout: float,
) -> None:
    async def main() -> None:
        async with embedded_member(listen_metrics=METRICS, tick_interval=0.02) as embedded:
            address = embedded.member.metrics_address
            assert address is not None
            garbage = await http_exchange(address, b"\x00\x01 not http at all\r\n\r\n")
            assert parse_response(garbage)[0] == 400
            huge_header = b"GET /metrics HTTP/1.1\r\nX-Big: " + b"a" * 20_000 + b"\r\n\r\n"
            assert parse_response(await http_exchange(address, huge_header))[0] == 431
            big_body = (
                b"POST /metrics HTTP/1.1\r\nHost: t\r\nContent-Length: 100000\r\n\r\n" + b"x" * 100
            )
            assert parse_response(await http_exchange(address, big_body))[0] == 413
            chunked = (
                b"POST /health HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
                + b"800\r\n"
                + b"y" * 0x800
                + b"\r\n0\r\n\r\n"
            )
            assert parse_response(await http_exchange(address, chunked))[0] == 413
            assert (await http_get(address, "/nope"))[0] == 404
            post = b"POST /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
            assert parse_response(await http_exchange(address, post))[0] == 405
            head = b"HEAD /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
            status, body = parse_response(await http_exchange(address, head))
            assert (status, body) == (200, b"")
            # Two requests on one kept-alive connection.
            both = (
                b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n"
                b"GET /metrics?x=1 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
            )
            answers = await http_exchange(address, both)
            assert answers.count(b"HTTP/1.1 200 OK") == 2
            # A client that sends half a request and stalls is cut off.
            stream = await trio.open_tcp_stream(*address)
            async with stream:
                await stream.send_all(b"GET /metr")
                with trio.fail_after(short_request_timeout + 5):
                    assert await stream.receive_some(100) == b""
            # Still serving, HTTP and clients alike.
            assert (await http_get(address, "/health"))[0] == 200
            await embedded.client.put("still", "here")
            assert (await embedded.client.get("still")).kvs[0].value == b"here"

    trio.run(main)


# -- Real processes and kvctl -------------------------------------------------------------


def http_get_sync(address: str, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://{address}{path}", timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def test_process_members_serve_metrics_and_kvctl_endpoint_health() -> None:
    with process_cluster(3) as cluster:
        addresses = cluster.metrics_addresses
        assert len(addresses) == 3
        endpoints = ",".join(cluster.endpoints)
        runner = CliRunner()
        assert runner.invoke(cli, ["--endpoints", endpoints, "put", "k", "v"]).exit_code == 0
        for address in addresses:
            # A follower learns the leader and applies the put a moment after
            # the leader acknowledged it: wait for that, with a deadline.
            deadline = time.monotonic() + 10
            while True:
                status, body = http_get_sync(address, "/metrics")
                assert status == 200
                page = parse_page(body.decode())
                if page["kvstore_has_leader"] == 1 and page["kvstore_keys"] == 1:
                    break
                assert time.monotonic() < deadline, page
                time.sleep(0.05)
            assert http_get_sync(address, "/health")[0] == 200
        healthy = runner.invoke(cli, ["--endpoints", endpoints, "endpoint", "health"])
        assert healthy.exit_code == 0, healthy.output
        assert healthy.stdout.count("is healthy: successfully committed proposal: took = ") == 3

        survivor = cluster.names[2]
        for name in cluster.names[:2]:
            cluster.kill(name)
        survivor_endpoint = cluster.member(survivor).client_address
        deadline = time.monotonic() + 15
        while http_get_sync(addresses[2], "/health") != (503, NO_LEADER):
            assert time.monotonic() < deadline, "the survivor still names a leader"
            time.sleep(0.05)
        result = runner.invoke(
            cli,
            ["--endpoints", survivor_endpoint, "--command-timeout", "1", "endpoint", "health"],
        )
        assert result.exit_code == 1
        assert f"{survivor_endpoint} is unhealthy: failed to commit proposal: no leader" in (
            result.stderr
        )
        assert result.stderr.strip().splitlines()[-1] == "Error: unhealthy cluster"
        as_json = ["-w", "json", "endpoint", "health"]
        answer = runner.invoke(
            cli, ["--endpoints", survivor_endpoint, "--command-timeout", "1", *as_json]
        )
        assert answer.exit_code == 1
        (report,) = json.loads(answer.stdout)
        assert report["endpoint"] == survivor_endpoint and report["health"] is False
        assert report["error"]


def test_server_refuses_a_bad_metrics_address() -> None:
    result = CliRunner().invoke(cli, ["server", "--listen-metrics", "127.0.0.1"])
    assert result.exit_code != 0
    assert "has no port" in result.output
    assert "Traceback" not in result.output


def test_the_readme_lists_every_metric_and_names_follow_the_conventions() -> None:
    member = Member(
        MemberConfig(name="doc", data_dir=None, listen_client=METRICS, listen_peer=METRICS)
    )
    exported = {}
    for family in member.metrics.registry.collect():
        name = family.name + ("_total" if family.type == "counter" else "")
        exported[name] = family.type
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    section = readme.split("## Health and metrics", 1)[1].split("\n## ", 1)[0]
    listed = dict(re.findall(r"^\| `(kvstore_\w+)` \| (\w+) \|", section, re.MULTILINE))
    assert listed == exported
    for name, kind in exported.items():
        assert name.endswith("_total") == (kind == "counter"), name
        if kind == "histogram":
            assert name.endswith(("_seconds", "_bytes")), name


def test_server_names_a_busy_metrics_address(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = CliRunner().invoke(
            cli,
            [
                "server",
                "--data-dir",
                str(tmp_path / "m"),
                "--listen-client",
                f"127.0.0.1:{free_port()}",
                "--listen-peer",
                f"127.0.0.1:{free_port()}",
                "--listen-metrics",
                f"127.0.0.1:{port}",
                "--log-level",
                "error",
            ],
        )
    assert result.exit_code == 1
    assert result.output.strip().splitlines()[-1] == (
        f"Error: address already in use: metrics address 127.0.0.1:{port}"
    )
    assert "Traceback" not in result.output
