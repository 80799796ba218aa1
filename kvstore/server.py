"""One member: a Raft node, the KV state machine, and the client listener.

Writes go through the log: the member proposes a :class:`Command` naming
itself as origin, and answers the client when it applies that command (on a
follower the core forwards the proposal to the leader, so any member accepts
writes).  Reads are linearizable by default: the member gets a read index from
the leader (one heartbeat round shared by every read in flight), waits until
it has applied that far, and reads its own state.  ``serializable`` reads skip
the round and may be stale.

Every error answers whether the request definitely did not happen.  A write
that was handed to Raft and then timed out *may* have happened; anything
refused before proposing, and every read, definitely did not change anything.
"""

from __future__ import annotations

import functools
import itertools
import logging
import random
import secrets
import time
from collections.abc import AsyncGenerator, Callable
from pathlib import Path

import msgspec
import trio

from kvstore import api
from kvstore.api import Error, ErrorCode, Request, Response
from kvstore.commands import Command, WriteRequest, encode_command
from kvstore.compactor import PeriodicCompactor, RevisionCompactor
from kvstore.config import (
    Address,
    ConfigError,
    MemberConfig,
    format_address,
    parse_address,
)
from kvstore.config import member_id as member_id_of
from kvstore.lease import Lessor, minimum_ttl
from kvstore.listener import serve_clients
from kvstore.membership import (
    MemberRecord,
    MemberTable,
    decode_table,
    encode_table,
    new_member_id,
)
from kvstore.metrics import MemberMetrics
from kvstore.metrics_http import serve_metrics
from kvstore.pending_writes import PendingWrite, PendingWrites, WriteGroup
from kvstore.snapshot_stream import chunk_bytes_for, snapshot_messages
from kvstore.state_machine import KVStateMachine, StateCopy
from kvstore.validation import validate_request
from kvstore.watch import WatchHub
from kvstore.watch_stream import WatchStream
from raft.core import Config
from raft.disk_storage import DiskStorage
from raft.errors import ProposalDropped, ReadIndexDropped, RequestDropped
from raft.membership import ConfChange, ConfChangeType, decode_conf_change
from raft.messages import ConfState, EntryType
from raft.node import ApplyBatch, NodeConfig, ProposalOutcome, RaftNode
from raft.ready import Role
from raft.storage import MemoryStorage
from raft.transport import PeerStats, TcpTransport

log = logging.getLogger(__name__)

VERSION = "0.1.0"

MAX_CONCURRENT_SNAPSHOTS = 2
"""Snapshot streams a member serves at once (each holds a copy of the state)."""
LEARNER_READY_PERCENT = 90
"""A learner may be promoted once it holds this share of the leader's log
(etcd's ``readyPercentThreshold``)."""


