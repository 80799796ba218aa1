"""One member's Prometheus metrics, in a registry of its own.

:class:`MemberMetrics` owns a ``CollectorRegistry`` per member (never the
global one), so several members in one process (tests, embedding) do not
clash.  Scrape it with ``prometheus_client.generate_latest(metrics.registry)``
from the member's trio thread, or over HTTP with ``--listen-metrics``
(:mod:`kvstore.metrics_http`).

Two kinds of numbers, kept cheap on the request and write paths:

* State (term, indexes, keys, revision, watchers, leases, bytes per peer, ...)
  is read from the member only when scraped, by :class:`_MemberCollector`;
  nothing is updated per request for it.
* Events (request outcomes and latencies, proposals, fsync, apply and snapshot
  timings, round trips) go into plain integers and :class:`Histogram`
  accumulators: lock-free (the member's trio thread is the only writer) and
  about five times cheaper than ``prometheus_client.Histogram.observe``, which
  takes a lock.  The collector turns them into metric families at scrape
  time.  Per-label accumulators are created once per label value and reused.

Every metric is listed, with its meaning, in the README ("Health and metrics").
"""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

from prometheus_client.core import (
    CollectorRegistry,
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from kvstore.api import Error, Request, Response
from raft.observer import RaftObserver
from raft.ready import Role

if TYPE_CHECKING:
    from kvstore.server import Member

__all__ = [
    "DISK_BUCKETS",
    "NETWORK_BUCKETS",
    "REQUEST_BUCKETS",
    "SNAPSHOT_BUCKETS",
    "Histogram",
    "MemberMetrics",
    "RequestMetrics",
]


def _exponential(start: float, factor: float, count: int) -> tuple[float, ...]:
    return tuple(start * factor**i for i in range(count))


DISK_BUCKETS = _exponential(0.0005, 2, 15)
"""0.5 ms .. 8.2 s: fsync and apply batches."""
REQUEST_BUCKETS = _exponential(0.0005, 2, 16)
"""0.5 ms .. 16 s: client requests (a write waits up to the request timeout)."""
NETWORK_BUCKETS = _exponential(0.0001, 2, 16)
"""0.1 ms .. 3.3 s: peer round trips."""
SNAPSHOT_BUCKETS = _exponential(0.001, 2, 16)
"""1 ms .. 33 s: saving or applying a snapshot."""


class Histogram:
    """A histogram accumulator for one series: bucket counts and a sum.

    Not thread-safe, and needs not be: only the member's trio thread observes.
    """

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        """Per bucket, not cumulative; the last one is above every bound."""
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self) -> list[tuple[str, float]]:
        """``(le, count)`` pairs as Prometheus wants them, ending with ``+Inf``."""
        buckets: list[tuple[str, float]] = []
        total = 0
        for bound, count in zip(self.bounds, self.counts, strict=False):
            total += count
            buckets.append((_float_text(bound), total))
        buckets.append(("+Inf", total + self.counts[-1]))
        return buckets


def _float_text(value: float) -> str:
    return repr(round(value, 6))


class _RequestTally:
    __slots__ = ("errors", "latency", "ok", "type")

    def __init__(self, request_type: str) -> None:
        self.type = request_type
        self.ok = 0
        self.errors: Counter[str] = Counter()
        self.latency = Histogram(REQUEST_BUCKETS)


class RequestMetrics:
    """Client requests answered by the listener: outcome counts and latency per type."""

    def __init__(self) -> None:
        self._tallies: dict[type, _RequestTally] = {}

    def observe(self, request: Request, response: Response | Error, seconds: float) -> None:
        """Count one answered request (called by the listener for every answer)."""
        tally = self._tallies.get(request.__class__)
        if tally is None:
            tally = self._tallies[request.__class__] = _RequestTally(_request_type(request))
        if response.__class__ is Error:
            tally.errors[response.code] += 1
        else:
            tally.ok += 1
        tally.latency.observe(seconds)

    def tallies(self) -> list[_RequestTally]:
        return sorted(self._tallies.values(), key=lambda tally: tally.type)


def _request_type(request: Request) -> str:
    tag = request.__struct_config__.tag
    return tag if isinstance(tag, str) else type(request).__name__


