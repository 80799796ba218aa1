"""Test your service against a real kvstore cluster.

Two ways, both giving real members on loopback ports with temporary data
directories, torn down afterwards, with a way to kill and restart a member:

* :func:`in_process_cluster` (async): members run as tasks in your trio
  program; killing one cancels its tasks (its data directory survives, so a
  restart recovers from disk, as after a crash).

      async with in_process_cluster(size=3) as cluster:
          async with cluster.client() as client:
              await client.put("k", "v")
          await cluster.kill(await cluster.leader())
          await cluster.restart("n1")

  Membership: :meth:`InProcessCluster.reserve` picks ports for a new member,
  ``client.member_add`` adds it, :meth:`InProcessCluster.join` starts it with
  ``initial_cluster_state="existing"``; a member removed from the cluster stops
  by itself (:meth:`InProcessCluster.forget` waits for that).

* :func:`process_cluster` (sync): members are ``kvctl server`` processes;
  killing one sends it a signal (SIGKILL by default).

The pytest fixture ``kvstore_cluster`` wraps :func:`process_cluster`; enable it
with ``pytest_plugins = ["kvstore.pytest_plugin"]`` in your ``conftest.py``.
"""

from __future__ import annotations

import socket
import tempfile
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from kvstore.api import StatusRequest
from kvstore.client import Client, KvError
from kvstore.config import Address, MemberConfig, format_address
from kvstore.server import Member

if TYPE_CHECKING:
    from kvstore.local_cluster import ProcessCluster


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on right now (the OS may hand it out again later)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


class InProcessCluster:
    """Members as tasks of the caller's trio program."""

    def __init__(
        self,
        nursery: trio.Nursery,
        size: int,
        data_root: Path,
        host: str = "127.0.0.1",
        **options: Any,
    ) -> None:
        self._nursery = nursery
        self.names = [f"n{i + 1}" for i in range(size)]
        self.data_root = data_root
        self.peers: dict[str, Address] = {name: (host, free_port(host)) for name in self.names}
        self.clients: dict[str, Address] = {name: (host, free_port(host)) for name in self.names}
        self.members: dict[str, Member] = {}
        self._scopes: dict[str, trio.CancelScope] = {}
        self._stopped: dict[str, trio.Event] = {}
        self._options = options
        self._host = host
        self._joined: dict[str, tuple[int, int]] = {}
        """Members started to join: name -> (member id, cluster id)."""

    @property
    def endpoints(self) -> list[str]:
        return [format_address(self.clients[name]) for name in self.names]

    def config(self, name: str) -> MemberConfig:
        if name in self._joined:
            member_id, cluster_id = self._joined[name]
            return MemberConfig(
                name=name,
                data_dir=self.data_root / name,
                listen_client=self.clients[name],
                listen_peer=self.peers[name],
                initial_cluster_state="existing",
                join_member_id=member_id,
                join_cluster_id=cluster_id,
                **self._options,
            )
        initial = {n: a for n, a in self.peers.items() if n not in self._joined}
        return MemberConfig(
            name=name,
            data_dir=self.data_root / name,
            listen_client=self.clients[name],
            listen_peer=self.peers[name],
            initial_cluster=initial,
            **self._options,
        )

    def reserve(self, name: str) -> str:
        """Pick loopback ports for a member about to be added; its peer URL."""
        if name in self.peers:
            raise ValueError(f"member name {name} is taken")
        self.peers[name] = (self._host, free_port(self._host))
        self.clients[name] = (self._host, free_port(self._host))
        self.names.append(name)
        return format_address(self.peers[name])

    async def join(self, name: str, member_id: int, cluster_id: int) -> Member:
        """Start member ``name`` (see :meth:`reserve`), added to the cluster as
        ``member_id``, to join the running cluster ``cluster_id``."""
        self._joined[name] = (member_id, cluster_id)
        return await self.start(name)

    async def forget(self, name: str, timeout: float = 10.0) -> None:
        """Wait until member ``name``, removed from the cluster, has stopped
        by itself, and stop listing it."""
        with trio.fail_after(timeout):
            await self._stopped.pop(name).wait()
        self._scopes.pop(name, None)
        self.members.pop(name, None)
        self.names.remove(name)

    async def start(self, name: str) -> Member:
        """Start member ``name`` (again, after :meth:`kill`: it recovers from its data dir)."""
        if name in self._scopes:
            raise RuntimeError(f"member {name} is already running")
        scope = trio.CancelScope()
        member = Member(self.config(name))
        stopped = trio.Event()

        async def run(task_status: trio.TaskStatus[Member] = trio.TASK_STATUS_IGNORED) -> None:
            try:
                with scope:
                    await member.run(task_status=task_status)
            finally:
                stopped.set()

        await self._nursery.start(run)
        self.members[name], self._scopes[name] = member, scope
        self._stopped[name] = stopped
        return member

    restart = start

    async def kill(self, name: str) -> None:
        """Stop member ``name`` at once, as a crash would (its tasks are
        cancelled; what it had not persisted is gone), and wait until it is down."""
        self._scopes.pop(name).cancel()
        del self.members[name]
        await self._stopped.pop(name).wait()

    def client(self, **options: Any) -> Client:
        return Client(self.endpoints, **options)

    async def leader(self, timeout: float = 10.0) -> str:
        """The name of the current leader, once the running members agree on one."""
        with trio.fail_after(timeout):
            while True:
                leaders = {
                    member.node.leader
                    for member in self.members.values()
                    if member.node is not None and not member.removed
                }
                if len(leaders) == 1 and 0 not in leaders:
                    (leader_id,) = leaders
                    for name, member in self.members.items():
                        if member.id == leader_id:
                            return name
                await trio.sleep(0.01)

    async def stop(self) -> None:
        for name in list(self._scopes):
            await self.kill(name)


