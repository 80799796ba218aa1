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

import itertools
import logging
import random
import secrets
from pathlib import Path

import msgspec
import trio

from kvstore import api
from kvstore.api import Error, ErrorCode, Request, Response
from kvstore.commands import Command, WriteRequest, encode_command
from kvstore.compactor import PeriodicCompactor, RevisionCompactor
from kvstore.config import MemberConfig, format_address
from kvstore.lease import Lessor, minimum_ttl
from kvstore.listener import serve_clients
from kvstore.state_machine import FrozenState, KVStateMachine
from kvstore.validation import validate_request
from kvstore.watch import WatchHub
from kvstore.watch_stream import WatchStream
from raft.core import Config
from raft.disk_storage import DiskStorage
from raft.errors import ReadIndexDropped, RequestDropped
from raft.messages import ConfState
from raft.node import NodeConfig, RaftNode
from raft.ready import Role
from raft.storage import MemoryStorage
from raft.transport import TcpTransport

log = logging.getLogger(__name__)

VERSION = "0.1.0"


class _PendingWrite:
    __slots__ = ("done", "response", "term")

    def __init__(self, term: int) -> None:
        self.done = trio.Event()
        self.response: Response | Error | None = None
        self.term = term
        """The Raft term when it was proposed."""


class Member:
    """A running member.  Use :meth:`run` inside a nursery (``await nursery.start(member.run)``)."""

    def __init__(self, config: MemberConfig) -> None:
        self.config = config
        self.id = config.member_id
        self.cluster_id = config.cluster_id
        self.name = config.name
        self.state = KVStateMachine()
        self._seq = itertools.count(secrets.randbits(40) << 20)
        self._pending: dict[int, _PendingWrite] = {}
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
        self._snapshot_wanted: FrozenState | None = None
        """The state to save as the next snapshot, until it is saved."""
        self._snapshot_due = trio.Event()
        self._storage_in_thread = False

    # -- Life cycle ---------------------------------------------------------------------

    def _open_storage(self) -> DiskStorage | MemoryStorage:
        conf = ConfState(voters=tuple(sorted(self.config.peer_ids)))
        if self.config.data_dir is None:
            return MemoryStorage(conf)
        raft_dir = Path(self.config.data_dir) / "raft"
        raft_dir.parent.mkdir(parents=True, exist_ok=True)
        return DiskStorage(raft_dir, conf, keep_entries=self.config.snapshot_catchup_entries)

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
                    serve_clients, self, config.listen_client, config.max_connection_requests
                )
                transport = TcpTransport(
                    self.id,
                    config.listen_peer,
                    config.peer_ids,
                    cluster_id=self.cluster_id,
                    metadata=format_address(self.client_address).encode(),
                )
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
                node = RaftNode(node_config, storage, transport, random.Random())
                await nursery.start(node.run)
                self.node = node
                if set(config.peer_ids) == {self.id}:
                    node.campaign()  # alone: no need to wait out an election timeout
                self.peer_address = (config.listen_peer[0], transport.bound_port)
                nursery.start_soon(self._apply_loop)
                nursery.start_soon(self._snapshot_loop)
                nursery.start_soon(self._leadership_loop)
                nursery.start_soon(self._expiry_loop)
                if config.auto_compaction_retention or config.auto_compaction_period:
                    nursery.start_soon(self._auto_compact)
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
            for pending in self._pending.values():
                pending.done.set()
            if isinstance(storage, DiskStorage):
                storage.close()

    # -- Applying -------------------------------------------------------------------------

    async def _apply_loop(self) -> None:
        node = self.node
        assert node is not None
        async for batch in node.committed:
            if batch.snapshot is not None:
                self.state.restore(batch.snapshot.data)
                self.watches.on_restore()
                if self.lessor.primary:
                    self._promote_lessor()
                log.info(
                    "member %s restored a snapshot at %d", self.name, batch.snapshot.meta.index
                )
            for entry in batch.entries:
                result = self.state.apply(entry.index, entry.data)
                if result is None or result.command is None:
                    continue
                if result.events:
                    self.watches.on_apply(result.events[0].kv.mod_revision, result.events)
                self._after_apply(result.command.request, result.response)
                if result.command.origin == self.id:
                    pending = self._pending.pop(result.command.seq, None)
                    if pending is not None:
                        pending.response = result.response
                        pending.done.set()
            self._applied_changed.set()
            self._applied_changed = trio.Event()
            if self._snapshot_wanted is None and node.snapshot_due(self.state.applied_index):
                self._snapshot_wanted = self.state.freeze()
                self._snapshot_due.set()

    async def _snapshot_loop(self) -> None:
        """Save the snapshots the apply loop asks for, one at a time.  The
        state was frozen at its index; encoding it (in a worker thread with
        disk storage) and writing it out do not hold up applying."""
        node = self.node
        assert node is not None
        while True:
            await self._snapshot_due.wait()
            self._snapshot_due = trio.Event()
            frozen = self._snapshot_wanted
            assert frozen is not None
            if self._storage_in_thread:
                data = await trio.to_thread.run_sync(frozen.encode)
            else:
                data = frozen.encode()
            await node.save_snapshot(frozen.index, data)
            self._snapshot_wanted = None

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
        for pending in self._pending.values():
            if pending.term < term and not pending.done.is_set():
                pending.done.set()

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

    async def _write(self, request: WriteRequest) -> Response | Error:
        return (await self.write_many([request]))[0]

    async def write_many(self, requests: list[WriteRequest]) -> list[Response | Error]:
        """Answers to writes (already checked by :meth:`answer_now`), in order.

        They are proposed together (one turn of the node) and each is answered
        once applied, or with the error saying why not and whether it may
        still happen; all within one ``request_timeout``."""
        node = self.node
        assert node is not None
        pending = [_PendingWrite(node.core.term) for _ in requests]
        seqs = [next(self._seq) for _ in requests]
        self._pending.update(zip(seqs, pending, strict=True))
        try:
            commands = [
                encode_command(Command(self.id, seq, request))
                for seq, request in zip(seqs, requests, strict=True)
            ]
            try:
                outcomes = await node.propose_batch(commands)
            except RequestDropped as dropped:  # the node stopped first: none proposed
                return [_error(ErrorCode.STOPPED, dropped.reason, definite=True)] * len(requests)
            with trio.move_on_after(self.config.request_timeout):
                for write, outcome in zip(pending, outcomes, strict=True):
                    if not isinstance(outcome, RequestDropped):
                        await write.done.wait()
            return [
                self._write_answer(write, outcome)
                for write, outcome in zip(pending, outcomes, strict=True)
            ]
        finally:
            for seq in seqs:
                self._pending.pop(seq, None)

    def _write_answer(
        self, write: _PendingWrite, outcome: int | RequestDropped | None
    ) -> Response | Error:
        if isinstance(outcome, RequestDropped):
            return _error(ErrorCode.NO_LEADER, f"no leader: {outcome.reason}", definite=True)
        if write.response is not None:
            return self._with_header(write.response)
        if self.stopping:
            return _error(ErrorCode.STOPPED, "member stopped", definite=False)
        if write.done.is_set():
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

    def _header(self, revision: int) -> api.ResponseHeader:
        term = self.node.core.term if self.node is not None else 0
        return api.ResponseHeader(
            cluster_id=self.cluster_id, member_id=self.id, revision=revision, raft_term=term
        )

    def _with_header(self, response: Response | Error) -> Response | Error:
        if isinstance(response, Error):
            return response
        return msgspec.structs.replace(response, header=self._header(response.header.revision))


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


__all__ = ["Member", "MemberConfig"]