class _RaftTimings(RaftObserver):
    """What the Raft driver and transport report, kept for the collector."""

    def __init__(self) -> None:
        self.wal_fsync = Histogram(DISK_BUCKETS)
        self.round_trips: dict[int, Histogram] = {}

    def wal_synced(self, seconds: float) -> None:
        self.wal_fsync.observe(seconds)

    def peer_round_trip(self, peer: int, seconds: float) -> None:
        histogram = self.round_trips.get(peer)
        if histogram is None:
            histogram = self.round_trips[peer] = Histogram(NETWORK_BUCKETS)
        histogram.observe(seconds)


class MemberMetrics:
    """Everything one member measures, and the registry that exports it.

    The member calls the recording methods; the registry reads the rest from
    the member when scraped.
    """

    def __init__(self, member: Member, version: str) -> None:
        self.version = version
        self.raft = _RaftTimings()
        """Pass to the Raft node and transport as their observer."""
        self.requests = RequestMetrics()
        self.apply = Histogram(DISK_BUCKETS)
        self.snapshot_save = Histogram(SNAPSHOT_BUCKETS)
        self.snapshot_apply = Histogram(SNAPSHOT_BUCKETS)
        self.snapshot_size = 0
        """Bytes in the member's most recent snapshot (saved or applied)."""
        self.proposals_committed = 0
        self.proposals_failed = 0
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_MemberCollector(member, self))

    def snapshot_saved(self, seconds: float, size: int) -> None:
        self.snapshot_save.observe(seconds)
        self.snapshot_size = size

    def snapshot_applied(self, seconds: float, size: int) -> None:
        self.snapshot_apply.observe(seconds)
        self.snapshot_size = size


def _peer_label(peer: int) -> str:
    return f"{peer:x}"


def _histogram(name: str, documentation: str, histogram: Histogram) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, documentation)
    family.add_metric([], histogram.cumulative(), histogram.sum)
    return family


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


def _counter(name: str, documentation: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, documentation, value=value)