class Member:
    """A running member.  Use :meth:`run` inside a nursery (``await nursery.start(member.run)``)."""

    def __init__(self, config: MemberConfig) -> None:
        self.config = config
        self.id = config.member_id
        self.cluster_id = config.cluster_id
        self.name = config.name
        self.state = KVStateMachine()
        self._seq = itertools.count(secrets.randbits(40) << 20)
        self._pending = PendingWrites()
        self._applied_changed = trio.Event()
        self._storage: DiskStorage | MemoryStorage | None = None
        self.node: RaftNode | None = None
        self.client_address = config.listen_client
        self.peer_address = config.listen_peer
        self.started = trio.Event()
        self.stopping = False
        self._transport: TcpTransport | None = None
        self.lessor = Lessor()
        self.min_lease_ttl = minimum_ttl(config.election_timeout)
        self.watches = WatchHub(lambda: self.state.store)
        self._watch_ids = itertools.count(1)
        self._snapshot_slots = trio.Semaphore(MAX_CONCURRENT_SNAPSHOTS)
        self.metrics = MemberMetrics(self, VERSION)
        self.metrics_address: Address | None = None
        """Where ``/metrics`` and ``/health`` are served, once running (None: nowhere)."""
        self._conf = ConfState()
        """The Raft configuration in effect (voters and learners)."""
        self._addresses: dict[int, Address] = {} if config.joining else dict(config.peer_ids)
        """Peer address of every member heard of (from the member table, or
        from a peer that dialled us while we were joining)."""
        self._membership_lock = trio.Lock()
        self.removed = False
        """This member was removed from the cluster and stopped."""
        self._run_scope: trio.CancelScope | None = None
        self._nursery: trio.Nursery | None = None
        self._dropped_peers: set[int] = set()
        """Removed members no longer dialled (see :meth:`_drop_peer_later`)."""
        self._snapshot_wanted: StateCopy | None = None
        """The state to save as the next snapshot, until it is saved."""
        self._snapshot_due = trio.Event()
        self._storage_in_thread = False

    # -- Life cycle ---------------------------------------------------------------------

    def _open_storage(self) -> DiskStorage | MemoryStorage:
        return open_storage(self.config)

    async def run(self, *, task_status: trio.TaskStatus[Member] = trio.TASK_STATUS_IGNORED) -> None:
        """Run until cancelled; ``task_status.started(self)`` once clients can connect."""
        config = self.config
        storage = self._open_storage()
        self._storage = storage
        self._storage_in_thread = isinstance(storage, DiskStorage)
        try:
            async with trio.open_nursery() as nursery:
                # Clients first: the peers learn our client address when we dial them.
                self.client_address = await nursery.start(
                    serve_clients,
                    self,
                    config.listen_client,
                    config.max_connection_requests,
                    self.metrics.requests.observe,
                )
                self._run_scope = nursery.cancel_scope
                self._nursery = nursery
                transport = TcpTransport(
                    self.id,
                    config.listen_peer,
                    {i: a for i, a in self._addresses.items() if i != self.id},
                    cluster_id=self.cluster_id,
                    metadata=format_address(self.client_address).encode(),
                    observer=self.metrics.raft,
                )
                transport.on_hello = self._on_peer_hello
                self._transport = transport
                node_config = NodeConfig(
                    raft=Config(
                        id=self.id,
                        election_tick=config.election_ticks,
                        heartbeat_tick=config.heartbeat_ticks,
                    ),
                    tick_interval=config.tick_interval,
                    snapshot_count=config.snapshot_count,
                    snapshot_catchup_entries=config.snapshot_catchup_entries,
                    storage_in_thread=self._storage_in_thread,
                )
                node = RaftNode(
                    node_config, storage, transport, random.Random(), observer=self.metrics.raft
                )
                node.conf_listener = self._on_conf
                node.apply = functools.partial(self._apply_batch, node)
                await nursery.start(node.run)
                self.node = node
                if not config.joining and set(config.peer_ids) == {self.id}:
                    node.campaign()  # alone: no need to wait out an election timeout
                self.peer_address = (config.listen_peer[0], transport.bound_port)
                nursery.start_soon(self._snapshot_loop)
                nursery.start_soon(self._leadership_loop)
                nursery.start_soon(self._expiry_loop)
                nursery.start_soon(self._pending.expire)
                if config.auto_compaction_retention or config.auto_compaction_period:
                    nursery.start_soon(self._auto_compact)
                if config.listen_metrics is not None:
                    self.metrics_address = await nursery.start(
                        serve_metrics, self, config.listen_metrics
                    )
                log.info(
                    "member %s (%x) serving clients on %s, peers on %s",
                    self.name,
                    self.id,
                    format_address(self.client_address),
                    format_address(self.peer_address),
                )
                self.started.set()
                task_status.started(self)
        finally:
            self.stopping = True
            self._pending.give_up_all()
            if isinstance(storage, DiskStorage):
                storage.close()

    # -- Applying -------------------------------------------------------------------------

    def _apply_batch(self, node: RaftNode, batch: ApplyBatch) -> None:
        """Apply one batch of committed entries (in the node's turn: see
        :attr:`RaftNode.apply`), answer the writes this member proposed, and
        ask for a snapshot when one is due."""
        metrics = self.metrics
        if batch.snapshot is not None:
            started = time.perf_counter()
            self.state.restore(batch.snapshot.data)
            self.watches.on_restore()
            if self.lessor.primary:
                self._promote_lessor()
            metrics.snapshot_applied(time.perf_counter() - started, len(batch.snapshot.data))
            log.info("member %s restored a snapshot at %d", self.name, batch.snapshot.meta.index)
            self._learn_addresses(self.state.members)
            self._refresh_peers()
            self._schedule_drops(self.state.members)
        started = time.perf_counter()
        for entry in batch.entries:
            if entry.type is EntryType.CONF_CHANGE:
                self._apply_conf_change(entry.index, entry.data)
                continue
            result = self.state.apply(entry.index, entry.data)
            if result is None or result.command is None:
                continue
            if result.events:
                self.watches.on_apply(result.events[0].kv.mod_revision, result.events)
            self._after_apply(result.command.request, result.response)
            if result.command.origin == self.id:
                self._pending.settle(result.command.seq, result.response)
        if batch.entries:
            metrics.apply.observe(time.perf_counter() - started)
        self._applied_changed.set()
        self._applied_changed = trio.Event()
        if self._snapshot_wanted is None and node.snapshot_due(self.state.applied_index):
            self._snapshot_wanted = self.state.capture()
            self._snapshot_due.set()

    async def _snapshot_loop(self) -> None:
        """Save the snapshots that applying asks for, one at a time.  The
        state was frozen at its index; encoding it (in a worker thread with
        disk storage) and writing it out do not hold up applying."""
        node = self.node
        assert node is not None
        while True:
            await self._snapshot_due.wait()
            self._snapshot_due = trio.Event()
            frozen = self._snapshot_wanted
            assert frozen is not None
            started = time.perf_counter()
            if self._storage_in_thread:
                data = await trio.to_thread.run_sync(frozen.encode)
            else:
                data = frozen.encode()
            await node.save_snapshot(frozen.index, data)
            self.metrics.snapshot_saved(time.perf_counter() - started, len(data))
            self._snapshot_wanted = None

    # -- Membership -------------------------------------------------------------------

    def bootstrap_table(self) -> MemberTable:
        """The member table before any membership change: the initial cluster
        (empty for a member that joined an existing cluster)."""
        if self.config.joining:
            return MemberTable()
        token = self.config.cluster_token
        members = [
            MemberRecord(member_id_of(token, name), name, format_address(address))
            for name, address in self.config.initial_cluster.items()
        ]
        return MemberTable(tuple(sorted(members, key=lambda m: m.id)))

    def member_table(self) -> MemberTable:
        """The member table as of the applied index."""
        table = self.state.members
        return table if table.members or table.removed else self.bootstrap_table()

    def _apply_conf_change(self, index: int, data: bytes) -> None:
        try:
            change = decode_conf_change(data)
        except msgspec.DecodeError:
            table = None
        else:
            table = decode_table(change.context)
        if not self.state.apply_membership(index, table):
            return
        if table is None:
            return
        self._learn_addresses(table)
        self._refresh_peers()
        self._schedule_drops(table)
        if self.id in table.removed and not self.removed:
            log.warning("member %s (%x) was removed from the cluster: stopping", self.name, self.id)
            self.removed = True
            if self._run_scope is not None:
                self._run_scope.cancel()

    def _on_conf(self, conf: ConfState, context: bytes) -> None:
        """Raft's configuration changed (on append): connect to new members
        before the leader sends them anything, drop removed ones."""
        self._conf = conf
        table = decode_table(context)
        if table is not None:
            self._learn_addresses(table)
        self._refresh_peers()

    def _learn_addresses(self, table: MemberTable) -> None:
        for member in table.members:
            try:
                self._addresses[member.id] = parse_address(member.peer_address)
            except ConfigError:
                log.warning("member %x has a malformed peer address", member.id)

    def _on_peer_hello(self, peer: int, address: str) -> None:
        """A peer dialled us.  While we are not a member yet (joining), the
        leader's dial is how we learn where to answer it."""
        if peer in self._addresses or peer in self.member_table().removed:
            return
        if peer in self._dropped_peers:
            return
        try:
            self._addresses[peer] = parse_address(address)
        except ConfigError:
            return
        self._refresh_peers()

    def _schedule_drops(self, table: MemberTable) -> None:
        if self._nursery is not None:
            for gone in sorted(set(table.removed) - self._dropped_peers - {self.id}):
                self._dropped_peers.add(gone)
                self._nursery.start_soon(self._drop_peer_later, gone)

    async def _drop_peer_later(self, peer: int) -> None:
        """Stop dialling a removed member, two election timeouts after its
        removal was applied: until then the leader may still be telling it
        that its removal committed (so that it stops)."""
        await trio.sleep(2 * self.config.election_timeout)
        self._addresses.pop(peer, None)
        self._refresh_peers()

    def _refresh_peers(self) -> None:
        """Dial every member we know an address for: Raft sends only to the
        members of its configuration, and to a removed one until it learnt of
        its removal; a removed member's address is forgotten two election
        timeouts after its removal was applied (:meth:`_drop_peer_later`)."""
        transport = self._transport
        if transport is None:
            return
        wanted = {i: a for i, a in self._addresses.items() if i != self.id}
        if wanted != transport.peers:
            transport.set_peers(wanted)

    def _leader_error(self) -> Error | None:
        """None on the leader; otherwise the error that sends the client there."""
        node = self.node
        assert node is not None
        if node.role is Role.LEADER:
            return None
        if node.leader == 0:
            return _error(ErrorCode.NO_LEADER, "no leader", definite=True)
        return Error(
            code=ErrorCode.NOT_LEADER,
            message="membership requests are served by the leader",
            definite=True,
            leader=self._client_address_of(node.leader),
        )

    def _client_address_of(self, member: int) -> str:
        if member == self.id:
            return format_address(self.client_address)
        if self._transport is None:
            return ""
        return self._transport.peer_metadata.get(member, b"").decode(errors="replace")

    def _member_views(self, table: MemberTable) -> list[api.Member]:
        views = []
        for member in table.members:
            client_url = self._client_address_of(member.id)
            views.append(
                api.Member(
                    id=member.id,
                    name=member.name,
                    peer_url=member.peer_address,
                    client_url=client_url,
                    is_learner=member.learner,
                    status="started" if client_url else "unstarted",
                )
            )
        return views

    async def _member_list(self) -> Response | Error:
        error = self._leader_error() or await self._linearize()
        if error is not None:
            return error
        node = self.node
        assert node is not None
        return api.MemberListResponse(
            header=self._header(self.state.status().revision),
            members=self._member_views(self.member_table()),
            leader=node.leader,
        )

    async def _change_membership(
        self, change: ConfChange, done: Callable[[MemberTable], bool]
    ) -> Error | None:
        """Propose ``change`` (whose context is the whole member table after
        it) and wait until it is applied; the caller holds the membership lock
        and has linearized, so the table it started from is the latest."""
        node = self.node
        assert node is not None
        deadline = trio.current_time() + self.config.request_timeout
        while True:
            try:
                index = await node.propose_conf_change(change)
                break
            except ProposalDropped as dropped:
                error = self._leader_error()
                if error is not None:
                    return error
                transient = "in progress" in dropped.reason or "entry of its term" in dropped.reason
                if transient and trio.current_time() + 0.05 < deadline:
                    await trio.sleep(0.05)
                    continue
                return _error(ErrorCode.FAILED_PRECONDITION, dropped.reason, definite=True)
        with trio.move_on_at(deadline):
            await self._wait_applied(index)
        if self.state.applied_index < index:
            return _error(
                ErrorCode.TIMEOUT,
                "timed out waiting for the membership change to commit; it may still happen",
                definite=False,
            )
        if not done(self.member_table()):
            return _error(
                ErrorCode.LEADER_CHANGED,
                "the leader changed before the membership change was applied; it may still be",
                definite=False,
            )
        return None

    async def _member_add(self, request: api.MemberAddRequest) -> Response | Error:
        error = self._leader_error()
        if error is not None:
            return error
        name = request.name.strip()
        if not name or len(name) > 255 or any(c in name for c in ",= \t\n"):
            return _error(
                ErrorCode.INVALID_ARGUMENT,
                "a member name must be 1-255 characters without ',', '=' or spaces",
                True,
            )
        try:
            peer = format_address(parse_address(request.peer_url))
        except ConfigError as bad:
            return _error(ErrorCode.INVALID_ARGUMENT, str(bad), definite=True)
        async with self._membership_lock:
            error = await self._linearize()
            if error is not None:
                return error
            table = self.member_table()
            for member in table.members:
                if member.name == name:
                    return _error(ErrorCode.MEMBER_EXISTS, f"a member named {name!r} exists", True)
                if member.peer_address == peer:
                    return _error(
                        ErrorCode.MEMBER_EXISTS,
                        f"member {member.name!r} uses peer URL {peer}",
                        True,
                    )
            new_id = new_member_id(
                name, peer, self.config.cluster_token, table.ids() | set(table.removed)
            )
            record = MemberRecord(new_id, name, peer, learner=request.is_learner)
            kind = ConfChangeType.ADD_LEARNER if request.is_learner else ConfChangeType.ADD_VOTER
            change = ConfChange(kind, new_id, encode_table(table.with_added(record)))
            error = await self._change_membership(change, lambda t: t.get(new_id) is not None)
            if error is not None:
                return error
            after = self.member_table()
            return api.MemberAddResponse(
                header=self._header(self.state.status().revision),
                member=next(v for v in self._member_views(after) if v.id == new_id),
                members=self._member_views(after),
                cluster_id=self.cluster_id,
            )

    async def _member_promote(self, request: api.MemberPromoteRequest) -> Response | Error:
        error = self._leader_error()
        if error is not None:
            return error
        node = self.node
        assert node is not None
        async with self._membership_lock:
            error = await self._linearize()
            if error is not None:
                return error
            table = self.member_table()
            record = table.get(request.id)
            if record is None:
                return _error(ErrorCode.MEMBER_NOT_FOUND, f"no member {request.id:x}", True)
            if not record.learner:
                return _error(
                    ErrorCode.FAILED_PRECONDITION, f"member {request.id:x} is not a learner", True
                )
            status = node.status()
            progress = status.progress.get(request.id)
            match = progress.match if progress is not None else 0
            if match == 0 or match * 100 < status.last_index * LEARNER_READY_PERCENT:
                return _error(
                    ErrorCode.FAILED_PRECONDITION,
                    f"learner {request.id:x} is not ready to be promoted: it holds {match} of "
                    f"the leader's {status.last_index} entries (needs "
                    f"{LEARNER_READY_PERCENT}%)",
                    definite=True,
                )
            change = ConfChange(
                ConfChangeType.PROMOTE, request.id, encode_table(table.with_promoted(request.id))
            )
            promoted = request.id

            def done(t: MemberTable) -> bool:
                member = t.get(promoted)
                return member is not None and not member.learner

            error = await self._change_membership(change, done)
            if error is not None:
                return error
            return api.MemberPromoteResponse(
                header=self._header(self.state.status().revision),
                members=self._member_views(self.member_table()),
            )

    async def _member_remove(self, request: api.MemberRemoveRequest) -> Response | Error:
        error = self._leader_error()
        if error is not None:
            return error
        node = self.node
        assert node is not None
        table = self.member_table()
        if table.get(request.id) is None:
            what = "was removed" if request.id in table.removed else "does not exist"
            return _error(ErrorCode.MEMBER_NOT_FOUND, f"member {request.id:x} {what}", True)
        if request.id == self.id:
            return await self._hand_over_before_removal()
        async with self._membership_lock:
            error = await self._linearize()
            if error is not None:
                return error
            table = self.member_table()
            if table.get(request.id) is None:
                return _error(
                    ErrorCode.MEMBER_NOT_FOUND, f"member {request.id:x} was removed", True
                )
            change = ConfChange(
                ConfChangeType.REMOVE, request.id, encode_table(table.without(request.id))
            )
            removed = request.id
            error = await self._change_membership(change, lambda t: t.get(removed) is None)
            if error is not None:
                return error
            return api.MemberRemoveResponse(
                header=self._header(self.state.status().revision),
                members=self._member_views(self.member_table()),
            )

    async def _hand_over_before_removal(self) -> Error:
        """The leader is asked to remove itself: hand leadership to the most
        up-to-date voter first, then send the client there to remove us."""
        node = self.node
        assert node is not None
        status = node.status()
        candidates = [
            (progress.match, peer)
            for peer, progress in status.progress.items()
            if peer != self.id and peer in status.voters
        ]
        if not candidates:
            return _error(
                ErrorCode.FAILED_PRECONDITION, "cannot remove the only voter of the cluster", True
            )
        _, target = max(candidates)
        error = await self._transfer_to(target)
        if error is not None:
            return error
        return Error(
            code=ErrorCode.NOT_LEADER,
            message="leadership handed over before removing this member; ask the new leader",
            definite=True,
            leader=self._client_address_of(node.leader),
        )

    async def _transfer_to(self, target: int) -> Error | None:
        node = self.node
        assert node is not None
        node.transfer_leadership(target)
        with trio.move_on_after(self.config.request_timeout):
            while node.leader != target:
                await node.wait_leadership_change()
            return None
        return _error(
            ErrorCode.TIMEOUT, f"leadership did not move to {target:x} in time", definite=True
        )

    async def _move_leader(self, request: api.MoveLeaderRequest) -> Response | Error:
        error = self._leader_error()
        if error is not None:
            return error
        node = self.node
        assert node is not None
        target = request.target_id
        if target != self.id:
            if target in self._conf.learners:
                return _error(
                    ErrorCode.FAILED_PRECONDITION,
                    f"member {target:x} is a learner and cannot lead",
                    definite=True,
                )
            if target not in self._conf.voters:
                return _error(ErrorCode.MEMBER_NOT_FOUND, f"no voting member {target:x}", True)
            error = await self._transfer_to(target)
            if error is not None:
                return error
        return api.MoveLeaderResponse(
            header=self._header(self.state.status().revision), leader=target
        )

    def _after_apply(self, request: WriteRequest, response: Response | Error) -> None:
        """Keep the leader's expiry clock in step with the lease table."""
        if isinstance(response, api.LeaseGrantResponse):
            self.lessor.granted(response.id, response.ttl, trio.current_time())
        elif isinstance(request, api.LeaseRevokeRequest) and not isinstance(response, Error):
            self.lessor.revoked(request.id)

    # -- Leases -------------------------------------------------------------------------

    def _promote_lessor(self) -> None:
        self.lessor.promote(
            self.state.leases.records(), trio.current_time(), self.config.election_timeout
        )

    async def _leadership_loop(self) -> None:
        """Only the leader tracks lease expiry; a new leader gives every lease
        its full TTL plus one election timeout."""
        node = self.node
        assert node is not None
        while True:
            self._release_writes_of_old_terms()
            if node.leader == 0:
                self.watches.wake_all()  # watch streams start timing the outage
            is_leader = node.role is Role.LEADER
            if is_leader and not self.lessor.primary:
                # Apply everything committed before this term first, so the
                # lessor starts from the full lease table.
                with trio.move_on_after(self.config.election_timeout):
                    await self._wait_applied(node.core.log.committed)
                if node.role is Role.LEADER:
                    self._promote_lessor()
                    continue
            elif not is_leader and self.lessor.primary:
                self.lessor.demote()
            await node.wait_leadership_change()

    def _release_writes_of_old_terms(self) -> None:
        """Once a new leader is known, writes proposed in an earlier term are
        answered "leader changed" (outcome unknown) at once, rather than after
        the whole request timeout: the client can retry elsewhere sooner."""
        node = self.node
        assert node is not None
        if node.leader == 0:
            return
        term = node.core.term
        self._pending.give_up_older_than(term)

    async def _expiry_loop(self) -> None:
        """Revoke expired leases through Raft, but only after confirming, with
        a ReadIndex round, that this member is still the leader: a leader that
        was stalled must not revoke every lease on waking (etcd#15247)."""
        node = self.node
        assert node is not None
        interval = min(0.5, self.config.election_timeout / 2)
        while True:
            await trio.sleep(interval)
            if not self.lessor.primary:
                continue
            expired = self.lessor.expired(trio.current_time())
            if not expired:
                continue
            try:
                with trio.fail_after(self.config.election_timeout):
                    await node.read_index()
            except (trio.TooSlowError, RequestDropped):
                continue
            if node.role is not Role.LEADER:
                continue
            async with trio.open_nursery() as revokes:
                for lease_id in expired:
                    log.info("member %s: lease %x expired, revoking", self.name, lease_id)
                    revokes.start_soon(self._write, api.LeaseRevokeRequest(id=lease_id))

    async def _wait_applied(self, index: int) -> None:
        while self.state.applied_index < index:
            await self._applied_changed.wait()

    async def _auto_compact(self) -> None:
        config = self.config
        compactors: list[RevisionCompactor | PeriodicCompactor] = []
        if config.auto_compaction_retention:
            compactors.append(RevisionCompactor(config.auto_compaction_retention))
        if config.auto_compaction_period:
            compactors.append(PeriodicCompactor(config.auto_compaction_period))
        interval = max(config.election_timeout, 1.0)
        while True:
            await trio.sleep(interval)
            if self.node is None or self.node.role is not Role.LEADER:
                continue
            now = trio.current_time()
            for compactor in compactors:
                revision = compactor.next_compaction(now, self.state.status().revision)
                if revision is not None and revision > self.state.status().compact_revision:
                    log.info("member %s: auto-compacting to revision %d", self.name, revision)
                    await self.handle(api.CompactionRequest(revision=revision))

    # -- Requests -----------------------------------------------------------------------

    async def handle(self, request: Request) -> Response | Error:
        """Answer one client request (never raises for a request's content).

        Watch requests are streams and go through :meth:`open_watch` instead.
        """
        if self.stopping or self.node is None:
            return _error(ErrorCode.STOPPED, "member is not serving", definite=True)
        if isinstance(request, api.MemberListRequest):
            return await self._member_list()
        if isinstance(request, api.MemberAddRequest):
            return await self._member_add(request)
        if isinstance(request, api.MemberPromoteRequest):
            return await self._member_promote(request)
        if isinstance(request, api.MemberRemoveRequest):
            return await self._member_remove(request)
        if isinstance(request, api.MoveLeaderRequest):
            return await self._move_leader(request)
        answer = self.answer_now(request)
        if answer is not None:
            return answer
        if isinstance(request, api.RangeRequest):
            return (await self.read_linearizable([request]))[0]
        if isinstance(request, api.LeaseGrantRequest):
            lease_id = request.id or (secrets.randbits(62) + 1)
            ttl = max(request.ttl, self.min_lease_ttl)
            return await self._write(api.LeaseGrantRequest(id=lease_id, ttl=ttl))
        if isinstance(request, api.LeaseLeasesRequest):
            return await self._leases()
        if isinstance(request, _WRITES):
            return await self._write(request)
        raise AssertionError(f"answer_now answers {type(request).__name__}")  # pragma: no cover

    def answer_now(self, request: Request) -> Response | Error | None:
        """The answer to ``request`` if it needs no waiting (a status, a
        serializable read, a keep-alive, a refusal), else None: then
        :meth:`handle` it.  Never raises for a request's content."""
        if self.stopping or self.node is None:
            return _error(ErrorCode.STOPPED, "member is not serving", definite=True)
        if isinstance(request, api.StatusRequest):
            return self._status()
        if isinstance(request, _MEMBERSHIP_REQUESTS):
            return None
        error = validate_request(request, lease_exists=_any_lease)
        if error is not None:
            return error
        if isinstance(request, api.RangeRequest):
            if request.serializable:
                return self._with_header(self.state.read(request))
            return None
        if isinstance(request, api.LeaseKeepAliveRequest):
            return self._keep_alive(request)
        if isinstance(request, api.LeaseTimeToLiveRequest):
            return self._time_to_live(request)
        if isinstance(
            request, (api.WatchCreateRequest, api.WatchCancelRequest, api.WatchProgressRequest)
        ):
            return _error(ErrorCode.INVALID_ARGUMENT, "watch requests are streams", True)
        if isinstance(request, api.SnapshotRequest):
            return _error(ErrorCode.INVALID_ARGUMENT, "snapshot requests are streams", True)
        return None

    async def read_linearizable(self, requests: list[api.RangeRequest]) -> list[Response | Error]:
        """Answers to ``requests`` (already checked by :meth:`answer_now`), in
        order, all served after one ReadIndex wait: each reflects every write
        acknowledged before the call."""
        error = await self._linearize()
        if error is not None:
            return [error] * len(requests)
        read = self.state.read
        return [self._with_header(read(request)) for request in requests]

    def _not_leader(self) -> Error | None:
        """None on the leader; otherwise the error that sends the client there."""
        node = self.node
        assert node is not None
        if node.role is Role.LEADER and self.lessor.primary:
            return None
        if node.leader == 0:
            return _error(ErrorCode.NO_LEADER, "no leader", definite=True)
        address = b""
        if self._transport is not None:
            address = self._transport.peer_metadata.get(node.leader, b"")
        return Error(
            code=ErrorCode.NOT_LEADER,
            message="lease keep-alives and time-to-live are served by the leader",
            definite=True,
            leader=address.decode(errors="replace"),
        )

    def _keep_alive(self, request: api.LeaseKeepAliveRequest) -> Response | Error:
        error = self._not_leader()
        if error is not None:
            return error
        ttl = self.lessor.renew(request.id, trio.current_time())
        return api.LeaseKeepAliveResponse(
            header=self._header(self.state.status().revision), id=request.id, ttl=ttl or 0
        )

    def _time_to_live(self, request: api.LeaseTimeToLiveRequest) -> Response | Error:
        error = self._not_leader()
        if error is not None:
            return error
        header = self._header(self.state.status().revision)
        record = self.state.leases.get(request.id)
        remaining = self.lessor.remaining(request.id, trio.current_time())
        if record is None or remaining is None:
            return api.LeaseTimeToLiveResponse(header=header, id=request.id, ttl=-1)
        keys = self.state.leases.keys(request.id) if request.keys else []
        return api.LeaseTimeToLiveResponse(
            header=header, id=request.id, ttl=remaining, granted_ttl=record.ttl, keys=keys
        )

    async def _leases(self) -> Response | Error:
        error = await self._linearize()
        if error is not None:
            return error
        return api.LeaseLeasesResponse(
            header=self._header(self.state.status().revision), leases=self.state.leases.ids()
        )

    def open_watch(self, request: api.WatchCreateRequest) -> WatchStream | Error:
        """A new watch stream (see :class:`~kvstore.api.WatchCreateRequest`)."""
        if self.stopping or self.node is None:
            return _error(ErrorCode.STOPPED, "member is not serving", definite=True)
        error = validate_request(request)
        if error is not None:
            return error
        node = self.node
        watcher = self.watches.create(next(self._watch_ids), request)
        return WatchStream(
            self.watches,
            watcher,
            self._header,
            lambda: self.state.store.revision,
            lambda: node.leader != 0,
            progress_interval=self.config.watch_progress_interval,
            leaderless_limit=2 * self.config.election_timeout,
        )

    async def snapshot(
        self, request: api.SnapshotRequest
    ) -> AsyncGenerator[api.SnapshotResponse | Error, None]:
        """The stream answering ``request`` (see :class:`~kvstore.api.SnapshotRequest`):
        a copy of the state taken once every write acknowledged before the
        request is applied (unless ``serializable``), or one definite error."""
        if self.stopping or self.node is None:
            yield _error(ErrorCode.STOPPED, "member is not serving", definite=True)
            return
        chunk_bytes = chunk_bytes_for(request)
        if isinstance(chunk_bytes, Error):
            yield chunk_bytes
            return
        if not request.serializable:
            error = await self._linearize()
            if error is not None:
                yield error
                return
        # Each stream holds a copy of the whole state: a few at a time, the others wait.
        async with self._snapshot_slots:
            copy = self.state.capture()
            raft_term = self.node.core.log.term_or_zero(copy.status.applied_index)
            async for message in snapshot_messages(copy, raft_term, self._header, chunk_bytes):
                yield message

    async def _write(self, request: WriteRequest) -> Response | Error:
        return (await self.write_many([request]))[0]

    async def write_many(self, requests: list[WriteRequest]) -> list[Response | Error]:
        """Answers to writes (already checked by :meth:`answer_now`), in order
        (:meth:`submit_writes`, waited for)."""
        done = trio.Event()
        result: list[Response | Error] = []

        def on_answers(answers: list[Response | Error]) -> None:
            result.extend(answers)
            done.set()

        self.submit_writes(requests, on_answers)
        await done.wait()
        return result

    def submit_writes(
        self, requests: list[WriteRequest], on_answers: Callable[[list[Response | Error]], None]
    ) -> None:
        """Propose writes (already checked by :meth:`answer_now`) together, in
        the node's next turn, without waiting.  ``on_answers`` is called
        once with their answers, in order: each once applied, or the error
        saying why not and whether it may still happen; all within one
        ``request_timeout``.  It is called from whichever task settles the
        last of them (usually the Raft turn that applies them, which may be
        taken before this returns), so it must not block."""
        node = self.node
        assert node is not None
        seqs = [next(self._seq) for _ in requests]

        def finished(group: WriteGroup) -> None:
            try:
                answers = [self._write_answer(write) for write in group.writes]
            except Exception:
                log.exception("member %s: answering %d writes failed", self.name, len(seqs))
                error = _error(ErrorCode.INTERNAL, "internal error", definite=False)
                answers = [error] * len(seqs)
            on_answers(answers)

        deadline = trio.current_time() + self.config.request_timeout
        group = self._pending.open_group(seqs, node.core.term, deadline, finished)
        commands = [
            encode_command(Command(self.id, seq, request))
            for seq, request in zip(seqs, requests, strict=True)
        ]

        def on_outcomes(outcomes: list[ProposalOutcome]) -> None:
            for write, outcome in zip(group.writes, outcomes, strict=True):
                write.outcome = outcome
                if isinstance(outcome, RequestDropped):
                    write.settle()

        node.submit_batch(commands, on_outcomes)

    def _write_answer(self, write: PendingWrite) -> Response | Error:
        if write.response is not None:
            self.metrics.proposals_committed += 1
            return self._with_header(write.response)
        self.metrics.proposals_failed += 1
        outcome = write.outcome
        if isinstance(outcome, ProposalDropped):
            return _error(ErrorCode.NO_LEADER, f"no leader: {outcome.reason}", definite=True)
        if isinstance(outcome, RequestDropped):  # the node stopped before its core saw it
            return _error(ErrorCode.STOPPED, outcome.reason, definite=True)
        if self.stopping:
            return _error(ErrorCode.STOPPED, "member stopped", definite=False)
        if write.settled:
            return _error(
                ErrorCode.LEADER_CHANGED,
                "the leader changed before the write was applied; it may still be",
                definite=False,
            )
        return _error(
            ErrorCode.TIMEOUT,
            "timed out waiting for the write to commit; it may still happen",
            definite=False,
        )

    async def _linearize(self) -> Error | None:
        """Wait until this member's state reflects every write acknowledged
        before the call (ReadIndex), or say why it cannot (always definite)."""
        node = self.node
        assert node is not None
        with trio.move_on_after(self.config.request_timeout):
            try:
                index = await node.read_index()
            except ReadIndexDropped:
                return _error(ErrorCode.NO_LEADER, "no leader to confirm the read", True)
            except RequestDropped as dropped:
                return _error(ErrorCode.STOPPED, dropped.reason, definite=True)
            await self._wait_applied(index)
            return None
        return _error(ErrorCode.TIMEOUT, "linearizable read timed out", definite=True)

    def _status(self) -> api.StatusResponse:
        node = self.node
        assert node is not None
        status = node.status()
        kv = self.state.status()
        return api.StatusResponse(
            header=self._header(kv.revision),
            name=self.name,
            leader=status.leader,
            raft_term=status.term,
            raft_index=status.last_index,
            raft_applied_index=kv.applied_index,
            revision=kv.revision,
            compact_revision=kv.compact_revision,
            keys=kv.keys,
            is_learner=self.id in node.core.learners,
            version=VERSION,
            client_url=format_address(self.client_address),
            members={self.id: format_address(self.client_address)},
        )

    @property
    def pending_proposals(self) -> int:
        """Writes this member proposed that wait to be applied."""
        return len(self._pending)

    @property
    def raft_term(self) -> int:
        return self.node.core.term if self.node is not None else 0

    @property
    def peer_stats(self) -> PeerStats | None:
        """Bytes and drops per peer, once the transport runs."""
        return self._transport.stats if self._transport is not None else None

    def _header(self, revision: int) -> api.ResponseHeader:
        term = self.node.core.term if self.node is not None else 0
        return api.ResponseHeader(
            cluster_id=self.cluster_id, member_id=self.id, revision=revision, raft_term=term
        )

    def _with_header(self, response: Response | Error) -> Response | Error:
        if isinstance(response, Error):
            return response
        return msgspec.structs.replace(response, header=self._header(response.header.revision))


