"""Member processes on consecutive loopback addresses, one address per member.

The harness needs every member on an address of its own (``127.0.0.11``,
``127.0.0.12``, ...) so that firewall rules between addresses cut exactly the
traffic between two members (a member binds its outgoing peer connections to
its own address).  Every member then uses the same two ports: clients on
``base_port``, peers on ``base_port + 1``.

:class:`AddressedCluster` is a :class:`~kvstore.local_cluster.ProcessCluster`
with that placement; everything else (spawning ``python -m cli server``,
status polling, kill/restart by pid, the ``cluster.json`` state file) is the
parent's.
"""

from __future__ import annotations

import ipaddress
import random
import socket
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

from kvstore.local_cluster import ClusterError, ProcessCluster, _Member

__all__ = ["AddressedCluster", "free_shared_port", "member_addresses"]


def member_addresses(first: str, count: int) -> list[str]:
    """``count`` consecutive IPv4 loopback addresses from ``first``.

    Raises ``ValueError`` if ``first`` is not an IPv4 address in 127.0.0.0/8 or
    the range leaves it (the harness never touches anything but loopback).
    """
    try:
        start = ipaddress.IPv4Address(first)
    except ValueError:
        raise ValueError(f"--first-address {first!r} is not an IPv4 address") from None
    loopback = ipaddress.IPv4Network("127.0.0.0/8")
    addresses = [start + i for i in range(count)]
    if any(a not in loopback or a == loopback.broadcast_address for a in addresses):
        raise ValueError(f"{count} addresses from {first} do not all lie in 127.0.0.0/8")
    return [str(a) for a in addresses]


class AddressedCluster(ProcessCluster):
    """``len(addresses)`` members, member ``i`` on ``addresses[i]``.

    Member ``n{i+1}`` serves clients on ``addresses[i]:base_port`` and peers on
    ``addresses[i]:base_port+1``.  ``options`` are passed to
    :class:`ProcessCluster` (``tick_ms``, ``snapshot_count``, ...).
    """

    def __init__(
        self,
        data_dir: str | Path,
        addresses: Sequence[str],
        *,
        base_port: int = 2379,
        **options: Any,
    ) -> None:
        if not addresses:
            raise ClusterError("a cluster needs at least one member")
        if not 0 < base_port < 65535:
            raise ClusterError(f"base port {base_port} leaves no room for a peer port")
        super().__init__(
            data_dir, len(addresses), host=addresses[0], base_port=base_port, **options
        )
        self.addresses = list(addresses)
        # Same names and identities as the parent's members, other addresses.
        self._members = {
            name: _Member(
                name,
                f"{address}:{base_port}",
                f"{address}:{base_port + 1}",
                self.data_dir / name,
                self.token,
            )
            for name, address in zip(list(self._members), addresses, strict=True)
        }
        self._joined: dict[str, tuple[int, int]] = {}
        """Members re-added by ``member add``: name -> (member id, cluster id)."""

    def rejoined(self, name: str, member_id: int, cluster_id: int) -> None:
        """Member ``name`` was removed and added back as a new member with id
        ``member_id``: from now on it is known by that id and (re)started with
        ``--initial-cluster-state existing`` and the ids ``member add`` returned."""
        with self._lock:
            self._member(name).id = member_id
            self._joined[name] = (member_id, cluster_id)
            self._write_state()

    def command(self, name: str) -> list[str]:
        argv = super().command(name)
        joined = self._joined.get(name)
        if joined is not None:
            member_id, cluster_id = joined
            argv += [
                "--initial-cluster-state",
                "existing",
                "--member-id",
                f"{member_id:x}",
                "--cluster-id",
                f"{cluster_id:x}",
            ]
        return argv

    def address_of(self, name: str) -> str:
        """The loopback address of member ``name``."""
        return self._member(name).client.rsplit(":", 1)[0]

    def name_at(self, endpoint: str) -> str | None:
        """The member serving clients at ``endpoint`` (``host:port``), if any."""
        return next((m.name for m in self.members if m.client_address == endpoint), None)

    def pid_of(self, name: str) -> int | None:
        """The pid of member ``name``'s process, or ``None`` if it is not running."""
        return self._member(name).pid

    def exit_code(self, name: str) -> int | None:
        """The exit status of member ``name``'s last process, if it has ended."""
        return self._member(name).reap()

    def unexpected_exits(self, skip: Collection[str] = ()) -> dict[str, int]:
        """Members (other than ``skip``) whose process ended without this cluster
        ending it: name -> exit code.  Each is reported once."""
        ended = {}
        with self._lock:
            for m in self._members.values():
                if m.name in skip or m.process is None or m.expected_exit:
                    continue
                code = m.reap()
                if code is not None:
                    ended[m.name] = code
        return ended


def free_shared_port(addresses: Sequence[str], *, low: int = 20_000, high: int = 60_000) -> int:
    """A port ``p`` with ``p`` and ``p + 1`` free on every address now (for tests;
    another process may take one before the members bind it)."""
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(low, high)
        try:
            for address in addresses:
                for candidate in (port, port + 1):
                    with socket.socket() as sock:
                        sock.bind((address, candidate))
        except OSError:
            continue
        return port
    raise ClusterError(f"found no free port pair on {', '.join(addresses)}")