class _MemberCollector(Collector):
    """Builds the member's metric families at scrape time."""

    def __init__(self, member: Member, metrics: MemberMetrics) -> None:
        self._member = member
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        member, metrics = self._member, self._metrics
        info = GaugeMetricFamily(
            "kvstore_member_info",
            "Always 1; the labels name this member.",
            labels=["name", "member_id", "cluster_id", "version"],
        )
        info.add_metric(
            [member.name, f"{member.id:x}", f"{member.cluster_id:x}", metrics.version], 1
        )
        yield info
        yield from self._raft(member)
        yield from self._store(member)
        yield from self._events(metrics)
        yield from self._peers(member, metrics)
        yield from self._requests(metrics)

    def _raft(self, member: Member) -> Iterator[Metric]:
        node = member.node
        leader = node.leader if node is not None else 0
        yield _gauge("kvstore_has_leader", "1 if this member knows a leader, else 0.", leader != 0)
        yield _gauge(
            "kvstore_is_leader",
            "1 if this member is the leader, else 0.",
            node is not None and node.role is Role.LEADER,
        )
        yield _counter(
            "kvstore_leader_changes_total",
            "Times this member saw a new leader (including the first one).",
            node.leader_changes if node is not None else 0,
        )
        yield _gauge("kvstore_term", "The member's current Raft term.", member.raft_term)
        yield _gauge(
            "kvstore_commit_index",
            "The highest Raft log index this member knows to be committed.",
            node.core.log.committed if node is not None else 0,
        )
        yield _gauge(
            "kvstore_applied_index",
            "The highest Raft log index applied to this member's state machine.",
            member.state.applied_index,
        )
        yield _gauge(
            "kvstore_proposals_pending",
            "Writes this member proposed that are waiting to be applied.",
            member.pending_proposals,
        )

    def _store(self, member: Member) -> Iterator[Metric]:
        status = member.state.status()
        yield _gauge("kvstore_keys", "Live keys in the store.", status.keys)
        yield _gauge("kvstore_revision", "The store's current revision.", status.revision)
        yield _gauge(
            "kvstore_compacted_revision",
            "The revision history has been compacted up to.",
            status.compact_revision,
        )
        leases = len(member.state.leases)
        yield _gauge("kvstore_leases", "Leases granted and not yet revoked.", leases)
        yield _gauge("kvstore_watchers", "Watches open on this member.", len(member.watches))
        yield _counter(
            "kvstore_watch_events_sent_total",
            "Events sent to watchers by this member.",
            member.watches.events_sent,
        )
        yield _counter(
            "kvstore_slow_watchers_total",
            "Times a watch fell too far behind and was switched to catching up from history.",
            member.watches.slow_watchers,
        )

    def _events(self, metrics: MemberMetrics) -> Iterator[Metric]:
        yield _counter(
            "kvstore_proposals_committed_total",
            "Writes this member proposed that were committed and applied.",
            metrics.proposals_committed,
        )
        yield _counter(
            "kvstore_proposals_failed_total",
            "Writes this member proposed that failed: refused without a leader, "
            "timed out, or overtaken by a leader change.",
            metrics.proposals_failed,
        )
        yield _histogram(
            "kvstore_wal_fsync_duration_seconds",
            "Time to write and fsync one batch of Raft entries and hard state.",
            metrics.raft.wal_fsync,
        )
        yield _histogram(
            "kvstore_apply_duration_seconds",
            "Time to apply one batch of committed entries to the state machine.",
            metrics.apply,
        )
        yield _histogram(
            "kvstore_snapshot_save_duration_seconds",
            "Time to serialize the state machine and save it as a snapshot.",
            metrics.snapshot_save,
        )
        yield _histogram(
            "kvstore_snapshot_apply_duration_seconds",
            "Time to restore the state machine from a snapshot (at start or from the leader).",
            metrics.snapshot_apply,
        )
        yield _gauge(
            "kvstore_snapshot_size_bytes",
            "Size of this member's most recent snapshot, saved or applied.",
            metrics.snapshot_size,
        )

    def _peers(self, member: Member, metrics: MemberMetrics) -> Iterator[Metric]:
        stats = member.peer_stats
        sent = CounterMetricFamily(
            "kvstore_peer_sent_bytes_total", "Bytes sent to each peer.", labels=["peer"]
        )
        received = CounterMetricFamily(
            "kvstore_peer_received_bytes_total", "Bytes received from each peer.", labels=["peer"]
        )
        dropped = CounterMetricFamily(
            "kvstore_peer_dropped_messages_total",
            "Messages to each peer dropped because its queue was full or it was unknown.",
            labels=["peer"],
        )
        if stats is not None:
            for peer, count in list(stats.bytes_sent.items()):
                sent.add_metric([_peer_label(peer)], count)
            for peer, count in list(stats.bytes_received.items()):
                received.add_metric([_peer_label(peer)], count)
            for peer, count in list(stats.dropped.items()):
                dropped.add_metric([_peer_label(peer)], count)
        yield sent
        yield received
        yield dropped
        round_trips = HistogramMetricFamily(
            "kvstore_peer_round_trip_time_seconds",
            "Heartbeat round trips from the leader to each peer (only the leader measures).",
            labels=["peer"],
        )
        for peer, histogram in sorted(metrics.raft.round_trips.items()):
            round_trips.add_metric([_peer_label(peer)], histogram.cumulative(), histogram.sum)
        yield round_trips

    def _requests(self, metrics: MemberMetrics) -> Iterator[Metric]:
        counts = CounterMetricFamily(
            "kvstore_client_requests_total",
            "Client requests answered, by request type and outcome (ok or the error code).",
            labels=["type", "outcome"],
        )
        latency = HistogramMetricFamily(
            "kvstore_client_request_duration_seconds",
            "Time from reading a client request to having its answer, by request type.",
            labels=["type"],
        )
        for tally in metrics.requests.tallies():
            if tally.ok:
                counts.add_metric([tally.type, "ok"], tally.ok)
            for code, count in sorted(tally.errors.items()):
                counts.add_metric([tally.type, str(code)], count)
            latency.add_metric([tally.type], tally.latency.cumulative(), tally.latency.sum)
        yield counts
        yield latency
