"""Benchmarks of watches and leases against a running cluster (not a test).

    kvctl cluster up --data-dir /tmp/bench-cluster &
    python3 bench/coordination_bench.py watch --watchers 1000 --rate 100
    python3 bench/coordination_bench.py leases --leases 10000 --ttl 30 --leader-pid PID

``watch``: W watchers on one prefix (multiplexed over a few connections), a
writer putting at a steady rate for a fixed time; reports the delivery latency
(from the put being sent to each watcher receiving its event) p50/p99/max, and
checks every watcher got every event once, in order.

``leases``: grants N leases, then keeps all of them alive for a while (each
renewed every TTL/3, as a session would) and reports keep-alive throughput,
latency, and the CPU the leader process used meanwhile (from /proc).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import trio

from kvstore import api
from kvstore.client import Client
from raft.framing import FrameReader, encode_frame


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


async def watch_bench(
    endpoints: list[str], watchers: int, connections: int, rate: float, seconds: float
) -> None:
    prefix = b"bench-watch/"
    sent_at: dict[bytes, float] = {}
    latencies: list[float] = []
    received: dict[int, list[bytes]] = {}
    streams: list[tuple[trio.SocketStream, FrameReader]] = []
    for n in range(connections):
        host, port = endpoints[n % len(endpoints)].rsplit(":", 1)
        stream = await trio.open_tcp_stream(host, int(port))
        streams.append((stream, FrameReader(stream, api.MAX_FRAME_BYTES)))
    request = api.WatchCreateRequest(key=prefix, range_end=api.prefix_range_end(prefix))
    for watch in range(watchers):
        stream, _ = streams[watch % connections]
        await stream.send_all(encode_frame(api.encode(api.ClientFrame(watch + 1, request))))
        received[watch + 1] = []
    total = int(rate * seconds)

    async def reader(stream_reader: FrameReader) -> None:
        while True:
            payload = await stream_reader.read()
            if payload is None:
                return
            frame = api.decode_server_frame(payload)
            response = frame.response
            if isinstance(response, api.WatchResponse):
                now = time.perf_counter()
                for event in response.events:
                    latencies.append(now - sent_at[event.kv.key])
                    received[frame.request_id].append(event.kv.key)

    async with trio.open_nursery() as nursery:
        for _, stream_reader in streams:
            nursery.start_soon(reader, stream_reader)
        await trio.sleep(1.0)  # let every watch be created
        async with Client(endpoints) as client:
            start = time.perf_counter()
            for n in range(total):
                key = prefix + b"%08d" % n
                sent_at[key] = time.perf_counter()
                await client.put(key, b"x" * 100)
                delay = start + (n + 1) / rate - time.perf_counter()
                if delay > 0:
                    await trio.sleep(delay)
        with trio.move_on_after(10):
            while len(latencies) < total * watchers:
                await trio.sleep(0.05)
        nursery.cancel_scope.cancel()
    expected = [prefix + b"%08d" % n for n in range(total)]
    complete = sum(1 for keys in received.values() if keys == expected)
    print(
        f"watch: {watchers} watchers on one prefix over {connections} connections, "
        f"{total} puts at {rate:.0f}/s"
    )
    print(
        f"  delivered {len(latencies)} of {total * watchers} events; "
        f"{complete}/{watchers} watchers saw every event once, in order"
    )
    ms = [value * 1000 for value in latencies]
    print(
        f"  delivery latency ms  p50 {percentile(ms, 0.5):.2f}  p99 {percentile(ms, 0.99):.2f}"
        f"  max {max(ms):.2f}  mean {statistics.fmean(ms):.2f}"
    )


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100.0


async def leases_bench(
    endpoints: list[str], count: int, ttl: int, seconds: float, leader_pid: int | None
) -> None:
    async with Client(endpoints, request_timeout=10) as client:
        ids: list[int] = []
        start = time.perf_counter()
        async with trio.open_nursery() as nursery:

            async def grant(n: int) -> None:
                for _ in range(n):
                    response = await client.request(api.LeaseGrantRequest(ttl=ttl))
                    assert isinstance(response, api.LeaseGrantResponse)
                    ids.append(response.id)

            for _ in range(32):
                nursery.start_soon(grant, count // 32)
        grant_time = time.perf_counter() - start
        print(f"leases: granted {len(ids)} in {grant_time:.2f}s ({len(ids) / grant_time:,.0f}/s)")
        latencies: list[float] = []
        cpu_before = cpu_seconds(leader_pid) if leader_pid else 0.0
        start = time.perf_counter()
        interval = ttl / 3

        async def keeper(mine: list[int]) -> None:
            while time.perf_counter() - start < seconds:
                round_start = time.perf_counter()
                for lease_id in mine:
                    t = time.perf_counter()
                    response = await client.request(api.LeaseKeepAliveRequest(id=lease_id))
                    assert isinstance(response, api.LeaseKeepAliveResponse) and response.ttl > 0
                    latencies.append(time.perf_counter() - t)
                await trio.sleep(max(0.0, interval - (time.perf_counter() - round_start)))

        async with trio.open_nursery() as nursery:
            for worker in range(64):
                nursery.start_soon(keeper, ids[worker::64])
        elapsed = time.perf_counter() - start
        cpu = (cpu_seconds(leader_pid) - cpu_before) if leader_pid else float("nan")
        ms = [value * 1000 for value in latencies]
        print(
            f"  kept {len(ids)} leases (TTL {ttl}s) alive for {elapsed:.1f}s: "
            f"{len(latencies):,} keep-alives, {len(latencies) / elapsed:,.0f}/s"
        )
        print(
            f"  keep-alive latency ms  p50 {percentile(ms, 0.5):.2f}  "
            f"p99 {percentile(ms, 0.99):.2f}"
        )
        if leader_pid:
            print(f"  leader CPU: {cpu:.2f}s over {elapsed:.1f}s ({100 * cpu / elapsed:.0f}%)")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("what", choices=["watch", "leases"])
    parser.add_argument("--endpoints", default="127.0.0.1:2379,127.0.0.1:2389,127.0.0.1:2399")
    parser.add_argument("--watchers", type=int, default=1000)
    parser.add_argument("--connections", type=int, default=10)
    parser.add_argument("--rate", type=float, default=100.0, help="puts per second")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--leases", type=int, default=10_000)
    parser.add_argument("--ttl", type=int, default=30)
    parser.add_argument("--leader-pid", type=int, default=None)
    args = parser.parse_args()
    endpoints = args.endpoints.split(",")
    if args.what == "watch":
        trio.run(watch_bench, endpoints, args.watchers, args.connections, args.rate, args.seconds)
    else:
        trio.run(leases_bench, endpoints, args.leases, args.ttl, args.seconds, args.leader_pid)


if __name__ == "__main__":
    main()