_MEMBERSHIP_REQUESTS = (
    api.MemberListRequest,
    api.MemberAddRequest,
    api.MemberPromoteRequest,
    api.MemberRemoveRequest,
    api.MoveLeaderRequest,
)
"""Served by :meth:`Member.handle` (they wait for the leader and the log)."""

_WRITES = (
    api.PutRequest,
    api.DeleteRangeRequest,
    api.TxnRequest,
    api.CompactionRequest,
    api.LeaseRevokeRequest,
)


def _any_lease(lease: int) -> bool:
    return True  # the state machine checks leases when the write applies


def _error(code: ErrorCode, message: str, definite: bool) -> Error:
    return Error(code=code, message=message, definite=definite)


def open_storage(config: MemberConfig) -> DiskStorage | MemoryStorage:
    """The Raft storage of the member ``config`` describes: in memory without a
    data directory, else ``DATA_DIR/raft`` on disk, bootstrapped (if new) with
    the initial cluster's members as voters.  A member joining a running
    cluster starts with no configuration: the entry (or the snapshot) that
    added it tells it the whole membership."""
    conf = ConfState() if config.joining else ConfState(voters=tuple(sorted(config.peer_ids)))
    if config.data_dir is None:
        return MemoryStorage(conf)
    raft_dir = Path(config.data_dir) / "raft"
    raft_dir.parent.mkdir(parents=True, exist_ok=True)
    return DiskStorage(raft_dir, conf, keep_entries=config.snapshot_catchup_entries)


__all__ = ["Member", "MemberConfig", "open_storage"]