@asynccontextmanager
async def in_process_cluster(
    size: int = 3, data_dir: str | Path | None = None, **options: Any
) -> AsyncIterator[InProcessCluster]:
    """A running cluster of ``size`` in-process members with a leader.

    ``options`` are further :class:`~kvstore.config.MemberConfig` fields; the
    default ``tick_interval`` is 20 ms so elections take a fraction of a second.
    """
    options.setdefault("tick_interval", 0.02)
    with tempfile.TemporaryDirectory(prefix="kvstore-test-") as scratch:
        root = Path(data_dir) if data_dir is not None else Path(scratch)
        failure: BaseException | None = None
        async with trio.open_nursery() as nursery:
            cluster = InProcessCluster(nursery, size, root, **options)
            for name in cluster.names:
                await cluster.start(name)
            await cluster.leader()
            try:
                yield cluster
            except BaseException as error:  # re-raised below, unwrapped by the nursery
                failure = error
            nursery.cancel_scope.cancel()
        if failure is not None:
            raise failure


@contextmanager
def process_cluster(
    size: int = 3, data_dir: str | Path | None = None, **options: Any
) -> Iterator[ProcessCluster]:
    """A running cluster of ``size`` member processes on free loopback ports.

    ``options`` are :class:`~kvstore.local_cluster.ProcessCluster` arguments
    (``tick_ms`` defaults to 20 here, so elections take a fraction of a second).
    """
    from kvstore.local_cluster import ProcessCluster

    options.setdefault("tick_ms", 20)
    options.setdefault("base_port", None)
    with tempfile.TemporaryDirectory(prefix="kvstore-test-") as scratch:
        root = Path(data_dir) if data_dir is not None else Path(scratch)
        cluster = ProcessCluster(root, size=size, **options)
        cluster.start()
        try:
            yield cluster
        finally:
            cluster.stop()


async def wait_healthy(endpoints: list[str], timeout: float = 10.0) -> None:
    """Wait until some member answers a status request and reports a leader."""
    with trio.fail_after(timeout):
        async with Client(endpoints, request_timeout=timeout) as client:
            while True:
                try:
                    status = await client.request(StatusRequest())
                    if getattr(status, "leader", 0):
                        return
                except KvError:
                    pass
                await trio.sleep(0.05)
