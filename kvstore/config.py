"""A member's configuration, and the ids derived from it.

Member and cluster ids are 63-bit integers derived by hashing, as etcd does, so
that every member of a new cluster computes the same ids from the same
``--initial-cluster`` without talking to the others first.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

Address = tuple[str, int]

DEFAULT_CLIENT_PORT = 2379
DEFAULT_PEER_PORT = 2380


class ConfigError(ValueError):
    """A configuration value is malformed or inconsistent; the message says which."""


def parse_address(text: str, default_port: int | None = None) -> Address:
    """``"host:port"`` (or ``"host"`` with a default port) as ``(host, port)``."""
    host, sep, port_text = text.strip().rpartition(":")
    if not sep:
        host, port_text = port_text, ""
    if not host:
        raise ConfigError(f"address {text!r} has no host (expected HOST:PORT)")
    if not port_text:
        if default_port is None:
            raise ConfigError(f"address {text!r} has no port (expected HOST:PORT)")
        return host, default_port
    try:
        port = int(port_text)
    except ValueError:
        raise ConfigError(f"address {text!r} has a non-numeric port") from None
    if not 0 <= port <= 65535:
        raise ConfigError(f"address {text!r} has a port outside 0-65535")
    return host, port


def format_address(address: Address) -> str:
    return f"{address[0]}:{address[1]}"


def parse_initial_cluster(text: str) -> dict[str, Address]:
    """``"n1=127.0.0.1:2380,n2=..."`` as ``{name: peer address}``."""
    members: dict[str, Address] = {}
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        name, sep, address = item.partition("=")
        if not sep or not name:
            raise ConfigError(f"initial cluster entry {item!r} is not NAME=HOST:PORT")
        if name in members:
            raise ConfigError(f"initial cluster names {name!r} twice")
        members[name] = parse_address(address)
    if not members:
        raise ConfigError("the initial cluster is empty")
    return members


def _hash63(*parts: str) -> int:
    digest = hashlib.sha256("\0".join(parts).encode()).digest()
    return int.from_bytes(digest[:8], "big") & ((1 << 63) - 1) or 1


def member_id(cluster_token: str, name: str) -> int:
    """The id of an initial member: stable across restarts, unique per name."""
    return _hash63("member", cluster_token, name)


def cluster_id(cluster_token: str, initial_cluster: dict[str, Address]) -> int:
    spec = ",".join(f"{name}={format_address(a)}" for name, a in sorted(initial_cluster.items()))
    return _hash63("cluster", cluster_token, spec)


@dataclass(frozen=True)
class MemberConfig:
    """Everything one member needs to run.  Times are in seconds."""

    name: str
    data_dir: Path | None
    """Where the WAL and snapshots live; ``None`` keeps everything in memory
    (tests and throwaway embedded members: nothing survives a restart)."""
    listen_client: Address
    listen_peer: Address
    initial_cluster: dict[str, Address] = field(default_factory=dict)
    """Name -> peer address of every initial member (this one included)."""
    cluster_token: str = "kvstore"
    tick_interval: float = 0.1
    election_ticks: int = 10
    heartbeat_ticks: int = 1
    snapshot_count: int = 10_000
    snapshot_catchup_entries: int = 5_000
    request_timeout: float = 5.0
    """How long a write waits to be applied before answering ``timeout``."""
    auto_compaction_retention: int = 0
    """Keep this many revisions of history (0 = no revision-based compaction)."""
    auto_compaction_period: float = 0.0
    """Keep this many seconds of history (0 = no time-based compaction)."""
    watch_progress_interval: float = 10.0
    """Idle time after which a watch that asked for progress notifications gets one."""
    max_connection_requests: int = 1024
    """Requests in flight per client connection before reading pauses."""
    listen_metrics: Address | None = None
    """Where to serve HTTP ``/metrics`` and ``/health`` (port 0: any free port);
    ``None`` serves neither (the metrics are still kept, in ``Member.metrics``)."""
    initial_cluster_state: str = "new"
    """``new``: bootstrap a cluster of ``initial_cluster``.  ``existing``: join a
    running cluster this member was added to (``kvctl member add``): start
    with no configuration, wait for the leader to contact it and catch up
    through snapshot and log.  Ignored once the data directory holds state."""
    join_member_id: int = 0
    """With ``existing``: the id ``member add`` gave this member."""
    join_cluster_id: int = 0
    """With ``existing``: the id of the cluster joined."""

    def __post_init__(self) -> None:
        if not self.name:
            raise ConfigError("a member needs a name")
        cluster = self.initial_cluster or {self.name: self.listen_peer}
        if self.name not in cluster:
            raise ConfigError(f"member {self.name!r} is not in the initial cluster")
        object.__setattr__(self, "initial_cluster", dict(cluster))
        if self.election_ticks <= self.heartbeat_ticks:
            raise ConfigError("the election timeout must be longer than the heartbeat")
        if self.tick_interval <= 0 or self.request_timeout <= 0:
            raise ConfigError("tick interval and request timeout must be positive")
        if self.initial_cluster_state not in ("new", "existing"):
            raise ConfigError(
                f"initial cluster state {self.initial_cluster_state!r} is not 'new' or 'existing'"
            )
        if self.joining and (self.join_member_id <= 0 or self.join_cluster_id <= 0):
            raise ConfigError(
                "joining an existing cluster needs the member id and cluster id "
                "that 'kvctl member add' printed"
            )

    @property
    def joining(self) -> bool:
        """Started to join an existing cluster rather than bootstrap one."""
        return self.initial_cluster_state == "existing"

    @property
    def member_id(self) -> int:
        if self.join_member_id:
            return self.join_member_id
        return member_id(self.cluster_token, self.name)

    @property
    def cluster_id(self) -> int:
        if self.join_cluster_id:
            return self.join_cluster_id
        return cluster_id(self.cluster_token, self.initial_cluster)

    @property
    def peer_ids(self) -> dict[int, Address]:
        """Member id -> peer address for the initial cluster."""
        return {
            member_id(self.cluster_token, name): address
            for name, address in self.initial_cluster.items()
        }

    @property
    def election_timeout(self) -> float:
        return self.tick_interval * self.election_ticks
